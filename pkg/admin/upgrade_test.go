package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// fakeUpgrader answers as cmd/lbctl's upgrade does: one at a time, the
// others 409; its outcome is err, after release is closed.
type fakeUpgrader struct {
	mu      sync.Mutex
	running bool
	calls   []UpgradeRequest
	started chan struct{} // gets a value when a call begins
	release chan struct{}
	err     error
}

func (f *fakeUpgrader) upgrade(req UpgradeRequest) (UpgradeResult, error) {
	f.mu.Lock()
	if f.running {
		f.mu.Unlock()
		return UpgradeResult{}, ErrUpgradeInProgress
	}
	f.running = true
	f.calls = append(f.calls, req)
	f.mu.Unlock()
	f.started <- struct{}{}
	<-f.release
	f.mu.Lock()
	f.running = false
	f.mu.Unlock()
	if f.err != nil {
		return UpgradeResult{}, f.err
	}
	return UpgradeResult{OldPID: 10, NewPID: 11, TCPMoved: 3, UDPMoved: 2}, nil
}

// serveAPI serves opts on a real loopback socket until the end of the test.
func serveAPI(t *testing.T, opts Options) string {
	t.Helper()
	opts.Bind, opts.Registry, opts.Log = "127.0.0.1:0", prometheus.NewRegistry(), zap.NewNop()
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() { s.Close() })
	return "http://" + s.Addr().String()
}

// post sends body to url with the given headers; it returns the code and
// the JSON error or body.
func post(t *testing.T, c *http.Client, url, body string, hdr map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(bytes.TrimSpace(b))
}

// TestUpgradeEndpoint: POST /api/v1/upgrade keeps the guard rules of
// reload (JSON content type, token), passes the body to Options.Upgrade,
// answers its result once it returns, 409 while another upgrade runs, 502
// with the reason when it failed, 400 for a bad body, 501 without Upgrade.
func TestUpgradeEndpoint(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600)
	f := &fakeUpgrader{started: make(chan struct{}, 1), release: make(chan struct{})}
	base := serveAPI(t, Options{TokenFile: tokenFile, Server: fakeRuntime{}, Reload: func() error { return nil }, Upgrade: f.upgrade})
	url := base + "/api/v1/upgrade"
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	jsonTok := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer s3cret"}

	if code, body := post(t, c, url, `{}`, map[string]string{"Authorization": "Bearer s3cret"}); code != http.StatusForbidden {
		t.Errorf("without JSON content type: %d %s", code, body)
	}
	if code, body := post(t, c, url, `{}`, map[string]string{"Content-Type": "application/json"}); code != http.StatusUnauthorized {
		t.Errorf("without token: %d %s", code, body)
	}
	for _, bad := range []string{`{"binary": 1}`, `{"bin": "x"}`, `{"timeout": "soon"}`, `{"timeout": "-1s"}`} {
		if code, body := post(t, c, url, bad, jsonTok); code != http.StatusBadRequest {
			t.Errorf("body %s: %d %s, want 400", bad, code, body)
		}
	}
	if len(f.calls) != 0 {
		t.Fatalf("upgrade called by refused requests: %+v", f.calls)
	}

	// One upgrade runs; a second request meanwhile is refused.
	type answer struct {
		code int
		body string
	}
	first := make(chan answer, 1)
	go func() {
		code, body := post(t, c, url, `{"binary": "/usr/local/bin/lbctl", "timeout": "5s"}`, jsonTok)
		first <- answer{code, body}
	}()
	<-f.started
	if code, body := post(t, c, url, ``, jsonTok); code != http.StatusConflict || !strings.Contains(body, "already in progress") {
		t.Errorf("second upgrade: %d %s, want 409", code, body)
	}
	close(f.release)
	a := <-first
	var res UpgradeResult
	if a.code != http.StatusOK || json.Unmarshal([]byte(a.body), &res) != nil || res != (UpgradeResult{OldPID: 10, NewPID: 11, TCPMoved: 3, UDPMoved: 2}) {
		t.Fatalf("upgrade: %d %s", a.code, a.body)
	}
	if !strings.Contains(a.body, `"tcp_left": 0`) {
		t.Errorf("answer lacks tcp_left: %s", a.body)
	}
	if len(f.calls) != 1 || f.calls[0] != (UpgradeRequest{Binary: "/usr/local/bin/lbctl", Timeout: "5s"}) {
		t.Fatalf("calls: %+v", f.calls)
	}

	// A failed upgrade: 502 with the reason.
	f.err = errors.New("new process exited before it was ready: exit status 1")
	f.release = make(chan struct{})
	close(f.release)
	if code, body := post(t, c, url, ``, jsonTok); code != http.StatusBadGateway || !strings.Contains(body, "exit status 1") {
		t.Errorf("failed upgrade: %d %s, want 502 with the reason", code, body)
	}
	<-f.started

	// Without an Upgrade function.
	base2 := serveAPI(t, Options{Server: fakeRuntime{}, Reload: func() error { return nil }})
	if code, body := post(t, c, base2+"/api/v1/upgrade", `{}`, jsonTok); code != http.StatusNotImplemented {
		t.Errorf("without Upgrade: %d %s, want 501", code, body)
	}
}

// TestUpgradeControlSocket: the control socket takes an upgrade without
// token or content type; a control socket served from a passed listener
// answers on the same file, and the old server's StopListening leaves the
// file to the new one at Close.
func TestUpgradeControlSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lbctl.sock")
	f := &fakeUpgrader{started: make(chan struct{}, 1), release: make(chan struct{})}
	close(f.release)
	opts := Options{Registry: prometheus.NewRegistry(), Server: fakeRuntime{}, Reload: func() error { return nil }, Upgrade: f.upgrade}
	old, err := NewControl(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	go old.Serve()
	c := unixClient(path)
	if code, body := post(t, c, "http://lbctl/api/v1/upgrade", ``, nil); code != http.StatusOK {
		t.Fatalf("upgrade through the control socket: %d %s", code, body)
	}
	<-f.started

	// The new process serves a duplicate of the socket.
	lf, err := old.Listening().(*net.UnixListener).File()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		t.Fatal(err)
	}
	opts.Listener = ln
	nw, err := NewControl(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	go nw.Serve()
	old.StopListening()
	old.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the old server removed the socket file the new one serves: %v", err)
	}
	for range 3 {
		if code, body := post(t, c, "http://lbctl/api/v1/upgrade", ``, nil); code != http.StatusOK {
			t.Fatalf("upgrade through the passed control socket: %d %s", code, body)
		}
		<-f.started
	}
	nw.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the new server left its socket file at Close: %v", err)
	}
}
