package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/lbctl/lbctl/pkg/tcpproxy.(*engine).run")) // the TCP event loops live as long as the process
}

// env is a running lbctl server with its admin API on a loopback port, as
// cmd/lbctl wires them: the Reload function loads the config file again.
type env struct {
	t      *testing.T
	srv    *server.Server
	m      *metrics.Metrics
	base   string // http://127.0.0.1:port
	path   string // the config file
	token  string // "" when no token file
	client *http.Client
	be     *lbtest.Backend
}

type envOptions struct {
	token     string         // written to a token file when not ""
	allow     []netip.Prefix // admin allow list; nil = default (loopback)
	hosts     []string       // [admin] hosts
	reloadErr error          // when set, Reload returns it instead of reloading
	noStart   bool           // leave the server unstarted
	config    string         // the config file; "" = configText of a new echo backend (e.be)
	version   string         // the server's version (server.Options)
}

// configText renders the test configuration: listener web in front of pool
// web (one live backend, at weight), and pool v6 whose only backend is
// [::1]:80 (never dialed).
func configText(backend string, weight int) string {
	return fmt.Sprintf(`
[listeners.web]
bind = "127.0.0.1:0"
pool = "web"

[pools.web]
[[pools.web.backends]]
address = %q
weight = %d
[pools.web.health]
check = "none"

[pools.v6]
[[pools.v6.backends]]
address = "[::1]:80"
[pools.v6.health]
check = "none"
`, backend, weight)
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{t: t, token: o.token, client: &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true},
	}}
	text := o.config
	if text == "" {
		e.be = lbtest.NewTCP(t, lbtest.Echo)
		text = configText(e.be.Addr, 1)
	}
	dir := t.TempDir()
	e.path = filepath.Join(dir, "lbctl.toml")
	e.writeConfig(text)
	cfg, err := config.Load(e.path)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	e.m = metrics.New(reg)
	log := zap.NewNop()
	e.srv, err = server.New(cfg, server.Options{Log: log, Metrics: e.m, Version: o.version})
	if err != nil {
		t.Fatal(err)
	}
	if !o.noStart {
		if err := e.srv.Start(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
	})

	var tokenFile string
	if o.token != "" {
		tokenFile = filepath.Join(dir, "token")
		// Surrounding white space is trimmed.
		if err := os.WriteFile(tokenFile, []byte("  "+o.token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	reload := func() error {
		if o.reloadErr != nil {
			return o.reloadErr
		}
		cfg, err := config.Load(e.path)
		if err != nil {
			e.m.ConfigReloads.WithLabelValues("failure").Inc()
			return err
		}
		return e.srv.Reload(cfg)
	}
	adm, err := New(Options{
		Bind: "127.0.0.1:0", Allow: o.allow, Hosts: o.hosts, TokenFile: tokenFile,
		Registry: reg, Server: e.srv, Reload: reload, Log: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- adm.Serve() }()
	t.Cleanup(func() {
		adm.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	e.base = "http://" + adm.Addr().String()
	return e
}

func (e *env) writeConfig(text string) {
	e.t.Helper()
	if err := os.WriteFile(e.path, []byte(text), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// do sends a request, with the env's token unless token says otherwise,
// and returns the status code and the body. Every answer must be JSON.
func (e *env) do(method, path string, token ...string) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.base+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	tok := e.token
	if len(token) > 0 {
		tok = token[0]
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if method != http.MethodGet {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	if path != "/metrics" {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			e.t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
		}
		if !json.Valid(body) {
			e.t.Errorf("%s %s: body is not JSON: %s", method, path, body)
		}
	}
	return resp.StatusCode, body
}

// errorOf decodes an error answer, failing unless it is {"error": "..."}.
func errorOf(t *testing.T, body []byte) string {
	t.Helper()
	var v map[string]string
	if err := json.Unmarshal(body, &v); err != nil || len(v) != 1 || v["error"] == "" {
		t.Fatalf("error answer is not {\"error\": ...}: %s", body)
	}
	return v["error"]
}

func (e *env) status() server.Status {
	e.t.Helper()
	code, body := e.do(http.MethodGet, "/api/v1/status")
	if code != http.StatusOK {
		e.t.Fatalf("status: %d %s", code, body)
	}
	var st server.Status
	if err := json.Unmarshal(body, &st); err != nil {
		e.t.Fatal(err)
	}
	return st
}

func (e *env) backend(pool, address string) server.BackendStatus {
	e.t.Helper()
	for _, p := range e.status().Pools {
		if p.Name != pool {
			continue
		}
		for _, b := range p.Backends {
			if b.Address == address {
				return b
			}
		}
	}
	e.t.Fatalf("no backend %s in pool %s", address, pool)
	return server.BackendStatus{}
}

func (e *env) reloads(result string) float64 {
	return testutil.ToFloat64(e.m.ConfigReloads.WithLabelValues(result))
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestStatusShape checks the JSON field names and values of GET
// /api/v1/status against the SPEC's status object.
func TestStatusShape(t *testing.T) {
	e := newEnv(t, envOptions{})
	// One connection through the listener, so active/total move.
	c, err := net.Dial("tcp", e.srv.Listeners()["web"].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	code, body := e.do(http.MethodGet, "/api/v1/status")
	if code != http.StatusOK {
		t.Fatalf("status: %d %s", code, body)
	}
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	wantKeys := []string{"bgp", "config_file", "last_reload", "listeners", "pools", "started", "uptime_seconds", "version"}
	if got := keys(raw); !reflect.DeepEqual(got, wantKeys) {
		t.Fatalf("status keys %v, want %v", got, wantKeys)
	}
	ls := raw["listeners"].([]any)
	if len(ls) != 1 {
		t.Fatalf("%d listeners, want 1: %s", len(ls), body)
	}
	l := ls[0].(map[string]any)
	if got, want := keys(l), []string{"active", "bind", "name", "pool", "protocol"}; !reflect.DeepEqual(got, want) {
		t.Errorf("listener keys %v, want %v", got, want)
	}
	if l["name"] != "web" || l["protocol"] != "tcp" || l["pool"] != "web" || l["active"] != 1.0 ||
		l["bind"] != e.srv.Listeners()["web"].String() {
		t.Errorf("listener %v", l)
	}
	ps := raw["pools"].([]any)
	if len(ps) != 2 {
		t.Fatalf("%d pools, want 2: %s", len(ps), body)
	}
	p := ps[1].(map[string]any) // sorted by name: v6, web
	if got, want := keys(p), []string{"algorithm", "backends", "name", "table_digest"}; !reflect.DeepEqual(got, want) {
		t.Errorf("pool keys %v, want %v", got, want)
	}
	if p["name"] != "web" || p["algorithm"] != "round-robin" {
		t.Errorf("pool %v", p)
	}
	b := p["backends"].([]any)[0].(map[string]any)
	if got, want := keys(b), []string{"active", "address", "admin", "backup", "failures", "health", "last_change", "last_check", "removing", "source", "total", "weight", "weight_override"}; !reflect.DeepEqual(got, want) {
		t.Errorf("backend keys %v, want %v", got, want)
	}
	want := map[string]any{"address": e.be.Addr, "weight": 1.0, "backup": false, "health": "up", "admin": "enabled",
		"active": 1.0, "total": 1.0, "failures": 0.0, "source": "config", "weight_override": nil, "last_check": nil,
		"last_change": nil, "removing": false}
	if !reflect.DeepEqual(b, want) {
		t.Errorf("backend %v, want %v", b, want)
	}
}

// TestEndpoints runs every endpoint, with its success and error paths, in
// order against one server.
func TestEndpoints(t *testing.T) {
	e := newEnv(t, envOptions{})
	be := url.PathEscape(e.be.Addr)
	steps := []struct {
		name, method, path string
		code               int
		check              func(t *testing.T, body []byte)
	}{
		{"healthz", "GET", "/healthz", 200, nil},
		{"readyz", "GET", "/readyz", 200, nil},
		{"metrics", "GET", "/metrics", 200, func(t *testing.T, body []byte) {
			for _, want := range []string{
				`lbctl_config_reloads_total{result="success"} 0`,
				fmt.Sprintf(`lbctl_backend_up{backend=%q,pool="web"} 1`, e.be.Addr),
				`lbctl_connections_rejected_total{listener="web",reason="max_connections"} 0`,
				"go_goroutines ", "process_open_fds ",
			} {
				if !strings.Contains(string(body), want) {
					t.Errorf("/metrics lacks %q", want)
				}
			}
		}},
		{"drain", "POST", "/api/v1/pools/web/backends/" + be + "/drain", 200, wantAdmin(e, "draining")},
		{"disable", "POST", "/api/v1/pools/web/backends/" + be + "/disable", 200, wantAdmin(e, "disabled")},
		{"enable", "POST", "/api/v1/pools/web/backends/" + be + "/enable", 200, wantAdmin(e, "enabled")},
		{"unknown pool", "POST", "/api/v1/pools/nope/backends/" + be + "/drain", 404, wantError("unknown pool nope")},
		{"unknown backend", "POST", "/api/v1/pools/web/backends/127.0.0.1:1/drain", 404, wantError("unknown backend 127.0.0.1:1")},
		{"backend of another pool", "POST", "/api/v1/pools/v6/backends/" + be + "/drain", 404, wantError("unknown backend")},
		{"unknown action", "POST", "/api/v1/pools/web/backends/" + be + "/pause", 404, wantError("unknown action pause")},
		{"unknown API endpoint", "GET", "/api/v1/nope", 404, wantError("no such endpoint")},
		{"unknown endpoint", "GET", "/nope", 404, wantError("no such endpoint")},
		{"GET on a POST endpoint", "GET", "/api/v1/reload", 405, wantError("use POST")},
		{"POST on a GET endpoint", "POST", "/metrics", 405, nil},
		{"status", "GET", "/api/v1/status", 200, nil},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			code, body := e.do(s.method, s.path)
			if code != s.code {
				t.Fatalf("%s %s: %d, want %d: %s", s.method, s.path, code, s.code, body)
			}
			if s.check != nil {
				s.check(t, body)
			}
		})
	}
}

func wantAdmin(e *env, state string) func(*testing.T, []byte) {
	return func(t *testing.T, body []byte) {
		t.Helper()
		var b server.BackendStatus
		if err := json.Unmarshal(body, &b); err != nil {
			t.Fatal(err)
		}
		if b.Address != e.be.Addr || b.Admin != state {
			t.Fatalf("answer %+v, want %s %s", b, e.be.Addr, state)
		}
		// It acts at once.
		if got := e.backend("web", e.be.Addr).Admin; got != state {
			t.Fatalf("status says %s right after, want %s", got, state)
		}
	}
}

func wantError(sub string) func(*testing.T, []byte) {
	return func(t *testing.T, body []byte) {
		t.Helper()
		if msg := errorOf(t, body); !strings.Contains(msg, sub) {
			t.Fatalf("error %q, want it to contain %q", msg, sub)
		}
	}
}

// TestAddressPathEscaping: an IPv6 backend is addressed by its configured
// address, path-escaped.
func TestAddressPathEscaping(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, tc := range []struct{ path, state string }{
		{"/api/v1/pools/v6/backends/%5B%3A%3A1%5D%3A80/drain", "draining"}, // the SPEC's example
		{"/api/v1/pools/v6/backends/" + url.PathEscape("[::1]:80") + "/disable", "disabled"},
		{"/api/v1/pools/v6/backends/%5B%3A%3A1%5D%3A80/enable", "enabled"},
	} {
		code, body := e.do(http.MethodPost, tc.path)
		if code != http.StatusOK {
			t.Fatalf("POST %s: %d %s", tc.path, code, body)
		}
		if got := e.backend("v6", "[::1]:80").Admin; got != tc.state {
			t.Fatalf("after POST %s: admin %s, want %s", tc.path, got, tc.state)
		}
	}
}

// TestReload: a valid file is applied (200), an invalid one is refused with
// its errors (400) and the old configuration keeps serving.
func TestReload(t *testing.T) {
	e := newEnv(t, envOptions{})
	// Drain, then reload with a new weight: the drain survives.
	if code, body := e.do(http.MethodPost, "/api/v1/pools/web/backends/"+url.PathEscape(e.be.Addr)+"/drain"); code != 200 {
		t.Fatalf("drain: %d %s", code, body)
	}
	e.writeConfig(configText(e.be.Addr, 7))
	code, body := e.do(http.MethodPost, "/api/v1/reload")
	if code != http.StatusOK || !strings.Contains(string(body), `"reloaded"`) {
		t.Fatalf("reload: %d %s", code, body)
	}
	if b := e.backend("web", e.be.Addr); b.Weight != 7 || b.Admin != "draining" {
		t.Fatalf("after reload: %+v, want weight 7 and still draining", b)
	}
	if e.reloads("success") != 1 {
		t.Fatalf("reloads success = %v, want 1", e.reloads("success"))
	}

	// An invalid file: 400 with every problem, nothing changes.
	e.writeConfig(configText(e.be.Addr, 3) + "\n[pools.web.bogus]\nx = 1\n")
	code, body = e.do(http.MethodPost, "/api/v1/reload")
	if code != http.StatusBadRequest {
		t.Fatalf("invalid reload: %d %s, want 400", code, body)
	}
	if msg := errorOf(t, body); !strings.Contains(msg, "lbctl.toml:") || !strings.Contains(msg, "pools.web.bogus") {
		t.Fatalf("error %q does not name the file, line and key", msg)
	}
	if b := e.backend("web", e.be.Addr); b.Weight != 7 {
		t.Fatalf("an invalid reload changed the weight to %d", b.Weight)
	}
	if e.reloads("failure") != 1 || e.reloads("success") != 1 {
		t.Fatalf("reloads failure=%v success=%v, want 1 and 1", e.reloads("failure"), e.reloads("success"))
	}
	// The old configuration still serves: enable the backend and echo.
	if code, body := e.do(http.MethodPost, "/api/v1/pools/web/backends/"+url.PathEscape(e.be.Addr)+"/enable"); code != 200 {
		t.Fatalf("enable: %d %s", code, body)
	}
	c, err := net.Dial("tcp", e.srv.Listeners()["web"].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	if got, err := lbtest.ReadAllTimeout(t, c, 5*time.Second); err != nil || string(got) != "ping" {
		t.Fatalf("echo after a rejected reload: %q %v", got, err)
	}
}

// TestReloadOtherError: a reload that fails for another reason than an
// invalid file (a listener that cannot bind) is a 500.
func TestReloadOtherError(t *testing.T) {
	e := newEnv(t, envOptions{reloadErr: errors.New("listener x: bind: address already in use")})
	code, body := e.do(http.MethodPost, "/api/v1/reload")
	if code != http.StatusInternalServerError {
		t.Fatalf("reload: %d %s, want 500", code, body)
	}
	if msg := errorOf(t, body); !strings.Contains(msg, "address already in use") {
		t.Fatalf("error %q", msg)
	}
}

// TestToken: with a token file, /api/ needs the bearer token; a missing or
// wrong one is a 401 and changes nothing. /metrics, /healthz and /readyz
// stay open.
func TestToken(t *testing.T) {
	e := newEnv(t, envOptions{token: "s3cret"})
	drain := "/api/v1/pools/web/backends/" + url.PathEscape(e.be.Addr) + "/drain"
	for _, tc := range []struct {
		name, method, path, token string
		code                      int
	}{
		{"status without token", "GET", "/api/v1/status", "", 401},
		{"status with a wrong token", "GET", "/api/v1/status", "nope", 401},
		{"status with a longer token", "GET", "/api/v1/status", "s3cret2", 401},
		{"drain without token", "POST", drain, "", 401},
		{"drain with a wrong token", "POST", drain, "S3CRET", 401},
		{"reload with a wrong token", "POST", "/api/v1/reload", "nope", 401},
		{"unknown API endpoint without token", "GET", "/api/v1/nope", "", 401},
		{"metrics without token", "GET", "/metrics", "", 200},
		{"healthz without token", "GET", "/healthz", "", 200},
		{"readyz without token", "GET", "/readyz", "", 200},
		{"status with the token", "GET", "/api/v1/status", "s3cret", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := e.do(tc.method, tc.path, tc.token)
			if code != tc.code {
				t.Fatalf("%d, want %d: %s", code, tc.code, body)
			}
			if code == 401 && !strings.Contains(errorOf(t, body), "token") {
				t.Fatalf("401 error does not mention the token: %s", body)
			}
		})
	}
	// Nothing changed.
	if b := e.backend("web", e.be.Addr); b.Admin != "enabled" {
		t.Fatalf("admin state %s after refused requests, want enabled", b.Admin)
	}
	if e.reloads("success")+e.reloads("failure") != 0 {
		t.Fatalf("a refused reload was attempted")
	}
	// With the token it works.
	if code, body := e.do(http.MethodPost, drain); code != 200 {
		t.Fatalf("drain with the token: %d %s", code, body)
	}
}

// TestAllow: a client outside [admin] allow gets 403 everywhere, even on
// /metrics and /healthz.
func TestAllow(t *testing.T) {
	e := newEnv(t, envOptions{allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}})
	for _, p := range []string{"/metrics", "/healthz", "/readyz", "/api/v1/status", "/nope"} {
		code, body := e.do(http.MethodGet, p)
		if code != http.StatusForbidden {
			t.Errorf("GET %s from 127.0.0.1: %d, want 403", p, code)
			continue
		}
		if msg := errorOf(t, body); !strings.Contains(msg, "not allowed") {
			t.Errorf("GET %s: error %q", p, msg)
		}
	}
	code, _ := e.do(http.MethodPost, "/api/v1/pools/web/backends/"+url.PathEscape(e.be.Addr)+"/drain")
	if code != http.StatusForbidden {
		t.Fatalf("drain from outside allow: %d, want 403", code)
	}
	if st := e.srv.Status(); st.Pools[1].Backends[0].Admin != "enabled" {
		t.Fatalf("a refused drain changed the admin state")
	}

	// 127.0.0.1 inside the list: allowed.
	e2 := newEnv(t, envOptions{allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	if code, body := e2.do(http.MethodGet, "/healthz"); code != http.StatusOK {
		t.Fatalf("allowed client: %d %s", code, body)
	}
}

// TestReadyz: 503 before Start, 200 while serving, 503 during the shutdown
// drain, while the rest of the API keeps answering.
func TestReadyz(t *testing.T) {
	e := newEnv(t, envOptions{noStart: true})
	if code, _ := e.do(http.MethodGet, "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("readyz before Start: %d, want 503", code)
	}
	if code, _ := e.do(http.MethodGet, "/healthz"); code != http.StatusOK {
		t.Fatalf("healthz before Start: %d, want 200", code)
	}
	if err := e.srv.Start(); err != nil {
		t.Fatal(err)
	}
	if code, _ := e.do(http.MethodGet, "/readyz"); code != http.StatusOK {
		t.Fatalf("readyz after Start: %d, want 200", code)
	}

	// Hold a connection open so the shutdown drain lasts until it closes.
	c, err := net.Dial("tcp", e.srv.Listeners()["web"].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
	}()
	lbtest.Eventually(t, 5*time.Second, func() bool {
		code, _ := e.do(http.MethodGet, "/readyz")
		return code == http.StatusServiceUnavailable
	}, "readyz never 503 during shutdown")
	// Still draining: the API answers, and the backend can be acted on.
	if code, body := e.do(http.MethodGet, "/api/v1/status"); code != http.StatusOK {
		t.Fatalf("status during the drain: %d %s", code, body)
	}
	if code, body := e.do(http.MethodPost, "/api/v1/pools/web/backends/"+url.PathEscape(e.be.Addr)+"/disable"); code != http.StatusOK {
		t.Fatalf("disable during the drain: %d %s", code, body)
	}
	select {
	case <-stopped:
		t.Fatal("Shutdown returned while a connection was open")
	default:
	}
	if code, body := e.do(http.MethodPost, "/api/v1/reload"); code == http.StatusOK {
		t.Fatalf("reload during shutdown: %d %s, want a refusal", code, body)
	}
	c.Close()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the last connection closed")
	}
	if code, _ := e.do(http.MethodGet, "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("readyz after Shutdown: %d, want 503", code)
	}
}

// fakeRuntime is a Runtime whose SetBackendAdmin fails unexpectedly.
type fakeRuntime struct{}

func (fakeRuntime) Ready() bool           { return true }
func (fakeRuntime) Status() server.Status { return server.Status{} }
func (fakeRuntime) SetBackendAdmin(string, string, balancer.AdminState) (server.BackendStatus, error) {
	return server.BackendStatus{}, errors.New("boom")
}

// TestUnreadableTokenFile: when the token file cannot be read, /api/
// refuses (500) rather than opening up; /healthz still answers.
func TestUnreadableTokenFile(t *testing.T) {
	s := &Server{opts: Options{
		Allow:     []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		TokenFile: filepath.Join(t.TempDir(), "missing"),
		Registry:  prometheus.NewRegistry(),
		Server:    fakeRuntime{},
		Reload:    func() error { return nil },
		Log:       zap.NewNop(),
	}}
	h := s.Handler()
	for _, tc := range []struct {
		path string
		code int
	}{{"/api/v1/status", 500}, {"/healthz", 200}} {
		req, _ := http.NewRequest(http.MethodGet, tc.path, nil)
		req.RemoteAddr = "127.0.0.1:4000"
		req.Header.Set("Authorization", "Bearer x")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.code {
			t.Errorf("GET %s: %d, want %d", tc.path, rec.Code, tc.code)
		}
	}
	// An unexpected runtime error is a 500 with the message.
	s.opts.TokenFile = ""
	req, _ := http.NewRequest(http.MethodPost, "/api/v1/pools/p/backends/a/drain", nil)
	req.RemoteAddr = "127.0.0.1:4000"
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	if rec.Code != 500 || !strings.Contains(rec.Body.String(), "boom") {
		t.Errorf("runtime failure: %d %s", rec.Code, rec.Body.String())
	}
}

// TestReloadErrorCodes: a missing or unreadable file is the caller's to fix
// (400); a reload while the server is starting or stopping is 503.
func TestReloadErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code int
	}{
		{"missing file", fmt.Errorf("read config: %w", fs.ErrNotExist), http.StatusBadRequest},
		{"unreadable file", fmt.Errorf("read config: %w", fs.ErrPermission), http.StatusBadRequest},
		{"stopping", server.ErrNotRunning, http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{reloadErr: tc.err})
			if code, body := e.do(http.MethodPost, "/api/v1/reload"); code != tc.code {
				t.Fatalf("reload: %d %s, want %d", code, body, tc.code)
			}
		})
	}
}

// TestBearerSchemeCaseInsensitive: "bearer" works as well as "Bearer".
func TestBearerSchemeCaseInsensitive(t *testing.T) {
	e := newEnv(t, envOptions{token: "s3cret"})
	req, _ := http.NewRequest(http.MethodGet, e.base+"/api/v1/status", nil)
	req.Header.Set("Authorization", "bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("lower-case scheme: %d, want 200", resp.StatusCode)
	}
}

// fakeEditor is a Runtime and BackendEditor that records the calls it
// gets and fails them with err when err is set.
type fakeEditor struct {
	fakeRuntime
	err    error
	killed int
	calls  []string
}

func (f *fakeEditor) answer(call string, st server.BackendStatus) (server.BackendStatus, error) {
	f.calls = append(f.calls, call)
	if f.err != nil {
		return server.BackendStatus{}, f.err
	}
	return st, nil
}

func (f *fakeEditor) AddBackend(pool string, b server.BackendSpec) (server.BackendStatus, error) {
	return f.answer(fmt.Sprintf("add %s %s weight=%d backup=%v", pool, b.Address, b.Weight, b.Backup),
		server.BackendStatus{Address: b.Address, Weight: b.Weight, Backup: b.Backup, Health: "down", Admin: "enabled", Source: "api"})
}

func (f *fakeEditor) RemoveBackend(pool, address string) (server.BackendStatus, error) {
	return f.answer("remove "+pool+" "+address,
		server.BackendStatus{Address: address, Weight: 1, Health: "up", Admin: "enabled", Source: "api", Removing: true})
}

func (f *fakeEditor) SetWeightOverride(pool, address string, weight *int) (server.BackendStatus, error) {
	w := "reset"
	st := server.BackendStatus{Address: address, Weight: 1, Health: "up", Admin: "enabled", Source: "config"}
	if weight != nil {
		w = fmt.Sprint(*weight)
		st.Weight, st.WeightOverride = *weight, weight
	}
	return f.answer("weight "+pool+" "+address+" "+w, st)
}

func (f *fakeEditor) KillBackend(pool, address string) (int, error) {
	_, err := f.answer("kill "+pool+" "+address, server.BackendStatus{})
	if err != nil {
		return 0, err
	}
	return f.killed, nil
}

// serveFake sends one request to an admin API in front of rt, from
// 127.0.0.1, and returns the answer, checking that it is JSON.
func serveFake(t *testing.T, opts Options, method, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.Allow == nil {
		opts.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	}
	s := &Server{opts: opts}
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.RemoteAddr = "127.0.0.1:4000"
	req.Host = "127.0.0.1:9900"
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" || !json.Valid(rec.Body.Bytes()) {
		t.Errorf("%s %s: answer not JSON (%s): %s", method, path, ct, rec.Body)
	}
	return rec
}

// TestBackendEditing runs each run-time change endpoint against a fake
// runtime: what reaches the runtime, and each status code and body. The
// address and weight are the server's to judge (TestBackendEditingLive).
func TestBackendEditing(t *testing.T) {
	const (
		backends = "/api/v1/pools/web/backends"
		be       = backends + "/127.0.0.1:9001"
		v6       = backends + "/%5B%3A%3A1%5D%3A9001" // [::1]:9001
	)
	large := `{"address": "127.0.0.1:9001", "backup": false` + strings.Repeat(" ", 70<<10) + `}`
	for _, tc := range []struct {
		name, method, path, body string
		err                      error // the runtime's answer
		code                     int
		call                     string // the runtime call made, "" for none
		want                     string // in the body
	}{
		// POST /backends: add.
		{"add", "POST", backends, `{"address": "127.0.0.1:9001"}`, nil, 201, "add web 127.0.0.1:9001 weight=1 backup=false", `"source": "api"`},
		{"add with weight and backup", "POST", backends, `{"address": "127.0.0.1:9001", "weight": 0, "backup": true}`, nil, 201,
			"add web 127.0.0.1:9001 weight=0 backup=true", `"backup": true`},
		{"add the largest weight", "POST", backends, `{"address": "127.0.0.1:9001", "weight": 1000000}`, nil, 201,
			"add web 127.0.0.1:9001 weight=1000000 backup=false", `"weight": 1000000`},
		{"add IPv6", "POST", backends, `{"address": "[::1]:9001"}`, nil, 201, "add web [::1]:9001 weight=1 backup=false", `"address": "[::1]:9001"`},
		{"add an address in the pool", "POST", backends, `{"address": "127.0.0.1:9001"}`, server.ErrBackendExists, 409,
			"add web 127.0.0.1:9001 weight=1 backup=false", "backend 127.0.0.1:9001 is already in pool web"},
		{"add to an unknown pool", "POST", "/api/v1/pools/nope/backends", `{"address": "127.0.0.1:9001"}`, server.ErrUnknownPool, 404,
			"add nope 127.0.0.1:9001 weight=1 backup=false", "unknown pool nope"},
		{"add refused by the server", "POST", backends, `{"address": "127.0.0.1:9001"}`, &server.BadRequestError{Field: "address", Reason: "multicast"}, 400,
			"add web 127.0.0.1:9001 weight=1 backup=false", "bad address: multicast"},
		{"add, fractional weight", "POST", backends, `{"address": "127.0.0.1:9001", "weight": 1.5}`, nil, 400, "", "bad JSON body"},
		{"add, unknown field", "POST", backends, `{"address": "127.0.0.1:9001", "wieght": 2}`, nil, 400, "", `unknown field \"wieght\"`},
		{"add, no address", "POST", backends, `{"weight": 2}`, nil, 400, "", `missing \"address\"`},
		{"add, empty body", "POST", backends, ``, nil, 400, "", "empty body"},
		{"add, not JSON", "POST", backends, `address=127.0.0.1:9001`, nil, 400, "", "bad JSON body"},
		{"add, two objects", "POST", backends, `{"address": "127.0.0.1:9001"} {}`, nil, 400, "", "data after the object"},
		{"add, body too large", "POST", backends, large, nil, 400, "", "too large"},
		{"add, wrong method", "PUT", backends, `{"address": "127.0.0.1:9001"}`, nil, 405, "", "use POST"},

		// DELETE /backends/{address}: remove.
		{"remove", "DELETE", be, "", nil, 200, "remove web 127.0.0.1:9001", `"removing": true`},
		{"remove IPv6", "DELETE", v6, "", nil, 200, "remove web [::1]:9001", `"address": "[::1]:9001"`},
		{"remove a config backend", "DELETE", be, "", fmt.Errorf("source config: %w", server.ErrNotAPIBackend), 409,
			"remove web 127.0.0.1:9001", "backend 127.0.0.1:9001 in pool web was not added through the API"},
		{"remove an unknown backend", "DELETE", be, "", server.ErrUnknownBackend, 404, "remove web 127.0.0.1:9001",
			"unknown backend 127.0.0.1:9001 in pool web"},
		{"remove from an unknown pool", "DELETE", "/api/v1/pools/nope/backends/127.0.0.1:9001", "", server.ErrUnknownPool, 404,
			"remove nope 127.0.0.1:9001", "unknown pool nope"},
		{"remove, unexpected failure", "DELETE", be, "", errors.New("boom"), 500, "remove web 127.0.0.1:9001", "boom"},

		// PATCH /backends/{address}: weight override.
		{"weight", "PATCH", be, `{"weight": 5}`, nil, 200, "weight web 127.0.0.1:9001 5", `"weight_override": 5`},
		{"weight 0", "PATCH", be, `{"weight": 0}`, nil, 200, "weight web 127.0.0.1:9001 0", `"weight_override": 0`},
		{"weight reset", "PATCH", be, `{"weight": null}`, nil, 200, "weight web 127.0.0.1:9001 reset", `"weight_override": null`},
		{"weight of IPv6", "PATCH", v6, `{"weight": 2}`, nil, 200, "weight web [::1]:9001 2", `"weight": 2`},
		{"weight of an unknown backend", "PATCH", be, `{"weight": 5}`, server.ErrUnknownBackend, 404, "weight web 127.0.0.1:9001 5", "unknown backend"},
		{"weight, missing", "PATCH", be, `{}`, nil, 400, "", `missing \"weight\"`},
		{"weight, a string", "PATCH", be, `{"weight": "5"}`, nil, 400, "", `bad weight \"5\"`},
		{"weight, unknown field", "PATCH", be, `{"weight": 5, "backup": true}`, nil, 400, "", `unknown field \"backup\"`},
		{"weight, empty body", "PATCH", be, ``, nil, 400, "", "empty body"},

		// POST /backends/{address}/kill.
		{"kill", "POST", be + "/kill", "", nil, 200, "kill web 127.0.0.1:9001", `"killed": 3`},
		{"kill IPv6", "POST", v6 + "/kill", "", nil, 200, "kill web [::1]:9001", `"killed": 3`},
		{"kill an unknown backend", "POST", be + "/kill", "", server.ErrUnknownBackend, 404, "kill web 127.0.0.1:9001", "unknown backend"},
		{"kill, server stopping", "POST", be + "/kill", "", server.ErrNotRunning, 503, "kill web 127.0.0.1:9001", "not running"},

		// Wrong methods on the new paths.
		{"GET a backend", "GET", be, "", nil, 405, "", "use PATCH or DELETE"},
		{"GET kill", "GET", be + "/kill", "", nil, 405, "", "use POST"},
		{"DELETE the pool's backends", "DELETE", backends, "", nil, 405, "", "use POST"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := &fakeEditor{err: tc.err, killed: 3}
			rec := serveFake(t, Options{Server: rt}, tc.method, tc.path, tc.body)
			if rec.Code != tc.code {
				t.Fatalf("%s %s: %d, want %d: %s", tc.method, tc.path, rec.Code, tc.code, rec.Body)
			}
			var calls []string
			if tc.call != "" {
				calls = []string{tc.call}
			}
			if !reflect.DeepEqual(rt.calls, calls) {
				t.Errorf("runtime calls %q, want %q", rt.calls, calls)
			}
			if !strings.Contains(rec.Body.String(), tc.want) {
				t.Errorf("body lacks %s:\n%s", tc.want, rec.Body)
			}
			if tc.code >= 400 {
				errorOf(t, rec.Body.Bytes())
			}
		})
	}
}

// TestBackendEditingAnswers: the added backend's Location, and the bodies
// decode as the status types the CLI reads.
func TestBackendEditingAnswers(t *testing.T) {
	rec := serveFake(t, Options{Server: &fakeEditor{}}, "POST", "/api/v1/pools/web/backends", `{"address": "[::1]:9001", "weight": 4}`)
	if got, want := rec.Header().Get("Location"), "/api/v1/pools/web/backends/%5B::1%5D:9001"; got != want {
		t.Errorf("Location %q, want %q", got, want)
	}
	var b server.BackendStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil {
		t.Fatal(err)
	}
	if want := (server.BackendStatus{Address: "[::1]:9001", Weight: 4, Health: "down", Admin: "enabled", Source: "api"}); !reflect.DeepEqual(b, want) {
		t.Errorf("answer %+v, want %+v", b, want)
	}
	rec = serveFake(t, Options{Server: &fakeEditor{killed: 0}}, "POST", "/api/v1/pools/web/backends/127.0.0.1:1/kill", "")
	var k map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &k); err != nil || !reflect.DeepEqual(k, map[string]any{"killed": 0.0}) {
		t.Errorf("kill answer %s (%v), want {\"killed\": 0}", rec.Body, err)
	}
}

