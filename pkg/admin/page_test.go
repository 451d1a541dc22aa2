package admin

import (
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// get fetches path from the env's admin API with no token and returns the
// answer and its body (any content type).
func (e *env) get(method, path string) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.base+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if method != http.MethodGet && method != http.MethodHead {
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
	return resp, body
}

// TestStatusPageServed: GET / answers the embedded page with a policy that
// forbids other origins, needs no token, and is the only new path.
func TestStatusPageServed(t *testing.T) {
	e := newEnv(t, envOptions{token: "s3cret"})
	resp, body := e.get(http.MethodGet, "/")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %d %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if string(body) != string(statusPage) {
		t.Errorf("GET / is not the embedded page (%d bytes, want %d)", len(body), len(statusPage))
	}
	csp := resp.Header.Get("Content-Security-Policy")
	directives := map[string]string{}
	for _, d := range strings.Split(csp, ";") {
		name, value, _ := strings.Cut(strings.TrimSpace(d), " ")
		directives[name] = value
	}
	for name, want := range map[string]string{
		"default-src": "'self'", "connect-src": "'self'", "base-uri": "'none'", "frame-ancestors": "'none'",
	} {
		if directives[name] != want {
			t.Errorf("CSP %s = %q, want %q (policy %q)", name, directives[name], want, csp)
		}
	}
	// Inline code runs by hash: one for the script, one for the style, and
	// no 'unsafe-inline' and no other origin.
	for _, name := range []string{"script-src", "style-src"} {
		v := directives[name]
		if !regexp.MustCompile(`^'sha256-[A-Za-z0-9+/]{43}=' 'self'$`).MatchString(v) {
			t.Errorf("CSP %s = %q, want one sha256 hash and 'self'", name, v)
		}
	}
	for h, want := range map[string]string{"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Cache-Control": "no-store"} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	// Self-contained: no URL of another origin, nothing loaded by src or
	// href but the empty data: icon.
	page := string(body)
	for _, bad := range []string{"http:", "https:", "//cdn", "@import", "url("} {
		if strings.Contains(page, bad) {
			t.Errorf("the page contains %q", bad)
		}
	}
	for _, m := range regexp.MustCompile(`(?i)\b(src|href|action)\s*=\s*"([^"]*)"`).FindAllStringSubmatch(page, -1) {
		if m[2] != "data:," {
			t.Errorf("the page loads %s=%q", m[1], m[2])
		}
	}

	for _, c := range []struct {
		method, path string
		code         int
	}{
		{http.MethodHead, "/", http.StatusOK},
		{http.MethodGet, "/index.html", http.StatusNotFound},
		{http.MethodGet, "/status", http.StatusNotFound},
		{http.MethodPost, "/", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/", http.StatusMethodNotAllowed},
	} {
		resp, body := e.get(c.method, c.path)
		if resp.StatusCode != c.code {
			t.Errorf("%s %s: %d, want %d: %s", c.method, c.path, resp.StatusCode, c.code, body)
		}
		if c.code == http.StatusMethodNotAllowed && resp.Header.Get("Allow") != "GET" {
			t.Errorf("%s %s: Allow %q, want GET", c.method, c.path, resp.Header.Get("Allow"))
		}
	}
	// The data still needs the token.
	if resp, body := e.get(http.MethodGet, "/api/v1/status"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /api/v1/status without the token: %d %s", resp.StatusCode, body)
	}
}

// TestStatusPageControlSocket: the control socket serves the same page.
func TestStatusPageControlSocket(t *testing.T) {
	e := newEnv(t, envOptions{})
	path := filepath.Join(t.TempDir(), "lbctl.sock")
	e.startControl(path, func() error { return nil })
	resp, err := unixClient(path).Get("http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || string(body) != string(statusPage) ||
		resp.Header.Get("Content-Security-Policy") != statusPageCSP {
		t.Fatalf("GET / over the control socket: %d, %d bytes, CSP %q", resp.StatusCode, len(body), resp.Header.Get("Content-Security-Policy"))
	}
}
