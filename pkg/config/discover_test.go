package config

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// listenerWeb is a listener for the pool "web": lines 1-3 of every source
// below, so the pool starts at line 4.
const listenerWeb = `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
`

// TestParseDiscoverErrors is the catalogue of invalid state_file,
// drain_timeout and [[pools.NAME.discover]] entries, in the style of
// TestParseErrors: exact text, file, line and key path.
func TestParseDiscoverErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string // appended to listenerWeb; its first line is line 4
		want string
	}{
		{
			name: "type missing or unknown",
			src: `
[[pools.web.discover]]
name = "web.internal"
[[pools.web.discover]]
type = "consul"
[[pools.web.discover]]
type = 5
`,
			want: `
t.toml:4: pools.web.discover[0].type: required: the kind of source (dns, srv, file or etcd)
t.toml:7: pools.web.discover[1].type: unknown type "consul" (want dns, srv, file or etcd)
t.toml:9: pools.web.discover[2].type: expected a string, got integer
`,
		},
		{
			name: "dns needs name and port",
			src: `
[[pools.web.discover]]
type = "dns"
`,
			want: `
t.toml:4: pools.web.discover[0].name: required with type = "dns": the host name whose A and AAAA records are the backends
t.toml:4: pools.web.discover[0].port: required with type = "dns": the port of every address found
`,
		},
		{
			name: "dns values",
			src: `
[[pools.web.discover]]
type = "dns"
name = "web.internal:80"
port = 0
weight = 1000001
interval = "0s"
[[pools.web.discover]]
type = "dns"
name = "10.0.0.1"
port = 65536
weight = -1
interval = "-5s"
backup = "yes"
[[pools.web.discover]]
type = "dns"
name = "web..internal"
port = "80"
interval = "5"
`,
			want: `
t.toml:6: pools.web.discover[0].name: invalid name "web.internal:80": a host name without port (the port goes in port)
t.toml:7: pools.web.discover[0].port: must be at least 1, got 0
t.toml:8: pools.web.discover[0].weight: must be at most 1000000, got 1000001
t.toml:9: pools.web.discover[0].interval: must be greater than 0, got "0s"
t.toml:12: pools.web.discover[1].name: "10.0.0.1" is an IP address, not a name to resolve (list it under backends instead)
t.toml:13: pools.web.discover[1].port: must be at most 65535, got 65536
t.toml:14: pools.web.discover[1].weight: must not be negative, got -1
t.toml:15: pools.web.discover[1].interval: negative duration "-5s"
t.toml:16: pools.web.discover[1].backup: expected a boolean, got string
t.toml:19: pools.web.discover[2].name: invalid name "web..internal": want a host name such as "web.internal"
t.toml:20: pools.web.discover[2].port: expected an integer, got string
t.toml:21: pools.web.discover[2].interval: invalid duration "5"
`,
		},
		{
			name: "resolver",
			src: `
[[pools.web.discover]]
type = "dns"
name = "a.internal"
port = 80
resolver = "ns1.internal:53"
[[pools.web.discover]]
type = "srv"
name = "_b._tcp.internal"
resolver = "127.0.0.1:0"
[[pools.web.discover]]
type = "srv"
name = "_c._tcp.internal"
resolver = "[::1]"
[[pools.web.discover]]
type = "srv"
name = "_d._tcp.internal"
resolver = ""
`,
			want: `
t.toml:8: pools.web.discover[0].resolver: invalid resolver "ns1.internal:53": host must be an IP address
t.toml:12: pools.web.discover[1].resolver: invalid resolver "127.0.0.1:0": port must be 1-65535
t.toml:16: pools.web.discover[2].resolver: invalid resolver "[::1]": want IP or IP:port, such as "127.0.0.1:53" or "[::1]:53"
t.toml:20: pools.web.discover[3].resolver: invalid resolver "": want IP or IP:port, such as "127.0.0.1:53" or "[::1]:53"
`,
		},
		{
			name: "srv takes no port, weight or backup",
			src: `
[[pools.web.discover]]
type = "srv"
port = 80
weight = 2
backup = true
`,
			want: `
t.toml:4: pools.web.discover[0].name: required with type = "srv": the SRV record name, such as "_web._tcp.internal"
t.toml:6: pools.web.discover[0].port: only valid with type = "dns": SRV records carry the port, weight and priority of each target
t.toml:7: pools.web.discover[0].weight: only valid with type = "dns": SRV records carry the port, weight and priority of each target
t.toml:8: pools.web.discover[0].backup: only valid with type = "dns": SRV records carry the port, weight and priority of each target
`,
		},
		{
			name: "keys of another type name the types they belong to",
			src: `
[[pools.web.discover]]
type = "file"
path = "web.json"
name = "web.internal"
port = 80
resolver = "127.0.0.1"
interval = "1s"
prefix = "/web/"
[[pools.web.discover]]
type = "dns"
name = "web.internal"
port = 80
path = "web.json"
endpoints = ["http://127.0.0.1:2379"]
`,
			want: `
t.toml:7: pools.web.discover[0].name: only valid with type = "dns" or "srv"
t.toml:8: pools.web.discover[0].port: only valid with type = "dns"
t.toml:9: pools.web.discover[0].resolver: only valid with type = "dns" or "srv"
t.toml:10: pools.web.discover[0].interval: only valid with type = "dns" or "srv"
t.toml:11: pools.web.discover[0].prefix: only valid with type = "etcd"
t.toml:16: pools.web.discover[1].path: only valid with type = "file"
t.toml:17: pools.web.discover[1].endpoints: only valid with type = "etcd"
`,
		},
		{
			name: "file needs a non-empty path",
			src: `
[[pools.web.discover]]
type = "file"
[[pools.web.discover]]
type = "file"
path = " "
`,
			want: `
t.toml:4: pools.web.discover[0].path: required with type = "file": the JSON file that lists the backends
t.toml:8: pools.web.discover[1].path: must not be empty
`,
		},
		{
			name: "etcd needs endpoints and prefix",
			src: `
[[pools.web.discover]]
type = "etcd"
[[pools.web.discover]]
type = "etcd"
endpoints = []
prefix = ""
[[pools.web.discover]]
type = "etcd"
endpoints = "http://127.0.0.1:2379"
prefix = 1
`,
			want: `
t.toml:4: pools.web.discover[0].endpoints: required with type = "etcd": the etcd URLs, such as ["http://127.0.0.1:2379"]
t.toml:4: pools.web.discover[0].prefix: required with type = "etcd": the key prefix whose keys are the backends
t.toml:8: pools.web.discover[1].endpoints: must list at least one etcd URL, such as "http://127.0.0.1:2379"
t.toml:9: pools.web.discover[1].prefix: must not be empty (it would take every key of the etcd cluster)
t.toml:12: pools.web.discover[2].endpoints: expected an array, got string
t.toml:13: pools.web.discover[2].prefix: expected a string, got integer
`,
		},
		{
			name: "etcd endpoints",
			src: `
[[pools.web.discover]]
type = "etcd"
prefix = "/web/"
endpoints = [
  "127.0.0.1:2379",
  "http://127.0.0.1",
  "unix:///run/etcd.sock",
  "http://127.0.0.1:2379/v3",
  "http://user@127.0.0.1:2379",
  "http://bad_host!:2379",
  "https://[::1]:0",
  2379,
]
`,
			want: `
t.toml:8: pools.web.discover[0].endpoints[0]: invalid endpoint "127.0.0.1:2379": want http://host:port or https://host:port
t.toml:9: pools.web.discover[0].endpoints[1]: invalid endpoint "http://127.0.0.1": the port is required (http://127.0.0.1:2379)
t.toml:10: pools.web.discover[0].endpoints[2]: invalid endpoint "unix:///run/etcd.sock": want http://host:port or https://host:port
t.toml:11: pools.web.discover[0].endpoints[3]: invalid endpoint "http://127.0.0.1:2379/v3": want only scheme, host and port (http://127.0.0.1:2379)
t.toml:12: pools.web.discover[0].endpoints[4]: invalid endpoint "http://user@127.0.0.1:2379": want only scheme, host and port (http://127.0.0.1:2379)
t.toml:13: pools.web.discover[0].endpoints[5]: invalid endpoint "http://bad_host!:2379": host is neither an IP address nor a host name
t.toml:14: pools.web.discover[0].endpoints[6]: invalid endpoint "https://[::1]:0": port must be 1-65535
t.toml:15: pools.web.discover[0].endpoints[7]: expected a URL string, got integer
`,
		},
		{
			name: "duplicate sources",
			src: `
[[pools.web.discover]]
type = "dns"
name = "web.internal"
port = 80
[[pools.web.discover]]
type = "dns"
name = "Web.Internal."
port = 8080
[[pools.web.discover]]
type = "srv"
name = "web.internal"
[[pools.web.discover]]
type = "file"
path = "web.json"
[[pools.web.discover]]
type = "file"
path = "./sub/../web.json"
[[pools.web.discover]]
type = "etcd"
endpoints = ["http://127.0.0.1:2379"]
prefix = "/web/"
[[pools.web.discover]]
type = "etcd"
endpoints = ["http://127.0.0.2:2379"]
prefix = "/web/"
`,
			want: `
t.toml:10: pools.web.discover[1].name: duplicate source "dns:Web.Internal." (first at pools.web.discover[0], line 6)
t.toml:20: pools.web.discover[4].path: duplicate source "file:web.json" (first at pools.web.discover[3], line 17)
t.toml:28: pools.web.discover[6].prefix: duplicate source "etcd:/web/" (first at pools.web.discover[5], line 24)
`,
		},
		{
			name: "unknown key in a discover entry",
			src: `
[[pools.web.discover]]
type = "dns"
name = "web.internal"
port = 80
intreval = "1s"
`,
			want: `
t.toml:8: pools.web.discover[0].intreval: unknown key (did you mean "interval"?)
`,
		},
		{
			name: "inline entries",
			src: `
[pools.web]
discover = [
  { type = "dns", name = "web.internal" },
  { type = "file", path = "a.json" },
  "dns",
]
`,
			want: `
t.toml:6: pools.web.discover[0].port: required with type = "dns": the port of every address found
t.toml:8: pools.web.discover[2]: expected a table, got string
`,
		},
		{
			name: "a pool needs a backend or a source",
			src: `
[pools.web]
discover = []
[pools.api]
discover = "dns"
`,
			want: `
t.toml:4: pools.web.backends: a pool needs at least one backend or a discover source
t.toml:7: pools.api.discover: expected an array of tables, got string
`,
		},
		{
			name: "state_file and drain_timeout",
			src: `
[pools.web]
drain_timeout = "forever"
[[pools.web.backends]]
address = "127.0.0.1:9001"
[pools.api]
drain_timeout = "-1s"
[[pools.api.backends]]
address = "127.0.0.1:9002"
[pools.db]
drain_timeout = 30
[[pools.db.backends]]
address = "127.0.0.1:9003"
`,
			want: `
t.toml:5: pools.web.drain_timeout: invalid duration "forever"
t.toml:9: pools.api.drain_timeout: negative duration "-1s"
t.toml:13: pools.db.drain_timeout: expected a duration string such as "2s", got integer
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErrors(t, listenerWeb+strings.TrimPrefix(tt.src, "\n"), tt.want)
		})
	}

	// state_file stands at the top level, before any table.
	for _, tt := range []struct{ src, want string }{
		{`state_file = " "`, `t.toml:1: state_file: must not be blank; write "" (or leave the key out) for no state file`},
		{`state_file = false`, `t.toml:1: state_file: expected a string, got boolean`},
	} {
		checkErrors(t, tt.src+listenerWeb+"[[pools.web.backends]]\naddress = \"127.0.0.1:9001\"\n", tt.want)
	}
}

// checkErrors parses src and compares the errors with want.
func checkErrors(t *testing.T, src, want string) {
	t.Helper()
	cfg, err := parse(src)
	if err == nil {
		t.Fatalf("Parse succeeded (%s), want errors:\n%s", dump(cfg), want)
	}
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error is %T, want config.Errors: %v", err, err)
	}
	want = strings.TrimSpace(want)
	if got := err.Error(); got != want {
		t.Errorf("errors:\n got: %s\nwant: %s", strings.ReplaceAll(got, "\n", "\n      "), strings.ReplaceAll(want, "\n", "\n      "))
	}
}

// TestParseDiscoverDefaults: what an entry gets when it sets only what
// its type requires, and that a pool may have sources and no backends.
func TestParseDiscoverDefaults(t *testing.T) {
	cfg := mustParse(t, listenerWeb+`
[[pools.web.discover]]
type = "dns"
name = "web.internal"
port = 8080

[[pools.web.discover]]
type = "srv"
name = "_web._tcp.internal"

[[pools.web.discover]]
type = "file"
path = "/etc/lbctl/web.json"

[[pools.web.discover]]
type = "etcd"
endpoints = ["http://127.0.0.1:2379"]
prefix = "/lbctl/web/"
`)
	if cfg.StateFile != "" {
		t.Errorf("state_file: got %q, want \"\" (off)", cfg.StateFile)
	}
	p := cfg.Pools["web"]
	if p.DrainTimeout != 0 || len(p.Backends) != 0 {
		t.Errorf("drain_timeout %v (want 0), backends %v (want none)", p.DrainTimeout, p.Backends)
	}
	want := []Discover{
		{Type: "dns", Name: "web.internal", Port: 8080, Weight: 1, Interval: 5 * time.Second, Line: 6},
		{Type: "srv", Name: "_web._tcp.internal", Interval: 5 * time.Second, Line: 11},
		{Type: "file", Path: "/etc/lbctl/web.json", Line: 15},
		{Type: "etcd", Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "/lbctl/web/", Line: 19},
	}
	if !reflect.DeepEqual(p.Discover, want) {
		t.Errorf("discover:\n got: %+v\nwant: %+v", p.Discover, want)
	}
	var sources []string
	for _, d := range p.Discover {
		sources = append(sources, d.Source())
	}
	if got, want := strings.Join(sources, " "), "dns:web.internal srv:_web._tcp.internal file:/etc/lbctl/web.json etcd:/lbctl/web/"; got != want {
		t.Errorf("Source(): got %s, want %s", got, want)
	}
}

// TestParseDiscoverValues checks that every key lands in its field, in
// [[tables]] and inline form, and how paths and resolvers are normalised.
func TestParseDiscoverValues(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "conf", "lbctl.toml")
	src := `state_file = "state/lbctl.json"` + listenerWeb + `
[pools.web]
drain_timeout = "1m30s"
[[pools.web.backends]]
address = "127.0.0.1:9001"

[[pools.web.discover]]
type = "srv"
name = "_web._tcp.internal"
resolver = "::1"
interval = "1m"

[[pools.web.discover]]
type = "file"
path = "backends/web.json"

[[pools.web.discover]]
type = "file"
path = "/var/lib/../lib/lbctl/web.json"

[[pools.web.discover]]
type = "etcd"
endpoints = ["http://127.0.0.1:2379", "https://[::1]:2379/", "http://etcd-1.internal:2379"]
prefix = "/lbctl/web/"

[pools.api]
discover = [
  { type = "dns", name = "api.internal.", port = 65535, weight = 1000000, backup = true, resolver = "127.0.0.1", interval = "250ms" },
  { type = "dns", name = "api-2.internal", port = 1, weight = 0, resolver = "[::1]:5353" },
]
`
	cfg, err := Parse(file, []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "conf", "state", "lbctl.json"); cfg.StateFile != want {
		t.Errorf("state_file: got %q, want %q (relative to the config file's directory)", cfg.StateFile, want)
	}
	p := cfg.Pools["web"]
	if p.DrainTimeout != 90*time.Second {
		t.Errorf("drain_timeout: got %v", p.DrainTimeout)
	}
	if want := []Backend{{Address: "127.0.0.1:9001", Weight: 1}}; !reflect.DeepEqual(p.Backends, want) {
		t.Errorf("backends: got %+v", p.Backends)
	}
	want := []Discover{
		{Type: "srv", Name: "_web._tcp.internal", Resolver: "[::1]:53", Interval: time.Minute, Line: 12},
		{Type: "file", Path: filepath.Join(dir, "conf", "backends", "web.json"), Line: 18},
		{Type: "file", Path: "/var/lib/lbctl/web.json", Line: 22},
		{Type: "etcd", Endpoints: []string{"http://127.0.0.1:2379", "https://[::1]:2379", "http://etcd-1.internal:2379"}, Prefix: "/lbctl/web/", Line: 26},
	}
	wantAPI := []Discover{
		{Type: "dns", Name: "api.internal.", Port: 65535, Weight: 1000000, Backup: true, Resolver: "127.0.0.1:53", Interval: 250 * time.Millisecond, Line: 32},
		{Type: "dns", Name: "api-2.internal", Port: 1, Weight: 0, Resolver: "[::1]:5353", Interval: 5 * time.Second, Line: 33},
	}
	for _, c := range []struct {
		pool string
		want []Discover
	}{{"web", want}, {"api", wantAPI}} {
		got := cfg.Pools[c.pool].Discover
		if len(got) != len(c.want) {
			t.Errorf("pool %s: got %d discover entries, want %d: %+v", c.pool, len(got), len(c.want), got)
			continue
		}
		for i := range c.want {
			if !reflect.DeepEqual(got[i], c.want[i]) {
				t.Errorf("pools.%s.discover[%d]:\n got: %+v\nwant: %+v", c.pool, i, got[i], c.want[i])
			}
		}
	}
	if api := cfg.Pools["api"]; len(api.Backends) != 0 || api.DrainTimeout != 0 {
		t.Errorf("pool api: backends %v, drain_timeout %v", api.Backends, api.DrainTimeout)
	}

	// An absolute state_file stays as written (cleaned).
	cfg = mustParse(t, `state_file = "/var/lib/lbctl//state.json"`+listenerWeb+"[[pools.web.backends]]\naddress = \"127.0.0.1:9001\"\n")
	if cfg.StateFile != "/var/lib/lbctl/state.json" {
		t.Errorf("state_file: got %q", cfg.StateFile)
	}
	cfg = mustParse(t, `state_file = ""`+listenerWeb+"[[pools.web.backends]]\naddress = \"127.0.0.1:9001\"\n")
	if cfg.StateFile != "" {
		t.Errorf(`state_file = "": got %q, want "" (off)`, cfg.StateFile)
	}
}

// fakeLookup answers from a table; a host it does not know is NXDOMAIN.
type fakeLookup struct {
	answers map[string][]netip.Addr
	asked   map[string]int
}

func (f *fakeLookup) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if _, ok := ctx.Deadline(); !ok {
		return nil, errors.New("no deadline")
	}
	f.asked[host]++
	if a, ok := f.answers[host]; ok {
		return a, nil
	}
	return nil, fmt.Errorf("lookup %s on 127.0.0.1:53: no such host", host)
}

func TestResolveBackends(t *testing.T) {
	ips := func(ss ...string) []netip.Addr {
		out := []netip.Addr{}
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	f := &fakeLookup{asked: map[string]int{}, answers: map[string][]netip.Addr{
		"web-1.internal":  ips("10.0.0.1"),
		"web-2.internal":  ips("2001:db8::2", "10.0.0.2", "10.0.0.3"), // IPv4 preferred, first one
		"v6.internal":     ips("2001:db8::6", "2001:db8::7"),
		"mapped.internal": ips("::ffff:10.0.0.9"),
		"empty.internal":  ips(),
	}}

	cfg := mustParse(t, listenerWeb+`
[[pools.web.backends]]
address = "web-1.internal:80"
[[pools.web.backends]]
address = "web-2.internal:80"
[[pools.web.backends]]
address = "10.0.0.5:80"
[[pools.web.backends]]
address = "[2001:db8::5]:80"
[[pools.api.backends]]
address = "web-1.internal:8080"
[[pools.api.backends]]
address = "v6.internal:8080"
[[pools.api.backends]]
address = "mapped.internal:8080"
[[pools.api.discover]]
type = "dns"
name = "not-asked.internal"
port = 80
`)
	got, err := ResolveBackends(cfg, f.lookup)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"web-1.internal:80":    "10.0.0.1:80",
		"web-2.internal:80":    "10.0.0.2:80",
		"10.0.0.5:80":          "10.0.0.5:80",
		"[2001:db8::5]:80":     "[2001:db8::5]:80",
		"web-1.internal:8080":  "10.0.0.1:8080",
		"v6.internal:8080":     "[2001:db8::6]:8080",
		"mapped.internal:8080": "10.0.0.9:8080",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ResolveBackends:\n got: %v\nwant: %v", got, want)
	}
	if want := map[string]int{"web-1.internal": 1, "web-2.internal": 1, "v6.internal": 1, "mapped.internal": 1}; !reflect.DeepEqual(f.asked, want) {
		t.Errorf("lookups: got %v, want each static host once and no discover name", f.asked)
	}

	// Every failure is reported, each with its own line and key path.
	cfg = mustParse(t, listenerWeb+`
[[pools.web.backends]]
address = "web-1.internal:80"
[[pools.web.backends]]
address = "gone.internal:80"
[[pools.web.backends]]
address = "empty.internal:80"
[pools."a b"]
[[pools."a b".backends]]
address = "gone.internal:81"
`)
	got, err = ResolveBackends(cfg, f.lookup)
	var errs Errors
	if got != nil || !errors.As(err, &errs) {
		t.Fatalf("ResolveBackends: got %v, %v; want nil and Errors", got, err)
	}
	wantErr := strings.TrimSpace(`
t.toml:8: pools.web.backends[1].address: cannot resolve host "gone.internal": lookup gone.internal on 127.0.0.1:53: no such host
t.toml:10: pools.web.backends[2].address: cannot resolve host "empty.internal": no address
t.toml:13: pools."a b".backends[0].address: cannot resolve host "gone.internal": lookup gone.internal on 127.0.0.1:53: no such host
`)
	if err.Error() != wantErr {
		t.Errorf("errors:\n got: %s\nwant: %s", err, wantErr)
	}
	if errs[0].File != "t.toml" || errs[0].Line != 8 || errs[0].Key != "pools.web.backends[1].address" {
		t.Errorf("first error: %+v", *errs[0])
	}
	if f.asked["gone.internal"] != 1 {
		t.Errorf("gone.internal looked up %d times, want once", f.asked["gone.internal"])
	}

	// Inline backends are located too.
	cfg = mustParse(t, listenerWeb+`
[pools.web]
backends = [
  { address = "127.0.0.1:80" },
  { address = "gone.internal:80" },
]
`)
	if _, err := ResolveBackends(cfg, f.lookup); err == nil || !strings.HasPrefix(err.Error(), "t.toml:8: pools.web.backends[1].address: ") {
		t.Errorf("inline backend: got %v, want an error at t.toml:8", err)
	}
}

// TestExampleSpecLive loads the SPEC's "Live backend sets" block
// (testdata/spec-live.toml: verbatim, behind a listener).
func TestExampleSpecLive(t *testing.T) {
	cfg, err := Load("testdata/spec-live.toml")
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Pools["web"]
	var types []string
	for _, d := range p.Discover {
		types = append(types, d.Type)
	}
	if strings.Join(types, " ") != "dns file etcd" || len(p.Backends) != 0 {
		t.Errorf("pool web: %+v", *p)
	}
	if d := p.Discover[0]; d.Resolver != "127.0.0.1:53" || d.Interval != 5*time.Second || d.Port != 8080 || d.Weight != 1 {
		t.Errorf("dns entry: %+v", d)
	}
}
