package config

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// DefaultTLSInspectTimeout is the time a listener with routes allows for
// the whole ClientHello.
const DefaultTLSInspectTimeout = 5 * time.Second

// Route is one [[listeners.NAME.routes]] entry: TLS connections whose
// ClientHello matches it go to Pool. A route matches when the server name
// (SNI) is one of SNI or matches SNIRegex, and, when ALPN is not empty,
// the client offers at least one of ALPN. A hello without SNI matches no
// route. Names compare case-insensitively.
type Route struct {
	// SNI holds exact names ("api.example.com") and wildcards
	// ("*.example.com": exactly one more label, so a.example.com but not
	// example.com nor a.b.example.com), lower-cased, without a trailing dot.
	SNI []string
	// SNIRegex is sni_regex compiled case-insensitively (Go regexp
	// syntax, unanchored unless written with ^ and $); nil when absent.
	// SNIRegexSource is the pattern as written.
	SNIRegex       *regexp.Regexp
	SNIRegexSource string
	ALPN           []string // protocols, as written (ALPN compares exactly)
	Pool           string   // key of Config.Pools
	Line           int      // the line of the entry's table header
}

// Match reports whether a ClientHello with server name sni (lower-cased,
// as tlshello returns it) and ALPN list alpn matches r.
func (r *Route) Match(sni string, alpn []string) bool {
	if sni == "" || !r.matchName(sni) {
		return false
	}
	if len(r.ALPN) == 0 {
		return true
	}
	for _, want := range r.ALPN {
		for _, p := range alpn {
			if p == want {
				return true
			}
		}
	}
	return false
}

func (r *Route) matchName(sni string) bool {
	for _, n := range r.SNI {
		if suffix, wild := strings.CutPrefix(n, "*"); wild {
			// "*.example.com": one label, then the suffix.
			if rest, ok := strings.CutSuffix(sni, suffix); ok && rest != "" && !strings.Contains(rest, ".") {
				return true
			}
		} else if sni == n {
			return true
		}
	}
	return r.SNIRegex != nil && r.SNIRegex.MatchString(sni)
}

// routes decodes [[listeners.NAME.routes]] and tls_inspect_timeout into
// l. Pool names are checked against the pools later (checkRoutePools).
func (d *decoder) routes(t *table, l *Listener) {
	if v, ok := t.duration("tls_inspect_timeout", true); ok {
		l.TLSInspectTimeout = v
	}
	if l.Protocol == "udp" {
		for _, k := range []string{"routes", "tls_inspect_timeout"} {
			if t.has(k) {
				t.errf(k, `only valid with protocol = "tcp" (TLS routing reads a TCP stream)`)
			}
		}
	}
	rts, ok := t.tables("routes")
	if !ok {
		return
	}
	if l.TLSInspectTimeout == 0 {
		l.TLSInspectTimeout = DefaultTLSInspectTimeout
	}
	if len(rts) == 0 {
		t.errf("routes", "empty list: leave the key out for a listener without routes")
	}
	l.Routes = []Route{}
	for _, rt := range rts {
		r := Route{Line: rt.line}
		if items, ok := rt.array("sni"); ok {
			if len(items) == 0 {
				rt.errf("sni", "empty list: leave the key out, or name at least one server")
			}
			for _, it := range items {
				s, isString := it.v.(string)
				if !isString {
					d.add(it.path, it.line, "expected a string, got %s", tomlType(it.v))
					continue
				}
				name, err := routeName(s)
				if err != nil {
					d.add(it.path, it.line, "%s", err)
					continue
				}
				r.SNI = append(r.SNI, name)
			}
		}
		if s, ok := rt.str("sni_regex"); ok {
			_, err := regexp.Compile(s) // its own error names what was written
			var re *regexp.Regexp
			if err == nil {
				re, err = regexp.Compile("(?i)" + s)
			}
			switch {
			case s == "":
				rt.errf("sni_regex", "empty pattern would match every name: leave the key out")
			case err != nil:
				rt.errf("sni_regex", "invalid regular expression %q: %v", s, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
			default:
				r.SNIRegex, r.SNIRegexSource = re, s
			}
		}
		if items, ok := rt.array("alpn"); ok {
			if len(items) == 0 {
				rt.errf("alpn", "empty list: leave the key out to match any protocol")
			}
			for _, it := range items {
				s, isString := it.v.(string)
				switch {
				case !isString:
					d.add(it.path, it.line, "expected a string, got %s", tomlType(it.v))
				case s == "" || len(s) > 255:
					d.add(it.path, it.line, "a protocol name is 1 to 255 bytes, got %d", len(s))
				default:
					r.ALPN = append(r.ALPN, s)
				}
			}
		}
		if !rt.has("sni") && !rt.has("sni_regex") {
			rt.errf("", "a route needs sni or sni_regex: it routes by server name (alpn only narrows it)")
		}
		if s, ok := rt.str("pool"); ok {
			r.Pool = s
			if s == "" {
				rt.errf("pool", "must name the pool that serves this route")
			}
		} else if !rt.has("pool") {
			rt.errf("pool", "required: the pool that serves this route")
		}
		rt.finish()
		l.Routes = append(l.Routes, r)
	}
}

// routeName checks one sni entry: a host name, or "*." and a host name,
// and returns it lower-cased without a trailing dot.
func routeName(s string) (string, error) {
	name := strings.ToLower(strings.TrimSuffix(s, "."))
	host, wild := strings.CutPrefix(name, "*.")
	switch {
	case strings.Contains(host, "*"):
		return "", fmt.Errorf(`invalid name %q: a wildcard is "*." followed by a domain, such as "*.example.com"`, s)
	case !validHostname(host):
		return "", fmt.Errorf("invalid name %q: want a host name such as api.example.com", s)
	case wild:
		return "*." + host, nil
	}
	return name, nil
}

// checkRoutePools reports routes naming a pool that is not declared.
func (d *decoder) checkRoutePools(def *listenerDef, declared map[string]bool) {
	for i, r := range def.l.Routes {
		if r.Pool != "" && !declared[r.Pool] {
			p := indexKey(def.t.keyPath("routes"), i)
			d.add(joinKey(p, "pool"), lineOr(d.lines, joinKey(p, "pool"), r.Line), "unknown pool %q", r.Pool)
		}
	}
}
