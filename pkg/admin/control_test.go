package admin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// unixClient is an HTTP client that reaches path whatever the URL says.
func unixClient(path string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// startControl serves the env's server on a control socket at path and
// stops it at the end of the test.
func (e *env) startControl(path string, reload func() error) *Server {
	e.t.Helper()
	s, err := NewControl(path, Options{
		TokenFile: filepath.Join(e.t.TempDir(), "token-that-does-not-exist"),
		Registry:  prometheus.NewRegistry(), Server: e.srv, Reload: reload,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	e.t.Cleanup(func() {
		s.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			e.t.Errorf("Serve: %v", err)
		}
	})
	return s
}

// TestControlSocket: mode 0600; the same endpoints as the HTTP API, with
// no token, no Content-Type and no Host check; removed at Close.
func TestControlSocket(t *testing.T) {
	e := newEnv(t, envOptions{token: "s3cret"})
	path := filepath.Join(t.TempDir(), "lbctl.sock")
	reloads := 0
	s := e.startControl(path, func() error { reloads++; return nil })
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode %v, want a socket with 0600", fi.Mode())
	}
	c := unixClient(path)
	do := func(method, p string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://attacker.example"+p, nil) // any Host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, p, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := do("GET", "/api/v1/status"); code != 200 || !strings.Contains(body, e.be.Addr) {
		t.Fatalf("status over the control socket: %d %s", code, body)
	}
	drain := "/api/v1/pools/web/backends/" + url.PathEscape(e.be.Addr) + "/drain"
	if code, body := do("POST", drain); code != 200 || !strings.Contains(body, `"admin": "draining"`) {
		t.Fatalf("drain without token or Content-Type: %d %s", code, body)
	}
	if code, body := do("POST", "/api/v1/reload"); code != 200 || reloads != 1 {
		t.Fatalf("reload: %d %s, %d reloads", code, body, reloads)
	}
	if code, _ := do("GET", "/metrics"); code != 200 {
		t.Fatalf("metrics: %d", code)
	}
	if code, _ := do("GET", "/nope"); code != 404 {
		t.Fatalf("unknown path: %d", code)
	}
	// The HTTP API still wants its token.
	if code, _ := e.do("GET", "/api/v1/status", ""); code != 401 {
		t.Fatalf("HTTP API without token: %d", code)
	}
	s.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file after Close: %v", err)
	}
}

// TestControlSocketStale: a socket file nobody answers on (a crashed run)
// is replaced; a live one, or a file that is not a socket, stops the start
// and is left alone.
func TestControlSocketStale(t *testing.T) {
	e := newEnv(t, envOptions{})
	dir := t.TempDir()

	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(stale); err != nil {
		t.Fatalf("no stale socket to test with: %v", err)
	}
	e.startControl(stale, func() error { return nil })
	if code, err := unixGet(stale); err != nil || code != 200 {
		t.Fatalf("replaced socket: %d %v", code, err)
	}

	// A second server on the same path: refused, the first keeps it.
	_, err = NewControl(stale, Options{Registry: prometheus.NewRegistry(), Server: e.srv})
	if !errors.Is(err, ErrControlSocketInUse) || !strings.Contains(err.Error(), "process "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second control socket on a live path: %v, want ErrControlSocketInUse naming pid %d", err, os.Getpid())
	}
	if code, err := unixGet(stale); err != nil || code != 200 {
		t.Fatalf("first socket after the refused second: %d %v", code, err)
	}

	file := filepath.Join(dir, "file.sock")
	if err := os.WriteFile(file, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewControl(file, Options{Registry: prometheus.NewRegistry(), Server: e.srv}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("control socket over a regular file: %v", err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me" {
		t.Fatalf("regular file touched: %q %v", b, err)
	}

	if _, err := NewControl(filepath.Join(dir, "no", "such", "dir.sock"), Options{Registry: prometheus.NewRegistry(), Server: e.srv}); err == nil ||
		!strings.Contains(err.Error(), "control socket") {
		t.Fatalf("control socket in a missing directory: %v", err)
	}
}

func unixGet(path string) (int, error) {
	resp, err := unixClient(path).Get("http://lbctl/healthz")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
