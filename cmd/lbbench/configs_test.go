package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

func testParams(t *testing.T) confParams {
	t.Helper()
	return confParams{
		Ports: ports{Bulk: 20001, Short: 20002, RR: 20003, Idle: 20004, UDP: 20005, SNI: 20006},
		Backends: backendAddrs{
			Echo: []string{"127.0.0.1:30001", "127.0.0.1:30002"},
			Sink: []string{"127.0.0.1:30011", "127.0.0.1:30012"},
			UDP:  []string{"127.0.0.1:30021", "127.0.0.1:30022"},
		},
		Threads: 2,
		Dir:     t.TempDir(),
		NoFile:  20000,
	}
}

func TestConfigsAreEquivalent(t *testing.T) {
	p := testParams(t)
	tests := []struct {
		name string
		text string
		want []string
	}{
		{"haproxy", haproxyConfig(p), []string{
			"nbthread 2", "mode tcp", "option splice-auto", "balance roundrobin",
			"bind 127.0.0.1:20001", "bind 127.0.0.1:20004", "server echo2 127.0.0.1:30002", "server sink1 127.0.0.1:30011",
			"bind 127.0.0.1:20006", "tcp-request inspect-delay 5s", "use_backend sni_a if { req.ssl_sni -i a.bench.test }",
			"use_backend sni_b if { req.ssl_sni -i b.bench.test }", "server sni_b2 127.0.0.1:30002",
		}},
		{"nginx", nginxConfig(p), []string{
			nginxModule, "worker_processes 2;", "worker_rlimit_nofile 20000;", "proxy_half_close on;",
			"listen 127.0.0.1:20002 reuseport;", "listen 127.0.0.1:20005 udp reuseport;", "server 127.0.0.1:30022;",
			"listen 127.0.0.1:20006 reuseport;", "ssl_preread on;", "map $ssl_preread_server_name $sni_upstream {",
			"a.bench.test sni_a;", "b.bench.test sni_b;", "proxy_pass $sni_upstream;", "upstream sni_b {",
		}},
		{"lbctl", lbctlConfig(p), []string{
			`level = "warn"`, "access = false", `bind = "127.0.0.1:20003"`, `protocol = "udp"`,
			`algorithm = "round-robin"`, `check = "none"`, `address = "127.0.0.1:30021"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, w := range tt.want {
				if !strings.Contains(tt.text, w) {
					t.Errorf("config lacks %q:\n%s", w, tt.text)
				}
			}
			for _, bad := range []string{"\n    log ", "access_log", " check inter", "\n    server echo1 127.0.0.1:30001 check", "[admin]"} {
				if strings.Contains(tt.text, bad) {
					t.Errorf("config has %q; the bench wants no logging, checks or admin", bad)
				}
			}
		})
	}
}

func TestLbctlConfigShape(t *testing.T) {
	var c struct {
		ShutdownTimeout string `toml:"shutdown_timeout"`
		Log             struct {
			Level  string
			Access bool
		}
		Admin     map[string]any
		Listeners map[string]struct {
			Protocol, Bind, Pool string
			TLSInspectTimeout    string `toml:"tls_inspect_timeout"`
			Routes               []struct {
				SNI  []string `toml:"sni"`
				Pool string
			}
		}
		Pools map[string]struct {
			Algorithm string
			Backends  []struct{ Address string }
			Health    struct{ Check string }
		}
	}
	md, err := toml.Decode(lbctlConfig(testParams(t)), &c)
	if err != nil {
		t.Fatalf("generated lbctl config is not TOML: %v", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		t.Errorf("keys this test does not know: %v", und)
	}
	if c.Admin != nil {
		t.Errorf("admin table present")
	}
	wantPools := map[string]string{"bulk": "sink", "short": "echo", "rr": "echo", "idle": "echo", "udp": "udpecho"}
	if len(c.Listeners) != len(wantPools)+1 {
		t.Errorf("%d listeners, want %d and sni", len(c.Listeners), len(wantPools))
	}
	sni := c.Listeners["sni"]
	if sni.Pool != "" || sni.TLSInspectTimeout != "5s" || len(sni.Routes) != 2 ||
		len(sni.Routes[0].SNI) != 1 || sni.Routes[0].SNI[0] != "a.bench.test" || sni.Routes[0].Pool != "sni_a" ||
		len(sni.Routes[1].SNI) != 1 || sni.Routes[1].SNI[0] != "b.bench.test" || sni.Routes[1].Pool != "sni_b" {
		t.Errorf("listener sni = %+v, want a route per name to sni_a and sni_b, no fallback pool", sni)
	}
	for _, pool := range sniPools {
		if p := c.Pools[pool]; len(p.Backends) != 2 || p.Backends[0].Address != "127.0.0.1:30001" || p.Health.Check != "none" {
			t.Errorf("pool %s = %+v, want the echo backends, no checks", pool, p)
		}
	}
	for name, pool := range wantPools {
		l, ok := c.Listeners[name]
		if !ok || l.Pool != pool {
			t.Errorf("listener %s = %+v, want pool %s", name, l, pool)
		}
		if p := c.Pools[pool]; len(p.Backends) != 2 || p.Health.Check != "none" || p.Algorithm != "round-robin" {
			t.Errorf("pool %s = %+v", pool, p)
		}
	}
	if c.Listeners["udp"].Protocol != "udp" || c.Listeners["bulk"].Protocol != "tcp" {
		t.Errorf("protocols: %+v", c.Listeners)
	}
}

// TestPeerConfigsValidate asks the installed HAProxy and nginx to check the
// generated files; it skips where they are not installed.
func TestPeerConfigsValidate(t *testing.T) {
	p := testParams(t)
	t.Run("haproxy", func(t *testing.T) {
		if _, err := exec.LookPath("haproxy"); err != nil {
			t.Skip("haproxy not installed")
		}
		f := filepath.Join(p.Dir, "haproxy.cfg")
		if err := os.WriteFile(f, []byte(haproxyConfig(p)), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("haproxy", "-c", "-q", "-f", f).CombinedOutput(); err != nil {
			t.Errorf("haproxy -c: %v\n%s", err, out)
		}
	})
	t.Run("nginx", func(t *testing.T) {
		if _, err := exec.LookPath("nginx"); err != nil {
			t.Skip("nginx not installed")
		}
		if _, err := os.Stat(nginxModule); err != nil {
			t.Skip("nginx stream module not installed")
		}
		f := filepath.Join(p.Dir, "nginx.conf")
		if err := os.WriteFile(f, []byte(nginxConfig(p)), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("nginx", "-t", "-q", "-p", p.Dir, "-e", filepath.Join(p.Dir, "err.log"), "-c", f)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("nginx -t: %v\n%s", err, out)
		}
	})
}