// TestBackendEditingGuards: the new endpoints are behind the same allow
// list and token as the rest of /api/, and a runtime that cannot edit
// backends answers 501.
func TestBackendEditingGuards(t *testing.T) {
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	requests := []struct{ method, path, body string }{
		{"POST", "/api/v1/pools/web/backends", `{"address": "127.0.0.1:9001"}`},
		{"DELETE", "/api/v1/pools/web/backends/127.0.0.1:9001", ""},
		{"PATCH", "/api/v1/pools/web/backends/127.0.0.1:9001", `{"weight": 2}`},
		{"POST", "/api/v1/pools/web/backends/127.0.0.1:9001/kill", ""},
	}
	for _, r := range requests {
		rt := &fakeEditor{}
		if rec := serveFake(t, Options{Server: rt, TokenFile: token}, r.method, r.path, r.body); rec.Code != 401 {
			t.Errorf("%s %s without a token: %d, want 401", r.method, r.path, rec.Code)
		}
		outside := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		if rec := serveFake(t, Options{Server: rt, Allow: outside}, r.method, r.path, r.body); rec.Code != 403 {
			t.Errorf("%s %s from outside allow: %d, want 403", r.method, r.path, rec.Code)
		}
		if len(rt.calls) != 0 {
			t.Errorf("%s %s: refused requests reached the runtime: %q", r.method, r.path, rt.calls)
		}
		rec := serveFake(t, Options{Server: fakeRuntime{}}, r.method, r.path, r.body)
		if rec.Code != 501 || !strings.Contains(errorOf(t, rec.Body.Bytes()), "cannot change backends") {
			t.Errorf("%s %s without an editor: %d %s, want 501", r.method, r.path, rec.Code, rec.Body)
		}
	}
}

