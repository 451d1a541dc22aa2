package config

import (
	"strings"
	"testing"
	"time"
)

const routePools = `
[pools.api]
  [[pools.api.backends]]
  address = "127.0.0.1:9001"
[pools.shop]
  [[pools.shop.backends]]
  address = "127.0.0.1:9002"
[pools.dns]
  [[pools.dns.backends]]
  address = "127.0.0.1:9053"
`

func TestRoutesParse(t *testing.T) {
	cfg := mustParse(t, `
[listeners.tls]
bind = "127.0.0.1:8443"
tls_inspect_timeout = "2s"

  [[listeners.tls.routes]]
  sni = ["API.example.com.", "*.Example.com"]
  pool = "api"

  [[listeners.tls.routes]]
  sni_regex = '^shop-[0-9]+\.example\.com$'
  alpn = ["h2"]
  pool = "shop"

[listeners.dns]
protocol = "udp"
bind = "127.0.0.1:8053"
pool = "dns"
`+routePools)
	l := cfg.Listeners[1]
	if l.Name != "tls" || l.Pool != "" || l.TLSInspectTimeout != 2*time.Second || len(l.Routes) != 2 {
		t.Fatalf("listener %+v", l)
	}
	r0, r1 := l.Routes[0], l.Routes[1]
	if strings.Join(r0.SNI, ",") != "api.example.com,*.example.com" || r0.Pool != "api" || r0.Line != 5 {
		t.Errorf("route 0: %+v", r0)
	}
	if r1.SNIRegexSource != `^shop-[0-9]+\.example\.com$` || r1.Pool != "shop" || r1.ALPN[0] != "h2" {
		t.Errorf("route 1: %+v", r1)
	}
	if p := cfg.Pools["shop"]; p.Protocol != "tcp" || p.Health.Check != "tcp" {
		t.Errorf("a pool used only by routes is a tcp pool: %+v", p)
	}
	if cfg.Listeners[0].TLSInspectTimeout != 0 || cfg.Listeners[0].Routes != nil {
		t.Errorf("udp listener: %+v", cfg.Listeners[0])
	}
}

func TestRouteMatch(t *testing.T) {
	cfg := mustParse(t, `
[listeners.tls]
bind = "127.0.0.1:8443"
pool = "api"
  [[listeners.tls.routes]]
  sni = ["api.example.com", "*.example.com"]
  pool = "api"
  [[listeners.tls.routes]]
  sni_regex = '^shop-[0-9]+\.example\.org$'
  alpn = ["h2", "acme-tls/1"]
  pool = "shop"
`+routePools)
	r := cfg.Listeners[0].Routes
	tests := []struct {
		sni  string
		alpn []string
		want int // index of the first matching route, -1 none
	}{
		{"api.example.com", nil, 0},
		{"www.example.com", nil, 0},
		{"example.com", nil, -1},     // the wildcard needs one more label
		{"a.b.example.com", nil, -1}, // ...exactly one
		{"xexample.com", nil, -1},
		{"", []string{"h2"}, -1}, // no SNI matches no route
		{"shop-12.example.org", []string{"http/1.1", "h2"}, 1},
		{"shop-12.example.org", []string{"http/1.1"}, -1}, // alpn narrows
		{"shop-12.example.org", nil, -1},
		{"shop-x.example.org", []string{"h2"}, -1},
		{"shop-1.example.org.evil", []string{"h2"}, -1},
	}
	for _, tt := range tests {
		got := -1
		for i := range r {
			if r[i].Match(tt.sni, tt.alpn) {
				got = i
				break
			}
		}
		if got != tt.want {
			t.Errorf("%q %q: route %d, want %d", tt.sni, tt.alpn, got, tt.want)
		}
	}
	// The regex is case-insensitive even written in capitals.
	cfg = mustParse(t, `
[listeners.tls]
bind = "127.0.0.1:8443"
  [[listeners.tls.routes]]
  sni_regex = '^SHOP\.example\.org$'
  pool = "shop"
`+routePools)
	if !cfg.Listeners[0].Routes[0].Match("shop.example.org", nil) {
		t.Error("sni_regex should match case-insensitively")
	}
}

