package admin

import (
	"mime"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/lbctl/lbctl/pkg/config"
)

// guard puts the HTTP listener's checks in front of next, in order: the
// client's address (403), the Host header (421), the Content-Type of a
// request that changes state (403). The control socket skips them all:
// only who may open its file reaches it, and no browser can.
func (s *Server) guard(next http.Handler) http.Handler {
	if s.control {
		return next
	}
	return s.allow(s.checkHost(requireJSON(next)))
}

// allow refuses clients outside the Allow list.
func (s *Server) allow(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil || !config.Match(s.opts.Allow, ap.Addr()) {
			writeError(w, http.StatusForbidden, "client address not allowed")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// checkHost answers 421 to a request whose Host header names neither an IP
// address, localhost, nor one of [admin] hosts. A page of a site whose DNS
// name an attacker turns to 127.0.0.1 (DNS rebinding) is same-origin with
// the admin API in the browser's eyes, and could read it; its requests
// still carry the attacker's name in Host.
func (s *Server) checkHost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hostAllowed(r.Host, s.opts.Hosts) {
			writeError(w, http.StatusMisdirectedRequest, "Host "+r.Host+
				" is not an IP address, localhost, nor listed in [admin] hosts")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// hostAllowed reports whether host (a Host header: name or IP, optional
// port, IPv6 in brackets) is an IP literal, localhost (any case), or one
// of names (lower case, as config gives them). An empty Host (HTTP/1.0)
// passes: browsers always send one.
func hostAllowed(host string, names []string) bool {
	if host == "" {
		return true
	}
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	} else if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	h = strings.ToLower(strings.TrimSuffix(h, "."))
	return h == "localhost" || slices.Contains(names, h)
}

// requireJSON refuses, with 403, a POST, PUT, PATCH or DELETE without
// "Content-Type: application/json" (parameters such as charset allowed). A
// web page of another origin can send a form-encoded or text/plain POST
// without asking, but a JSON one only after a CORS preflight, which this
// API never grants.
func requireJSON(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
			mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
			if err != nil || mt != "application/json" {
				writeError(w, http.StatusForbidden, r.Method+" needs the header \"Content-Type: application/json\""+
					" (a guard against requests from web pages of other origins)")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
