package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/server"
)

func TestAdminBase(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"127.0.0.1:9900", "http://127.0.0.1:9900"},
		{"0.0.0.0:9900", "http://127.0.0.1:9900"},
		{"[::]:9900", "http://[::1]:9900"},
		{":9900", "http://127.0.0.1:9900"},
		{"[::1]:9900", "http://[::1]:9900"},
		{"lb.internal:9900", "http://lb.internal:9900"},
		{"http://10.0.0.1:9900/", "http://10.0.0.1:9900"},
		{"https://lb.example.com", "https://lb.example.com"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := adminBase(tc.in); got != tc.want {
				t.Fatalf("adminBase(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestPrintStatus(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	changed := now.Add(-5*time.Minute - 3*time.Second)
	var out bytes.Buffer
	printStatus(&out, server.Status{
		Listeners: []server.ListenerStatus{{Name: "web", Protocol: "tcp", Bind: "0.0.0.0:8080", Pool: "web", Active: 12}},
		Pools: []server.PoolStatus{{Name: "web", Algorithm: "round-robin", Backends: []server.BackendStatus{
			{Address: "10.0.0.11:80", Weight: 3, Health: "up", Admin: "enabled", Active: 10, Total: 1234, Failures: 0, Source: "config",
				LastCheck: &server.CheckStatus{Result: "success", DurationSeconds: 0.0021, At: now.Add(-1200 * time.Millisecond)}},
			{Address: "[2001:db8::12]:80", Weight: 1, Backup: true, Health: "down", Admin: "draining", Active: 2, Total: 5, Failures: 7,
				Source: "dns:web.internal", WeightOverride: new(int), Removing: true, LastChange: &changed,
				LastCheck: &server.CheckStatus{Result: "failure", Reason: "dial tcp [2001:db8::12]:80: connect: connection refused",
					DurationSeconds: 0.0004, At: now.Add(-2 * time.Second)}},
		}}},
	}, now)
	want := `LISTENER  PROTOCOL  BIND          POOL  ACTIVE
web       tcp       0.0.0.0:8080  web   12

POOL  ALGORITHM    BACKEND                       SOURCE            HEALTH  ADMIN     WEIGHT  BACKUP  ACTIVE  TOTAL  FAILURES  SINCE  LAST CHECK
web   round-robin  10.0.0.11:80                  config            up      enabled   3       -       10      1234   0         -      success 1s ago (2ms)
web   round-robin  [2001:db8::12]:80 (removing)  dns:web.internal  down    draining  1*      yes     2       5      7         5m3s   failure 2s ago (400µs): dial tcp [2001:db8::12]:80: connect: connection refused
`
	if out.String() != want {
		t.Fatalf("status table:\n%s\nwant:\n%s", out.String(), want)
	}

	// The process: version, uptime, config file and the last reload, its
	// problems one per line.
	out.Reset()
	printStatus(&out, server.Status{
		Version: "1.4.0", Started: now.Add(-(26*time.Hour + 10*time.Minute)), ConfigFile: "/etc/lbctl/lbctl.toml",
		LastReload: &server.ReloadStatus{Time: now.Add(-90 * time.Second), Result: "failed",
			Error: "2 problems:\n/etc/lbctl/lbctl.toml:8: pools.web.algorithm: bad\n/etc/lbctl/lbctl.toml:9: pools.web.bogus: unknown key"},
	}, now)
	want = `lbctl 1.4.0, up 1d2h (since 2026-12-05 09:50:00 UTC), config /etc/lbctl/lbctl.toml
last reload: FAILED, 1m30s ago (2026-12-06 11:58:30 UTC), the previous configuration kept running:
  2 problems:
  /etc/lbctl/lbctl.toml:8: pools.web.algorithm: bad
  /etc/lbctl/lbctl.toml:9: pools.web.bogus: unknown key

LISTENER  PROTOCOL  BIND  POOL  ACTIVE
(none)

POOL  ALGORITHM  BACKEND  SOURCE  HEALTH  ADMIN  WEIGHT  BACKUP  ACTIVE  TOTAL  FAILURES  SINCE  LAST CHECK
`
	if out.String() != want {
		t.Fatalf("status with the process:\n%s\nwant:\n%s", out.String(), want)
	}
	out.Reset()
	printStatus(&out, server.Status{Version: "1.4.0", Started: now.Add(-3 * time.Second), ConfigFile: "x.toml",
		LastReload: &server.ReloadStatus{Time: now.Add(-time.Second), Result: "ok"}}, now)
	if first := strings.SplitN(out.String(), "\n", 3); first[0] != "lbctl 1.4.0, up 3s (since 2026-12-06 11:59:57 UTC), config x.toml" ||
		first[1] != "last reload: ok, 1s ago (2026-12-06 11:59:59 UTC)" {
		t.Fatalf("status header:\n%s", out.String())
	}
}

// TestBackendAndReloadCommands drives every client command against a
// running lbctl with a token: each admin state, an IPv6 backend (its
// address path-escaped), the 401, 404 and 400 paths, and the defaults
// taken from the config file.
func TestBackendAndReloadCommands(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	v6 := "[::1]:1" // never dialed: no traffic is sent in this test
	dir := t.TempDir()
	token := writeFile(t, dir, "token", "s3cret\n")
	d := startProc(t, nil, fmt.Sprintf("token_file = %q", token), be.Addr, v6)
	flags := []string{"--admin", d.admin, "--token-file", token}
	run := func(args ...string) (string, int) {
		t.Helper()
		return runLbctl(t, append(args, flags...)...)
	}
	// The state is read from the API directly: one binary run per command
	// under test is enough.
	status := func() server.Status {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+d.admin+"/api/v1/status", nil)
		req.Header.Set("Authorization", "Bearer s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var st server.Status
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || len(st.Pools) != 1 {
			t.Fatalf("status: %v %+v", err, st)
		}
		return st
	}
	adminOf := func(addr string) string {
		t.Helper()
		for _, b := range status().Pools[0].Backends {
			if b.Address == addr {
				return b.Admin
			}
		}
		return "absent"
	}

	for _, step := range []struct {
		action, addr, state string
	}{
		{"drain", be.Addr, "draining"},
		{"disable", be.Addr, "disabled"},
		{"enable", be.Addr, "enabled"},
		{"drain", v6, "draining"}, // path-escaped as %5B::1%5D:1
	} {
		out, code := run("backend", step.action, "web", step.addr)
		if code != 0 || !strings.Contains(out, step.addr) || !strings.Contains(out, step.state) {
			t.Fatalf("backend %s web %s: exit %d\n%s", step.action, step.addr, code, out)
		}
		if got := adminOf(step.addr); got != step.state {
			t.Fatalf("after backend %s: status says %s, want %s", step.action, got, step.state)
		}
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown backend", []string{"backend", "drain", "web", "127.0.0.1:1"}, 1, "unknown backend 127.0.0.1:1 in pool web (HTTP 404)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := run(tc.args...)
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, want %d with %q:\n%s", code, tc.code, tc.want, out)
			}
		})
	}

	// Without the token: 401, and nothing changes.
	out, code := runLbctl(t, "backend", "drain", "web", be.Addr, "--admin", d.admin, "--token-file", writeFile(t, dir, "wrong", "x"))
	if code != 1 || !strings.Contains(out, "HTTP 401") {
		t.Fatalf("drain with a wrong token: exit %d\n%s", code, out)
	}
	if got := adminOf(be.Addr); got != "enabled" {
		t.Fatalf("a refused drain changed the state to %s", got)
	}
	out, code = runLbctl(t, "reload", "--admin", d.admin)
	if code != 1 || !strings.Contains(out, "HTTP 401") || !strings.Contains(out, "old configuration keeps running") {
		t.Fatalf("reload without a token: exit %d\n%s", code, out)
	}
	out, code = runLbctl(t, "status", "--admin", d.admin, "--token-file", dir+"/missing")
	if code != 1 || !strings.Contains(out, "token file") {
		t.Fatalf("status with a missing token file: exit %d\n%s", code, out)
	}

	// --config: admin address and token file come from the config file.
	out, code = runLbctl(t, "status", "--config", d.config)
	if code != 0 || !strings.Contains(out, "LISTENER") || !strings.Contains(out, be.Addr) {
		t.Fatalf("status --config: exit %d\n%s", code, out)
	}

	// reload: a new backend appears; an invalid file is a 400 with its
	// errors, and the old configuration stays.
	other := lbtest.NewTCP(t, lbtest.Echo)
	d.writeConfig(fmt.Sprintf("token_file = %q", token), be.Addr, v6, other.Addr)
	out, code = runLbctl(t, "reload", "--config", d.config)
	if code != 0 || strings.TrimSpace(out) != "reloaded" {
		t.Fatalf("reload: exit %d\n%s", code, out)
	}
	if got := adminOf(other.Addr); got != "enabled" {
		t.Fatalf("after reload the new backend is %s", got)
	}
	d.writeConfig(fmt.Sprintf("token_file = %q\nbogus = 1", token), be.Addr)
	out, code = run("reload")
	if code != 1 || !strings.Contains(out, "admin.bogus") || !strings.Contains(out, "HTTP 400") {
		t.Fatalf("reload of an invalid file: exit %d\n%s", code, out)
	}
	if got := len(status().Pools[0].Backends); got != 3 {
		t.Fatalf("an invalid reload changed the pool: %d backends, want 3", got)
	}
	if !d.metric(`lbctl_config_reloads_total{result="failure"} 1`) || !d.metric(`lbctl_config_reloads_total{result="success"} 1`) {
		t.Fatalf("reload counters wrong after one good and one bad reload")
	}
}