func TestRoutesErrors(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{
			name: "invalid regex, route without pool, unknown pool",
			src: `
[listeners.tls]
bind = "127.0.0.1:8443"
  [[listeners.tls.routes]]
  sni_regex = '^shop-[0-9+\.example\.com$'
  pool = "shop"
  [[listeners.tls.routes]]
  sni = ["a.example.com"]
  [[listeners.tls.routes]]
  sni = ["b.example.com"]
  pool = "nope"
`,
			want: `
t.toml:4: listeners.tls.routes[0].sni_regex: invalid regular expression "^shop-[0-9+\\.example\\.com$": missing closing ]: ` + "`[0-9+\\.example\\.com$`" + `
t.toml:6: listeners.tls.routes[1].pool: required: the pool that serves this route
t.toml:10: listeners.tls.routes[2].pool: unknown pool "nope"
`,
		},
		{
			name: "the error names the pattern as written",
			src: `
[listeners.tls]
bind = "127.0.0.1:8443"
  [[listeners.tls.routes]]
  sni_regex = "a(("
  pool = "api"
`,
			want: `
t.toml:4: listeners.tls.routes[0].sni_regex: invalid regular expression "a((": missing closing ): ` + "`a((`" + `
`,
		},
		{
			name: "routes on a udp listener",
			src: `
[listeners.dns]
protocol = "udp"
bind = "127.0.0.1:8053"
pool = "dns"
tls_inspect_timeout = "1s"
  [[listeners.dns.routes]]
  sni = ["a.example.com"]
  pool = "dns"
`,
			want: `
t.toml:5: listeners.dns.tls_inspect_timeout: only valid with protocol = "tcp" (TLS routing reads a TCP stream)
t.toml:6: listeners.dns.routes: only valid with protocol = "tcp" (TLS routing reads a TCP stream)
`,
		},
		{
			name: "bad names, alpn only, empty lists, zero timeout, unknown key",
			src: `
[listeners.tls]
bind = "127.0.0.1:8443"
pool = "api"
tls_inspect_timeout = "0s"
  [[listeners.tls.routes]]
  sni = ["a.*.example.com", "bad name", 7, "*example.com"]
  pool = "api"
  [[listeners.tls.routes]]
  alpn = ["h2"]
  pool = "api"
  [[listeners.tls.routes]]
  sni = []
  alpn = [""]
  pool = "api"
  snii = "x"
`,
			want: `
t.toml:4: listeners.tls.tls_inspect_timeout: must be greater than 0, got "0s"
t.toml:6: listeners.tls.routes[0].sni[0]: invalid name "a.*.example.com": a wildcard is "*." followed by a domain, such as "*.example.com"
t.toml:6: listeners.tls.routes[0].sni[1]: invalid name "bad name": want a host name such as api.example.com
t.toml:6: listeners.tls.routes[0].sni[2]: expected a string, got integer
t.toml:6: listeners.tls.routes[0].sni[3]: invalid name "*example.com": a wildcard is "*." followed by a domain, such as "*.example.com"
t.toml:8: listeners.tls.routes[1]: a route needs sni or sni_regex: it routes by server name (alpn only narrows it)
t.toml:12: listeners.tls.routes[2].sni: empty list: leave the key out, or name at least one server
t.toml:13: listeners.tls.routes[2].alpn[0]: a protocol name is 1 to 255 bytes, got 0
t.toml:15: listeners.tls.routes[2].snii: unknown key (did you mean "sni"?)
`,
		},
		{
			name: "no pool and no routes",
			src: `
[listeners.tls]
bind = "127.0.0.1:8443"
`,
			want: `
t.toml:1: listeners.tls.pool: required: the pool that serves this listener
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErrors(t, tt.src+routePools, tt.want)
		})
	}
}
