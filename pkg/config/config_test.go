package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// parse is Parse with the file name "t.toml" and a leading newline of the
// literal trimmed, so the first line of a test's TOML is line 1.
func parse(src string) (*Config, error) {
	return Parse("t.toml", []byte(strings.TrimPrefix(src, "\n")))
}

// mustParse fails the test unless src is valid.
func mustParse(t *testing.T, src string) *Config {
	t.Helper()
	cfg, err := parse(src)
	if err != nil {
		t.Fatalf("Parse: unexpected error:\n%v", err)
	}
	return cfg
}

// TestParseErrors is the catalogue of invalid files: each gives exactly
// these errors, every one with file, line, key path and message.
func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want string // Errors.Error(): one error per line
	}{
		{
			name: "syntax error",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = web
`,
			want: `
t.toml:3: invalid TOML: expected value but found "web" instead
`,
		},
		{
			name: "syntax error in array",
			src: `
allow = [
  "a",
  "b"
  "c"]
`,
			want: `
t.toml:4: invalid TOML: expected a comma (',') or array terminator (']'), but got '"'
`,
		},
		{
			name: "duplicate key",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
bind = "127.0.0.1:8081"
`,
			want: `
t.toml:4: invalid TOML: Key 'listeners.web.bind' has already been defined.
`,
		},
		{
			name: "unknown top-level key",
			src: `
colour = "red"
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:1: colour: unknown key
`,
		},
		{
			name: "unknown key in listener with suggestion",
			src: `
[listeners.web]
bnd = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:1: listeners.web.bind: required: the IP:port to listen on
t.toml:2: listeners.web.bnd: unknown key (did you mean "bind"?)
`,
		},
		{
			name: "unknown key in backend array entry",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[[pools.web.backends]]
address = "127.0.0.1:9002"
wieght = 2
`,
			want: `
t.toml:8: pools.web.backends[1].wieght: unknown key (did you mean "weight"?)
`,
		},
		{
			name: "unknown key in inline health table",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[pools.web]
health = { check = "tcp", intreval = "1s" }
`,
			want: `
t.toml:7: pools.web.health.intreval: unknown key (did you mean "interval"?)
`,
		},
		{
			name: "unknown table",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[pools.web.healthcheck]
check = "tcp"
`,
			want: `
t.toml:6: pools.web.healthcheck: unknown key
`,
		},
		{
			name: "no listeners",
			src: `
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml: listeners: at least one listener is required
`,
		},
		{
			name: "listener without pool",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:1: listeners.web.pool: required: the pool that serves this listener
`,
		},
		{
			name: "listener without bind",
			src: `
[listeners.web]
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:1: listeners.web.bind: required: the IP:port to listen on
`,
		},
		{
			name: "listener naming an unknown pool",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "wbe"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:3: listeners.web.pool: unknown pool "wbe"
`,
		},
		{
			name: "pool without backends",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[pools.web]
algorithm = "ip-hash"
`,
			want: `
t.toml:4: pools.web.backends: a pool needs at least one backend or a discover source
`,
		},
		{
			name: "pool with empty backends array",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[pools.web]
backends = []
`,
			want: `
t.toml:5: pools.web.backends: a pool needs at least one backend or a discover source
`,
		},
		{
			name: "duplicate tcp bind, error on the second",
			src: `
[listeners.a]
bind = "127.0.0.1:8080"
pool = "web"
[listeners.b]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:5: listeners.b.bind: tcp address 127.0.0.1:8080 conflicts with listeners.a.bind (127.0.0.1:8080, line 2)
`,
		},
		{
			name: "wildcard and loopback on the same port",
			src: `
[listeners.b]
bind = "127.0.0.1:8080"
pool = "web"
[listeners.a]
bind = "0.0.0.0:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:5: listeners.a.bind: tcp address 0.0.0.0:8080 conflicts with listeners.b.bind (127.0.0.1:8080, line 2)
`,
		},
		{
			name: "IPv6 wildcard covers IPv4",
			src: `
[listeners.a]
bind = "[::]:53"
protocol = "udp"
pool = "web"
[listeners.b]
bind = "127.0.0.1:53"
protocol = "udp"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:6: listeners.b.bind: udp address 127.0.0.1:53 conflicts with listeners.a.bind ([::]:53, line 2)
`,
		},
		{
			name: "admin bind conflicts with a tcp listener",
			src: `
[admin]
bind = "127.0.0.1:8080"
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:4: listeners.web.bind: tcp address 127.0.0.1:8080 conflicts with admin.bind (127.0.0.1:8080, line 2)
`,
		},
		{
			name: "bind without port",
			src: `
[listeners.web]
bind = "127.0.0.1"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:2: listeners.web.bind: invalid address "127.0.0.1": want IP:port (IPv6 in brackets)
`,
		},
		{
			name: "bind port out of range",
			src: `
[listeners.a]
bind = "127.0.0.1:http"
pool = "web"
[listeners.b]
bind = "127.0.0.1:65536"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:2: listeners.a.bind: invalid address "127.0.0.1:http": port must be 1-65535, or 0 for any free port
t.toml:5: listeners.b.bind: invalid address "127.0.0.1:65536": port must be 1-65535, or 0 for any free port
`,
		},
		{
			name: "bind with host name or empty host",
			src: `
[listeners.a]
bind = "localhost:8080"
pool = "web"
[listeners.b]
bind = ":8081"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:2: listeners.a.bind: invalid address "localhost:8080": host must be an IP address
t.toml:5: listeners.b.bind: invalid address ":8081": empty host (use 0.0.0.0 or [::] for every address)
`,
		},
		{
			name: "bad backend addresses",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "10.0.0.1"
[[pools.web.backends]]
address = "::1:80"
[[pools.web.backends]]
address = "bad_host!:80"
[[pools.web.backends]]
address = "db.internal:http"
`,
			want: `
t.toml:5: pools.web.backends[0].address: invalid address "10.0.0.1": want host:port (IPv6 in brackets)
t.toml:7: pools.web.backends[1].address: invalid address "::1:80": want host:port (IPv6 in brackets)
t.toml:9: pools.web.backends[2].address: invalid address "bad_host!:80": host is neither an IP address nor a host name
t.toml:11: pools.web.backends[3].address: invalid address "db.internal:http": port must be 1-65535
`,
		},
		{
			name: "duplicate backend address",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[[pools.web.backends]]
address = "127.0.0.2:9001"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:9: pools.web.backends[2].address: duplicate backend "127.0.0.1:9001" (first at pools.web.backends[0], line 5)
`,
		},
		{
			name: "inline backends: duplicate and negative weight",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[pools.web]
backends = [
  { address = "127.0.0.1:9001" },
  { address = "127.0.0.1:9001", weight = -1 },
]
`,
			want: `
t.toml:7: pools.web.backends[1].address: duplicate backend "127.0.0.1:9001" (first at pools.web.backends[0], line 6)
t.toml:7: pools.web.backends[1].weight: must not be negative, got -1
`,
		},
		{
			name: "negative weight",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
weight = -1
`,
			want: `
t.toml:6: pools.web.backends[0].weight: must not be negative, got -1
`,
		},
		{
			name: "wrong types",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = 9001
weight = "3"
backup = "yes"
`,
			want: `
t.toml:5: pools.web.backends[0].address: expected a string, got integer
t.toml:6: pools.web.backends[0].weight: expected an integer, got string
t.toml:7: pools.web.backends[0].backup: expected a boolean, got string
`,
		},
		{
			name: "unknown enums",
			src: `
[log]
level = "trace"
format = "text"
[listeners.web]
protocol = "sctp"
bind = "127.0.0.1:8080"
pool = "web"
[pools.web]
algorithm = "random"
proxy_protocol = "v3"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[pools.web.health]
check = "ping"
`,
			want: `
t.toml:2: log.level: unknown level "trace" (want debug, info, warn or error)
t.toml:3: log.format: unknown format "text" (want json or console)
t.toml:5: listeners.web.protocol: unknown protocol "sctp" (want tcp or udp)
t.toml:9: pools.web.algorithm: unknown algorithm "random" (want round-robin, least-connections, ip-hash or maglev)
t.toml:10: pools.web.proxy_protocol: unknown proxy protocol "v3" (want none, v1 or v2)
t.toml:14: pools.web.health.check: unknown check "ping" (want tcp, http, tls, https, send-expect or none)
`,
		},
		{
			name: "bad CIDRs",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
allow = ["10.0.0.0/8", "10.0.0.0/33"]
deny = ["nope"]
accept_proxy_protocol = true
trusted_proxies = [5]
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:4: listeners.web.allow[1]: invalid CIDR "10.0.0.0/33"
t.toml:5: listeners.web.deny[0]: invalid CIDR "nope"
t.toml:7: listeners.web.trusted_proxies[0]: expected a CIDR string, got integer
`,
		},
		{
			name: "bad durations",
			src: `
shutdown_timeout = "-1s"
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
idle_timeout = 600
[pools.web]
connect_timeout = "0s"
slow_start = "1 minute"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[pools.web.health]
interval = "2x"
timeout = "0s"
`,
			want: `
t.toml:1: shutdown_timeout: negative duration "-1s"
t.toml:5: listeners.web.idle_timeout: expected a duration string such as "2s", got integer
t.toml:7: pools.web.connect_timeout: must be greater than 0, got "0s"
t.toml:8: pools.web.slow_start: invalid duration "1 minute"
t.toml:12: pools.web.health.interval: invalid duration "2x"
t.toml:13: pools.web.health.timeout: must be greater than 0, got "0s"
`,
		},
		{
			name: "interval zero",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[pools.web.health]
interval = "0s"
`,
			want: `
t.toml:7: pools.web.health.interval: must be greater than 0, got "0s"
`,
		},
		{
			name: "rise and fall below 1, port out of range",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[pools.web.health]
rise = 0
fall = -2
port = 70000
`,
			want: `
t.toml:7: pools.web.health.rise: must be at least 1, got 0
t.toml:8: pools.web.health.fall: must be at least 1, got -2
t.toml:9: pools.web.health.port: must be at most 65535, got 70000
`,
		},
		{
			name: "negative counts",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
max_connections = -1
max_connections_per_client = -1
connection_rate_per_client = -0.5
connection_burst_per_client = -1
[pools.web]
retries = -1
max_fails = -1
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:4: listeners.web.max_connections: must not be negative, got -1
t.toml:5: listeners.web.max_connections_per_client: must not be negative, got -1
t.toml:6: listeners.web.connection_rate_per_client: must be a number >= 0, got -0.5
t.toml:7: listeners.web.connection_burst_per_client: must not be negative, got -1
t.toml:9: pools.web.retries: must not be negative, got -1
t.toml:10: pools.web.max_fails: must not be negative, got -1
`,
		},
		{
			name: "fail_timeout zero with passive checks on",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[pools.web]
fail_timeout = "0s"
`,
			want: `
t.toml:7: pools.web.fail_timeout: must be greater than 0 when max_fails > 0 (max_fails = 0 turns passive checks off)
`,
		},
		{
			name: "http check with a bad path",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[pools.web.health]
check = "http"
path = "healthz"
`,
			want: `
t.toml:8: pools.web.health.path: must start with "/", got "healthz"
`,
		},
		{
			name: "http check with bad expect_status",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[pools.web.health]
check = "http"
expect_status = ["2xx", "600", "299-200", 99, true]
`,
			want: `
t.toml:8: pools.web.health.expect_status[1]: invalid status 600 (want codes 100-599, low-high)
t.toml:8: pools.web.health.expect_status[2]: invalid status 299-200 (want codes 100-599, low-high)
t.toml:8: pools.web.health.expect_status[3]: invalid status 99 (want codes 100-599, low-high)
t.toml:8: pools.web.health.expect_status[4]: expected a status such as 200, "2xx" or "200-299", got boolean
`,
		},
		{
			name: "http keys without http check",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[pools.web.health]
path = "/healthz"
expect_status = 200
send = "x"
`,
			want: `
t.toml:7: pools.web.health.path: only valid with check = "http" or "https"
t.toml:8: pools.web.health.expect_status: only valid with check = "http" or "https"
t.toml:9: pools.web.health.send: only valid with check = "send-expect"
`,
		},
		{
			name: "send-expect without expect",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[pools.web.health]
check = "send-expect"
send = "PING\r\n"
`,
			want: `
t.toml:6: pools.web.health.expect: required (non-empty) with check = "send-expect"
`,
		},
		{
			name: "send-expect with bad escapes",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[pools.web.health]
check = "send-expect"
send = 'PING\q'
expect = '\x4'
`,
			want: `
t.toml:8: pools.web.health.send: invalid escape \q (want \r, \n, \t, \\ or \xHH)
t.toml:9: pools.web.health.expect: invalid escape: \x needs two hex digits
`,
		},
		{
			name: "responses on tcp",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
responses = 1
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:4: listeners.web.responses: only valid with protocol = "udp" (0 = off is allowed)
`,
		},
		{
			name: "timeouts of the other protocol",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
unreplied_timeout = "5s"
[listeners.dns]
protocol = "udp"
bind = "127.0.0.1:5353"
pool = "web"
half_close_timeout = "5s"
unreplied_timeout = "0s"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:4: listeners.web.unreplied_timeout: only valid with protocol = "udp"
t.toml:9: listeners.dns.half_close_timeout: only valid with protocol = "tcp"
t.toml:10: listeners.dns.unreplied_timeout: must be greater than 0, got "0s"
`,
		},
		{
			name: "accept_proxy_protocol on udp",
			src: `
[listeners.dns]
protocol = "udp"
bind = "127.0.0.1:5353"
pool = "web"
accept_proxy_protocol = true
trusted_proxies = ["127.0.0.1"]
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:5: listeners.dns.accept_proxy_protocol: only valid with protocol = "tcp"
`,
		},
		{
			name: "accept_proxy_protocol without trusted_proxies",
			src: `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
accept_proxy_protocol = true
[listeners.web2]
bind = "127.0.0.1:8081"
pool = "web"
accept_proxy_protocol = true
trusted_proxies = []
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:4: listeners.web.trusted_proxies: required (non-empty) with accept_proxy_protocol = true: the peers allowed to send PROXY headers
t.toml:9: listeners.web2.trusted_proxies: required (non-empty) with accept_proxy_protocol = true: the peers allowed to send PROXY headers
`,
		},
		{
			name: "admin problems",
			src: `
[admin]
bind = "localhost:9900"
allow = []
token_file = ""
tls = true
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:2: admin.bind: invalid address "localhost:9900": host must be an IP address
t.toml:3: admin.allow: empty list would refuse every client; leave the key out for loopback only, or allow ["0.0.0.0/0", "::/0"] for everyone
t.toml:4: admin.token_file: must not be empty; leave the key out to need no token
t.toml:5: admin.tls: unknown key
`,
		},
		{
			name: "templates that render to nothing or to several addresses",
			src: `
[listeners.a]
bind = '{{ GetAllInterfaces | include "name" "^no-such-if$" | attr "address" }}:8080'
pool = "web"
[listeners.b]
bind = '{{ "127.0.0.1:80 127.0.0.2:80" }}'
pool = "web"
[listeners.c]
bind = "{{ nope }}:80"
pool = "web"
allow = ['{{ "" }}']
[[pools.web.backends]]
address = "127.0.0.1:9001"
`,
			want: `
t.toml:2: listeners.a.bind: invalid address ":8080": empty host (use 0.0.0.0 or [::] for every address) (rendered from '{{ GetAllInterfaces | include "name" "^no-such-if$" | attr "address" }}:8080')
t.toml:5: listeners.b.bind: template '{{ "127.0.0.1:80 127.0.0.2:80" }}' rendered to several addresses: "127.0.0.1:80 127.0.0.2:80"
t.toml:8: listeners.c.bind: invalid template: unable to parse template "{{ nope }}:80": template: sockaddr.Parse:1: function "nope" not defined
t.toml:10: listeners.c.allow[0]: template '{{ "" }}' rendered to nothing
`,
		},
		{
			name: "wrong table types",
			src: `
listeners = 5
log = "debug"
[pools]
web = "x"
`,
			want: `
t.toml:1: listeners: expected a table, got integer
t.toml:2: log: expected a table, got string
t.toml:4: pools.web: expected a table, got string
`,
		},
		{
			name: "multiple errors across the file, sorted by line",
			src: `
shutdown_timeout = "soon"
[log]
level = "loud"
[listeners.web]
bind = "127.0.0.1:8080"
pool = "api"
extra = 1
[pools.web]
algorithm = "fastest"
[[pools.web.backends]]
address = "127.0.0.1:9001"
weight = -5
[pools.web.health]
interval = "2x"
rise = 0
`,
			want: `
t.toml:1: shutdown_timeout: invalid duration "soon"
t.toml:3: log.level: unknown level "loud" (want debug, info, warn or error)
t.toml:6: listeners.web.pool: unknown pool "api"
t.toml:7: listeners.web.extra: unknown key
t.toml:9: pools.web.algorithm: unknown algorithm "fastest" (want round-robin, least-connections, ip-hash or maglev)
t.toml:12: pools.web.backends[0].weight: must not be negative, got -5
t.toml:14: pools.web.health.interval: invalid duration "2x"
t.toml:15: pools.web.health.rise: must be at least 1, got 0
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parse(tt.src)
			if err == nil {
				t.Fatalf("Parse succeeded (%+v), want errors:\n%s", cfg, tt.want)
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is %T, want config.Errors: %v", err, err)
			}
			want := strings.TrimSpace(tt.want)
			if got := err.Error(); got != want {
				t.Errorf("errors:\n got: %s\nwant: %s", strings.ReplaceAll(got, "\n", "\n      "), strings.ReplaceAll(want, "\n", "\n      "))
			}
		})
	}
}

// TestDefaults checks that a minimal file gets every default of the SPEC.
func TestDefaults(t *testing.T) {
	cfg := mustParse(t, `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"

[listeners.dns]
protocol = "udp"
bind = "127.0.0.1:5353"
pool = "dns"

[[pools.web.backends]]
address = "127.0.0.1:9001"

[[pools.dns.backends]]
address = "127.0.0.1:5301"

[[pools.spare.backends]]
address = "127.0.0.1:9009"
`)
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	want := &Config{
		File:            "t.toml",
		ShutdownTimeout: 30 * time.Second,
		Log:             Log{Level: "info", Format: "json", Access: true},
		Admin:           nil, // no [admin] table: admin API disabled
		Listeners: []*Listener{
			{
				Name: "dns", Protocol: "udp", Bind: "127.0.0.1:5353", BindTemplate: "127.0.0.1:5353", Pool: "dns",
				IdleTimeout: 10 * time.Minute, UnrepliedTimeout: 30 * time.Second, ProxyProtocolTimeout: 5 * time.Second,
			},
			{
				Name: "web", Protocol: "tcp", Bind: "127.0.0.1:8080", BindTemplate: "127.0.0.1:8080", Pool: "web",
				IdleTimeout: 10 * time.Minute, UnrepliedTimeout: 30 * time.Second, ProxyProtocolTimeout: 5 * time.Second,
			},
		},
		Pools: map[string]*Pool{
			"web":   defaultPool("web", "tcp", "127.0.0.1:9001", "tcp"),
			"dns":   defaultPool("dns", "udp", "127.0.0.1:5301", "none"),
			"spare": defaultPool("spare", "tcp", "127.0.0.1:9009", "tcp"), // unused pools are fine
		},
		backendLines: map[string][]int{"web": {11}, "dns": {14}, "spare": {17}},
	}
	cfg.Digest = [32]byte{} // the file's hash: TestDigest
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("defaults:\n got: %s\nwant: %s", dump(cfg), dump(want))
	}

	// An empty [admin] table enables the API with its defaults.
	cfg = mustParse(t, `
[admin]
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`)
	wantAdmin := &Admin{Bind: "127.0.0.1:9900", Allow: loopback}
	if !reflect.DeepEqual(cfg.Admin, wantAdmin) {
		t.Errorf("admin defaults: got %+v, want %+v", cfg.Admin, wantAdmin)
	}
}

func defaultPool(name, proto, backend, check string) *Pool {
	return &Pool{
		Name: name, Algorithm: "round-robin", Protocol: proto,
		ConnectTimeout: 3 * time.Second, Retries: 2, ProxyProtocol: "none",
		MaxFails: 1, FailTimeout: 10 * time.Second, SlowStart: 0,
		Backends: []Backend{{Address: backend, Weight: 1, Backup: false}},
		Health: Health{
			Check: check, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3, Port: 0,
			Path: "/", ExpectStatus: []StatusRange{{200, 200}},
		},
	}
}

func dump(cfg *Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%+v", *cfg)
	if cfg.Admin != nil {
		fmt.Fprintf(&b, "\n  admin %+v", *cfg.Admin)
	}
	for _, l := range cfg.Listeners {
		fmt.Fprintf(&b, "\n  listener %+v", *l)
	}
	for _, p := range cfg.Pools {
		fmt.Fprintf(&b, "\n  pool %+v", *p)
	}
	return b.String()
}

// TestParseValues checks that every key lands in its field, in each of the
// forms the file may use.
func TestParseValues(t *testing.T) {
	cfg := mustParse(t, `
shutdown_timeout = "0s"
[log]
level = "debug"
format = "console"
access = false
[admin]
bind = "[::1]:9901"
allow = ["10.0.0.0/8", "192.168.1.7", "::ffff:172.16.0.0/108"]
token_file = "/etc/lbctl/token"

[listeners.web]
protocol = "tcp"
bind = "0.0.0.0:53"
pool = "web"
max_connections = 100
idle_timeout = "1m30s"
allow = ["10.1.2.3/8"]
deny = ["10.0.13.0/24", "2001:db8::1"]
max_connections_per_client = 5
connection_rate_per_client = 0.5
connection_burst_per_client = 3
accept_proxy_protocol = true
trusted_proxies = ["10.0.0.5/32"]
proxy_protocol_timeout = "250ms"
half_close_timeout = "15s"

[listeners.dns] # a udp listener may share a tcp listener's port
protocol = "udp"
bind = "0.0.0.0:53"
pool = "dns"
responses = 1
unreplied_timeout = "5s"

[pools.web]
algorithm = "least-connections"
connect_timeout = "500ms"
retries = 0
proxy_protocol = "v2"
max_fails = 0
fail_timeout = "0s"
slow_start = "30s"
backends = [
  { address = "10.0.0.11:80", weight = 3 },
  { address = "[2001:db8::12]:80", weight = 0, backup = true },
  { address = "web-3.internal:80" },
]
health = { check = "http", path = "/healthz", host = "example.com", expect_status = ["2xx", 301, "400-404"], port = 8081, rise = 1, fall = 1, interval = "5s", timeout = "2s" }

[pools.dns]
algorithm = "ip-hash"
[[pools.dns.backends]]
address = "10.0.0.21:53"
[pools.dns.health]
check = "send-expect"
send = 'PING\r\n\x00\xff\\'
expect = "+PONG\r\n\\x01"
`)
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	if cfg.ShutdownTimeout != 0 || cfg.Log != (Log{Level: "debug", Format: "console", Access: false}) {
		t.Errorf("shutdown_timeout %v, log %+v", cfg.ShutdownTimeout, cfg.Log)
	}
	wantAdmin := &Admin{
		Bind:      "[::1]:9901",
		Allow:     pfx("10.0.0.0/8", "192.168.1.7/32", "172.16.0.0/12"),
		TokenFile: "/etc/lbctl/token",
	}
	if !reflect.DeepEqual(cfg.Admin, wantAdmin) {
		t.Errorf("admin: got %+v, want %+v", cfg.Admin, wantAdmin)
	}
	wantListeners := []*Listener{
		{
			Name: "dns", Protocol: "udp", Bind: "0.0.0.0:53", BindTemplate: "0.0.0.0:53", Pool: "dns",
			IdleTimeout: 10 * time.Minute, UnrepliedTimeout: 5 * time.Second, ProxyProtocolTimeout: 5 * time.Second, Responses: 1,
		},
		{
			Name: "web", Protocol: "tcp", Bind: "0.0.0.0:53", BindTemplate: "0.0.0.0:53", Pool: "web",
			MaxConnections: 100, IdleTimeout: 90 * time.Second, HalfCloseTimeout: 15 * time.Second, UnrepliedTimeout: 30 * time.Second,
			Allow: pfx("10.0.0.0/8"), Deny: pfx("10.0.13.0/24", "2001:db8::1/128"),
			MaxConnectionsPerClient: 5, ConnectionRatePerClient: 0.5, ConnectionBurstPerClient: 3,
			AcceptProxyProtocol: true, TrustedProxies: pfx("10.0.0.5/32"), ProxyProtocolTimeout: 250 * time.Millisecond,
		},
	}
	if !reflect.DeepEqual(cfg.Listeners, wantListeners) {
		t.Errorf("listeners:\n got: %s", dump(cfg))
	}
	wantWeb := &Pool{
		Name: "web", Algorithm: "least-connections", Protocol: "tcp",
		ConnectTimeout: 500 * time.Millisecond, Retries: 0, ProxyProtocol: "v2",
		MaxFails: 0, FailTimeout: 0, SlowStart: 30 * time.Second,
		Backends: []Backend{
			{Address: "10.0.0.11:80", Weight: 3},
			{Address: "[2001:db8::12]:80", Weight: 0, Backup: true},
			{Address: "web-3.internal:80", Weight: 1},
		},
		Health: Health{
			Check: "http", Interval: 5 * time.Second, Timeout: 2 * time.Second, Rise: 1, Fall: 1, Port: 8081,
			Path: "/healthz", Host: "example.com",
			ExpectStatus: []StatusRange{{200, 299}, {301, 301}, {400, 404}},
		},
	}
	if !reflect.DeepEqual(cfg.Pools["web"], wantWeb) {
		t.Errorf("pool web:\n got: %+v\nwant: %+v", *cfg.Pools["web"], *wantWeb)
	}
	dns := cfg.Pools["dns"]
	if dns.Protocol != "udp" || dns.Algorithm != "ip-hash" || dns.Health.Check != "send-expect" {
		t.Errorf("pool dns: %+v", *dns)
	}
	if want := []byte("PING\r\n\x00\xff\\"); string(dns.Health.Send) != string(want) {
		t.Errorf("send: got %q, want %q", dns.Health.Send, want)
	}
	if want := []byte("+PONG\r\n\x01"); string(dns.Health.Expect) != string(want) {
		t.Errorf("expect: got %q, want %q", dns.Health.Expect, want)
	}
}

func TestStatusOK(t *testing.T) {
	h := Health{ExpectStatus: []StatusRange{{200, 299}, {301, 301}}}
	for code, want := range map[int]bool{199: false, 200: true, 204: true, 299: true, 300: false, 301: true, 302: false, 500: false} {
		if got := h.StatusOK(code); got != want {
			t.Errorf("StatusOK(%d) = %v, want %v", code, got, want)
		}
	}
	cfg := mustParse(t, `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[pools.web.health]
check = "http"
expect_status = "3xx"
`)
	if h := cfg.Pools["web"].Health; h.StatusOK(200) || !h.StatusOK(302) {
		t.Errorf(`expect_status = "3xx": got ranges %v`, h.ExpectStatus)
	}
}

func TestMatch(t *testing.T) {
	prefixes := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	tests := []struct {
		addr string
		want bool
	}{
		{"10.1.2.3", true},
		{"::ffff:10.1.2.3", true}, // IPv4 client on a dual-stack socket
		{"11.0.0.1", false},
		{"::ffff:11.0.0.1", false},
		{"2001:db8::5", true},
		{"fe80::1%eth0", false},
		{"2001:db8::5%eth0", true}, // zones are ignored
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			if got := Match(prefixes, netip.MustParseAddr(tt.addr)); got != tt.want {
				t.Errorf("Match(%s) = %v, want %v", tt.addr, got, tt.want)
			}
		})
	}
	if Match(nil, netip.MustParseAddr("10.0.0.1")) {
		t.Error("Match(nil) = true, want false")
	}
}

// TestTemplates renders go-sockaddr templates in binds and CIDR lists.
// It needs the Linux loopback interface "lo" with 127.0.0.1.
func TestTemplates(t *testing.T) {
	if _, err := os.Stat("/sys/class/net/lo"); err != nil {
		t.Skip("no loopback interface named lo")
	}
	const bindTmpl = `{{ GetAllInterfaces | include "name" "^lo$" | include "type" "IPv4" | attr "address" }}:8080`
	cfg := mustParse(t, `
[admin]
bind = '{{ GetAllInterfaces | include "name" "^lo$" | include "type" "IPv4" | attr "address" }}:9900'
allow = ['{{ GetAllInterfaces | include "name" "^lo$" | include "type" "IPv4" | join "string" " " }}']

[listeners.web]
bind = '`+bindTmpl+`'
pool = "web"
allow = ['{{ GetAllInterfaces | include "name" "^lo$" | include "type" "IPv4" | attr "address" }}', "10.0.0.0/8"]
deny = ['{{ "192.168.0.0/16 192.168.1.1" }}']

[[pools.web.backends]]
address = "127.0.0.1:9001"
`)
	l := cfg.Listeners[0]
	if l.Bind != "127.0.0.1:8080" || l.BindTemplate != bindTmpl {
		t.Errorf("bind: got %q from %q", l.Bind, l.BindTemplate)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8")}; !reflect.DeepEqual(l.Allow, want) {
		t.Errorf("allow: got %v, want %v", l.Allow, want)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("192.168.1.1/32")}; !reflect.DeepEqual(l.Deny, want) {
		t.Errorf("deny: got %v, want %v", l.Deny, want)
	}
	if cfg.Admin.Bind != "127.0.0.1:9900" {
		t.Errorf("admin bind: got %q", cfg.Admin.Bind)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}; !reflect.DeepEqual(cfg.Admin.Allow, want) {
		t.Errorf("admin allow: got %v, want %v", cfg.Admin.Allow, want)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(filepath.Join(dir, "missing.toml"))
	var errs Errors
	if err == nil || errors.As(err, &errs) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing): got %v, want a plain error wrapping os.ErrNotExist", err)
	}

	path := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(path, []byte("[listeners.web]\nbind = \"127.0.0.1:8080\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(path)
	if !errors.As(err, &errs) {
		t.Fatalf("Load(bad): got %v, want Errors", err)
	}
	want := path + ":1: listeners.web.pool: required: the pool that serves this listener"
	if len(errs) != 1 || errs[0].Error() != want {
		t.Errorf("Load(bad):\n got: %v\nwant: %s", err, want)
	}
	if errs[0].File != path || errs[0].Line != 1 || errs[0].Key != "listeners.web.pool" {
		t.Errorf("Load(bad): fields %+v", *errs[0])
	}
}

func TestErrorText(t *testing.T) {
	tests := []struct {
		err  *Error
		want string
	}{
		{&Error{File: "a.toml", Line: 3, Key: "log.level", Msg: "bad"}, "a.toml:3: log.level: bad"},
		{&Error{File: "a.toml", Key: "listeners", Msg: "missing"}, "a.toml: listeners: missing"},
		{&Error{File: "a.toml", Line: 7, Msg: "invalid TOML: x"}, "a.toml:7: invalid TOML: x"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
	}
	errs := Errors{{File: "f", Line: 0, Msg: "c"}, {File: "f", Line: 9, Msg: "b"}, {File: "f", Line: 2, Msg: "a"}}
	sortErrors(errs)
	if got, want := errs.Error(), "f:2: a\nf:9: b\nf: c"; got != want {
		t.Errorf("sorted Errors:\n got %q\nwant %q", got, want)
	}
}

// TestBindPortZero: port 0 asks for any free port, as tests do; several
// such binds do not conflict.
func TestBindPortZero(t *testing.T) {
	cfg := mustParse(t, `
[admin]
bind = "127.0.0.1:0"
[listeners.a]
bind = "127.0.0.1:0"
pool = "p"
[listeners.b]
bind = "127.0.0.1:0"
pool = "p"
[[pools.p.backends]]
address = "127.0.0.1:9001"
`)
	if cfg.Admin.Bind != "127.0.0.1:0" || cfg.Listeners[0].Bind != "127.0.0.1:0" || cfg.Listeners[1].Bind != "127.0.0.1:0" {
		t.Errorf("binds: %s", dump(cfg))
	}
	_, err := parse(`
[listeners.a]
bind = "127.0.0.1:8080"
pool = "p"
[[pools.p.backends]]
address = "127.0.0.1:0"
`)
	if want := `t.toml:5: pools.p.backends[0].address: invalid address "127.0.0.1:0": port must be 1-65535`; err == nil || err.Error() != want {
		t.Errorf("backend port 0:\n got: %v\nwant: %s", err, want)
	}
}