// *server.Server is what cmd/lbctl hands the admin API as its Runtime: it
// edits backends too.
var _ BackendEditor = (*server.Server)(nil)

// doBody is e.do with a JSON body.
func (e *env) doBody(method, path, body string) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.base+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	if !json.Valid(b) {
		e.t.Errorf("%s %s: body is not JSON: %s", method, path, b)
	}
	return resp.StatusCode, b
}

// echoThrough sends one line through listener web and returns which
// backend answered (lbtest.Named backends say their name).
func (e *env) echoThrough() string {
	e.t.Helper()
	c, err := net.Dial("tcp", e.srv.Listeners()["web"].String())
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).CloseWrite()
	got, err := lbtest.ReadAllTimeout(e.t, c, 5*time.Second)
	if err != nil {
		e.t.Fatalf("through web: %q %v", got, err)
	}
	return string(got)
}

// TestBackendEditingLive drives the run-time changes against a running
// server: an added backend takes traffic, weights steer it, a config
// backend cannot be removed, a kill resets what is established, and the
// server's judgement of addresses and weights is a 400.
func TestBackendEditingLive(t *testing.T) {
	e := newEnv(t, envOptions{})
	added := lbtest.NewTCP(t, lbtest.Named("added"))
	cfgBe := url.PathEscape(e.be.Addr)
	addedBe := url.PathEscape(added.Addr)

	code, body := e.doBody("POST", "/api/v1/pools/web/backends", fmt.Sprintf(`{"address": %q, "weight": 2}`, added.Addr))
	if code != http.StatusCreated {
		t.Fatalf("add: %d %s", code, body)
	}
	var b server.BackendStatus
	if err := json.Unmarshal(body, &b); err != nil || b.Address != added.Addr || b.Source != "api" || b.Weight != 2 {
		t.Fatalf("add answered %+v (%v)", b, err)
	}
	if got := e.backend("web", added.Addr); got.Source != "api" || got.Weight != 2 {
		t.Fatalf("status after add: %+v", got)
	}

	// With the config backend at weight 0, every connection goes to the
	// added one.
	code, body = e.doBody("PATCH", "/api/v1/pools/web/backends/"+cfgBe, `{"weight": 0}`)
	if code != 200 {
		t.Fatalf("weight 0: %d %s", code, body)
	}
	if got := e.backend("web", e.be.Addr); got.Weight != 0 || got.WeightOverride == nil || *got.WeightOverride != 0 {
		t.Fatalf("status after the override: weight %d override %v", got.Weight, got.WeightOverride)
	}
	for i := range 4 {
		if got := e.echoThrough(); got != "added" {
			t.Fatalf("connection %d answered by %q, want the added backend", i, got)
		}
	}
	code, body = e.doBody("PATCH", "/api/v1/pools/web/backends/"+cfgBe, `{"weight": null}`)
	if code != 200 {
		t.Fatalf("weight reset: %d %s", code, body)
	}
	if got := e.backend("web", e.be.Addr); got.Weight != 1 || got.WeightOverride != nil {
		t.Fatalf("status after the reset: weight %d override %v", got.Weight, got.WeightOverride)
	}

	for _, tc := range []struct {
		name, method, path, body string
		code                     int
		want                     string
	}{
		{"add it again", "POST", "/api/v1/pools/web/backends", fmt.Sprintf(`{"address": %q}`, added.Addr), 409, "already in pool web"},
		{"add the config backend", "POST", "/api/v1/pools/web/backends", fmt.Sprintf(`{"address": %q}`, e.be.Addr), 409, "already in pool web"},
		{"add a host name", "POST", "/api/v1/pools/web/backends", `{"address": "localhost:80"}`, 400, "bad address"},
		{"add port 0", "POST", "/api/v1/pools/web/backends", `{"address": "127.0.0.1:0"}`, 400, "bad address"},
		{"add a weight too large", "POST", "/api/v1/pools/web/backends", `{"address": "127.0.0.1:1", "weight": 1000001}`, 400, "bad weight"},
		{"add to an unknown pool", "POST", "/api/v1/pools/nope/backends", `{"address": "127.0.0.1:1"}`, 404, "unknown pool nope"},
		{"weight too large", "PATCH", "/api/v1/pools/web/backends/" + cfgBe, `{"weight": 1000001}`, 400, "bad weight"},
		{"weight negative", "PATCH", "/api/v1/pools/web/backends/" + cfgBe, `{"weight": -1}`, 400, "bad weight"},
		{"weight of an unknown backend", "PATCH", "/api/v1/pools/web/backends/127.0.0.1:1", `{"weight": 1}`, 404, "unknown backend"},
		{"remove the config backend", "DELETE", "/api/v1/pools/web/backends/" + cfgBe, "", 409, "not added through the API"},
		{"remove an unknown backend", "DELETE", "/api/v1/pools/web/backends/127.0.0.1:1", "", 404, "unknown backend"},
		{"kill an unknown backend", "POST", "/api/v1/pools/web/backends/127.0.0.1:1/kill", "", 404, "unknown backend"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := e.doBody(tc.method, tc.path, tc.body)
			if code != tc.code || !strings.Contains(errorOf(t, body), tc.want) {
				t.Fatalf("%d %s, want %d with %q", code, body, tc.code, tc.want)
			}
		})
	}

	// Remove: 200, and the added backend takes no new connection.
	code, body = e.doBody("DELETE", "/api/v1/pools/web/backends/"+addedBe, "")
	if code != 200 {
		t.Fatalf("remove: %d %s", code, body)
	}
	code, body = e.doBody("PATCH", "/api/v1/pools/web/backends/"+cfgBe, `{"weight": null}`)
	if code != 200 {
		t.Fatalf("weight reset: %d %s", code, body)
	}
	before := added.Accepted()
	for i := range 4 {
		if got := e.echoThrough(); got == "added" {
			t.Fatalf("connection %d after the removal went to the removed backend", i)
		}
	}
	if added.Accepted() != before {
		t.Fatalf("the removed backend accepted %d more connections", added.Accepted()-before)
	}
	lbtest.Eventually(t, 10*time.Second, func() bool {
		for _, p := range e.status().Pools {
			for _, b := range p.Backends {
				if b.Address == added.Addr {
					return false
				}
			}
		}
		return true
	}, "the removed backend, with no connection left, is still in the status")

	// Kill: a connection established to a backend is reset. The config
	// backend at weight 0 leaves every connection to another echo.
	holder := lbtest.NewTCP(t, lbtest.Echo)
	if code, body := e.doBody("POST", "/api/v1/pools/web/backends", fmt.Sprintf(`{"address": %q}`, holder.Addr)); code != 201 {
		t.Fatalf("add: %d %s", code, body)
	}
	if code, body := e.doBody("PATCH", "/api/v1/pools/web/backends/"+cfgBe, `{"weight": 0}`); code != 200 {
		t.Fatalf("weight 0: %d %s", code, body)
	}
	c, err := net.Dial("tcp", e.srv.Listeners()["web"].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// An echo proves the connection established end to end (counted
	// active, it may still be connecting, which a kill does not see).
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("echo before the kill: %v", err)
	}
	if got := e.backend("web", holder.Addr).Active; got != 1 {
		t.Fatalf("%d active connections to the echo, want 1", got)
	}
	code, body = e.doBody("POST", "/api/v1/pools/web/backends/"+url.PathEscape(holder.Addr)+"/kill", "")
	if code != 200 || strings.Join(strings.Fields(string(body)), "") != `{"killed":1}` {
		t.Fatalf("kill: %d %s, want {\"killed\": 1}", code, body)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after the kill: %v, want a reset", err)
	}
	lbtest.Eventually(t, 10*time.Second, func() bool { return e.backend("web", holder.Addr).Active == 0 }, "the killed connection is still active")
}
