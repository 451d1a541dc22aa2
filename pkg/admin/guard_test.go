package admin

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// rawRequest sends method path to the env's admin API with the given Host
// and Content-Type ("" = none) and returns the status code and body.
func (e *env) rawRequest(method, path, host, contentType, body string) (int, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.base+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestContentTypeRule: a request that changes state needs
// "Content-Type: application/json"; a form-encoded or text/plain POST (what
// a web page of another origin can send without a preflight) is refused
// with 403 and changes nothing.
func TestContentTypeRule(t *testing.T) {
	e := newEnv(t, envOptions{})
	drain := "/api/v1/pools/web/backends/" + url.PathEscape(e.be.Addr) + "/drain"
	enable := "/api/v1/pools/web/backends/" + url.PathEscape(e.be.Addr) + "/enable"
	for _, tc := range []struct {
		name, method, path, ct, body string
		code                         int
	}{
		{"form-encoded drain", "POST", drain, "application/x-www-form-urlencoded", "a=b", 403},
		{"text/plain drain", "POST", drain, "text/plain", "{}", 403},
		{"multipart drain", "POST", drain, "multipart/form-data; boundary=x", "", 403},
		{"drain without Content-Type", "POST", drain, "", "", 403},
		{"reload without Content-Type", "POST", "/api/v1/reload", "", "", 403},
		{"form-encoded reload", "POST", "/api/v1/reload", "application/x-www-form-urlencoded", "", 403},
		{"DELETE without Content-Type", "DELETE", "/api/v1/pools/web/backends/" + url.PathEscape(e.be.Addr), "", "", 403},
		{"PATCH as text/plain", "PATCH", "/api/v1/pools/web/backends/" + url.PathEscape(e.be.Addr), "text/plain", `{"weight": 3}`, 403},
		{"JSON look-alike", "POST", drain, "application/jsonx", "", 403},
		{"GET needs none", "GET", "/api/v1/status", "", "", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := e.rawRequest(tc.method, tc.path, "", tc.ct, tc.body)
			if code != tc.code {
				t.Fatalf("%d %s, want %d", code, body, tc.code)
			}
			if code == 403 && !strings.Contains(body, "Content-Type: application/json") {
				t.Errorf("403 does not say what is missing: %s", body)
			}
		})
	}
	if b := e.backend("web", e.be.Addr); b.Admin != "enabled" || b.Weight != 1 {
		t.Fatalf("a refused request changed the backend: %+v", b)
	}
	if got := e.reloads("success") + e.reloads("failure"); got != 0 {
		t.Fatalf("a refused request reloaded: %v reloads", got)
	}
	// With the header, in any case and with parameters, it works.
	for _, ct := range []string{"application/json", "Application/JSON; charset=utf-8"} {
		if code, body := e.rawRequest("POST", drain, "", ct, ""); code != 200 || !strings.Contains(body, `"admin": "draining"`) {
			t.Fatalf("drain with %q: %d %s", ct, code, body)
		}
		if code, body := e.rawRequest("POST", enable, "", ct, ""); code != 200 {
			t.Fatalf("enable with %q: %d %s", ct, code, body)
		}
	}
}

// TestHostRule: a Host that is not an IP literal, localhost or in [admin]
// hosts gets 421 on every path, as a page served under a rebound DNS name
// would send it.
func TestHostRule(t *testing.T) {
	e := newEnv(t, envOptions{hosts: []string{"lb1.internal"}})
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(e.base, "http://"))
	for _, tc := range []struct {
		host string
		code int
	}{
		{"127.0.0.1:" + port, 200},
		{"127.0.0.1", 200},
		{"[::1]:" + port, 200},
		{"[::1]", 200},
		{"10.1.2.3", 200},
		{"localhost:" + port, 200},
		{"LocalHost", 200},
		{"localhost.", 200},
		{"lb1.internal:" + port, 200},
		{"LB1.internal", 200},
		{"attacker.example:" + port, 421}, // DNS rebinding: the page's own name
		{"attacker.example", 421},
		{"lb1.internal.attacker.example", 421},
		{"localhost.attacker.example", 421},
		{"127.0.0.1.nip.io", 421},
		{"lb2.internal", 421},
	} {
		for _, path := range []string{"/api/v1/status", "/metrics", "/healthz", "/readyz"} {
			code, body := e.rawRequest("GET", path, tc.host, "", "")
			if code != tc.code {
				t.Errorf("Host %q, GET %s: %d %s, want %d", tc.host, path, code, body, tc.code)
			}
			if code == 421 && !strings.Contains(body, "[admin] hosts") {
				t.Errorf("Host %q: 421 does not say why: %s", tc.host, body)
			}
		}
	}
	// A state change from a rebound name is refused before it happens.
	drain := "/api/v1/pools/web/backends/" + url.PathEscape(e.be.Addr) + "/drain"
	if code, body := e.rawRequest("POST", drain, "attacker.example", "application/json", ""); code != 421 {
		t.Fatalf("drain from a rebound name: %d %s", code, body)
	}
	if b := e.backend("web", e.be.Addr); b.Admin != "enabled" {
		t.Fatalf("drained by a refused request: %+v", b)
	}
}

// TestHostRuleDefault: without [admin] hosts, only IP literals and
// localhost pass; the check comes after the allow list (403 first).
func TestHostRuleDefault(t *testing.T) {
	if hostAllowed("lb1.internal", nil) || !hostAllowed("localhost:1", nil) || !hostAllowed("", nil) {
		t.Fatal("hostAllowed without names")
	}
	rec := serveFake(t, Options{Server: fakeRuntime{}, Allow: nil}, "GET", "/healthz", "")
	if rec.Code != 200 {
		t.Fatalf("healthz: %d", rec.Code)
	}
	s := &Server{opts: Options{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Server: fakeRuntime{}, Registry: prometheus.NewRegistry()}}
	req, _ := http.NewRequest("GET", "/healthz", nil)
	req.RemoteAddr, req.Host = "127.0.0.1:4000", "attacker.example"
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, req)
	if w.Code != 403 {
		t.Fatalf("outside the allow list with a bad Host: %d, want 403", w.Code)
	}
}
