package config

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestExamplesLoad loads every examples/*.toml: the examples are tested
// documentation and must stay valid.
func TestExamplesLoad(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("found %d example files, want at least lbctl.toml, demo.toml and minimal.toml", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if _, err := Load(f); err != nil {
				t.Fatalf("Load(%s):\n%v", f, err)
			}
		})
	}
}

// TestReferenceExampleShowsEveryKey keeps examples/lbctl.toml complete:
// every key of the schema appears in it, set or in a comment.
func TestReferenceExampleShowsEveryKey(t *testing.T) {
	data, err := os.ReadFile("../../examples/lbctl.toml")
	if err != nil {
		t.Fatal(err)
	}
	keys := []string{
		"shutdown_timeout",
		"level", "format", "access",
		"bind", "allow", "token_file", "hosts", "control_socket",
		"protocol", "pool", "max_connections", "idle_timeout", "deny",
		"max_connections_per_client", "connection_rate_per_client", "connection_burst_per_client",
		"accept_proxy_protocol", "trusted_proxies", "proxy_protocol_timeout", "responses",
		"tls_inspect_timeout", "sni", "sni_regex", "alpn",
		"algorithm", "connect_timeout", "retries", "proxy_protocol", "max_fails", "fail_timeout", "slow_start",
		"table_size", "hash_key",
		"address", "weight", "backup",
		"check", "interval", "timeout", "rise", "fall", "port", "path", "host", "expect_status", "send", "expect", "server_name",
		"state_file", "drain_timeout",
		"type", "name", "resolver", "endpoints", "prefix",
		"asn", "router_id", "withdraw_delay", "listeners",
	}
	for _, k := range keys {
		if !regexp.MustCompile(`(?m)^[ #]*` + k + ` += `).Match(data) {
			t.Errorf("examples/lbctl.toml does not show key %q", k)
		}
	}
	for _, table := range []string{`\[log\]`, `\[admin\]`, `\[listeners\.`, `\[pools\.`, `\[\[pools\.\w+\.backends\]\]`, `\[pools\.\w+\.health\]`, `\[\[pools\.\w+\.discover\]\]`, `\[\[listeners\.\w+\.routes\]\]`, `\[bgp\]`, `\[\[bgp\.peers\]\]`, `\[\[bgp\.announce\]\]`} {
		if !regexp.MustCompile(`(?m)^\s*` + table).Match(data) {
			t.Errorf("examples/lbctl.toml has no %s table", table)
		}
	}
}

// TestReferenceExampleShowsEverySource: examples/lbctl.toml shows one
// discover entry of each type, and examples/discovery.toml is a pool fed
// by a dns and a file source only, whose file exists beside it.
func TestReferenceExampleShowsEverySource(t *testing.T) {
	cfg, err := Load("../../examples/lbctl.toml")
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, d := range cfg.Pools["web"].Discover {
		types = append(types, d.Type)
	}
	if got := strings.Join(types, " "); got != "dns srv file etcd" {
		t.Errorf("examples/lbctl.toml: discover types %q, want one of each: dns srv file etcd", got)
	}

	cfg, err = Load("../../examples/discovery.toml")
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Pools["web"]
	if len(p.Backends) != 0 || len(p.Discover) != 2 || p.Discover[0].Type != "dns" || p.Discover[1].Type != "file" {
		t.Fatalf("examples/discovery.toml: pool web %+v", *p)
	}
	if want := filepath.Join("..", "..", "examples", "discovery.json"); p.Discover[1].Path != want {
		t.Errorf("file source path: got %q, want %q (relative to the config file)", p.Discover[1].Path, want)
	}
	data, err := os.ReadFile(p.Discover[1].Path)
	if err != nil {
		t.Fatalf("the file source's file: %v", err)
	}
	var entries []struct {
		Address string `json:"address"`
		Weight  *int   `json:"weight"`
		Backup  bool   `json:"backup"`
	}
	if err := json.Unmarshal(data, &entries); err != nil || len(entries) == 0 {
		t.Fatalf("%s: %v, %d entries; want a JSON array of backends", p.Discover[1].Path, err, len(entries))
	}
	for _, e := range entries {
		if ap, err := netip.ParseAddrPort(e.Address); err != nil || !ap.Addr().IsLoopback() {
			t.Errorf("%s: address %q is not a loopback IP:port", p.Discover[1].Path, e.Address)
		}
	}
}

// TestDemoExample pins what `make demo` relies on.
func TestDemoExample(t *testing.T) {
	cfg, err := Load("../../examples/demo.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Listeners) != 1 {
		t.Fatalf("listeners: got %d, want 1", len(cfg.Listeners))
	}
	l := cfg.Listeners[0]
	if l.Name != "demo" || l.Protocol != "tcp" || l.Bind != "127.0.0.1:8080" || l.Pool != "demo" {
		t.Errorf("listener: %+v", *l)
	}
	p := cfg.Pools["demo"]
	want := []Backend{{"127.0.0.1:9001", 1, false}, {"127.0.0.1:9002", 1, false}, {"127.0.0.1:9003", 1, false}}
	if p == nil || p.Algorithm != "round-robin" || len(p.Backends) != 3 {
		t.Fatalf("pool demo: %+v", p)
	}
	for i := range want {
		if p.Backends[i] != want[i] {
			t.Errorf("backend %d: got %+v, want %+v", i, p.Backends[i], want[i])
		}
	}
	if p.Health.Check != "tcp" || p.Health.Interval != time.Second {
		t.Errorf("health: %+v", p.Health)
	}
	if cfg.Admin == nil || cfg.Admin.Bind != "127.0.0.1:9900" {
		t.Errorf("admin: %+v", cfg.Admin)
	}
	if cfg.Log.Format != "console" || cfg.Log.Access {
		t.Errorf("log: %+v", cfg.Log)
	}
}

// TestSpecBlock loads the SPEC's reference TOML block (copied verbatim to
// testdata/spec.toml): what the contract shows must be accepted.
func TestSpecBlock(t *testing.T) {
	cfg, err := Load("testdata/spec.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Listeners) != 1 || len(cfg.Pools["web"].Backends) != 2 || cfg.Admin.TokenFile != "/etc/lbctl/token" {
		t.Errorf("unexpected content: %s", dump(cfg))
	}
}
