package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/admin"
	"github.com/lbctl/lbctl/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// fakeLB is a small model of a running lbctl behind the real admin API:
// pool "web" and its backends by address, with the run-time changes'
// rules (409 for an address in the pool, only "api" backends removed).
// Each Status call runs tick first, so a test can make connections end.
type fakeLB struct {
	mu       sync.Mutex
	backends map[string]*server.BackendStatus
	calls    []string
	statuses int
	tick     func(b map[string]*server.BackendStatus)
}

var _ admin.BackendEditor = (*fakeLB)(nil)

func newFakeLB(backends ...server.BackendStatus) *fakeLB {
	f := &fakeLB{backends: map[string]*server.BackendStatus{}}
	for _, b := range backends {
		f.backends[b.Address] = &b
	}
	return f
}

func (f *fakeLB) Ready() bool { return true }

func (f *fakeLB) Status() server.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statuses++
	if f.tick != nil {
		f.tick(f.backends)
	}
	p := server.PoolStatus{Name: "web", Algorithm: "round-robin"}
	for _, b := range f.backends {
		p.Backends = append(p.Backends, *b)
	}
	return server.Status{Pools: []server.PoolStatus{p}}
}

// find returns the backend, recording the call.
func (f *fakeLB) find(call, pool, address string) (*server.BackendStatus, error) {
	f.calls = append(f.calls, call)
	if pool != "web" {
		return nil, server.ErrUnknownPool
	}
	b, ok := f.backends[address]
	if !ok {
		return nil, server.ErrUnknownBackend
	}
	return b, nil
}

func (f *fakeLB) SetBackendAdmin(pool, address string, state balancer.AdminState) (server.BackendStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := f.find(state.String()+" "+pool+" "+address, pool, address)
	if err != nil {
		return server.BackendStatus{}, err
	}
	b.Admin = state.String()
	return *b, nil
}

func (f *fakeLB) AddBackend(pool string, spec server.BackendSpec) (server.BackendStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := netip.ParseAddrPort(spec.Address); err != nil {
		f.calls = append(f.calls, "refused "+spec.Address)
		return server.BackendStatus{}, &server.BadRequestError{Field: "address", Reason: fmt.Sprintf("%q is not IP:port", spec.Address)}
	}
	if spec.Weight < 0 || spec.Weight > balancer.MaxWeight {
		f.calls = append(f.calls, fmt.Sprint("refused weight ", spec.Weight))
		return server.BackendStatus{}, &server.BadRequestError{Field: "weight", Reason: fmt.Sprintf("%d is not within 0..1000000", spec.Weight)}
	}
	_, err := f.find(fmt.Sprintf("add %s %s weight=%d backup=%v", pool, spec.Address, spec.Weight, spec.Backup), pool, spec.Address)
	switch {
	case err == nil:
		return server.BackendStatus{}, server.ErrBackendExists
	case !errors.Is(err, server.ErrUnknownBackend):
		return server.BackendStatus{}, err
	}
	b := &server.BackendStatus{Address: spec.Address, Weight: spec.Weight, Backup: spec.Backup, Health: "down", Admin: "enabled", Source: "api"}
	f.backends[spec.Address] = b
	return *b, nil
}

func (f *fakeLB) RemoveBackend(pool, address string) (server.BackendStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := f.find("remove "+pool+" "+address, pool, address)
	if err != nil {
		return server.BackendStatus{}, err
	}
	if b.Source != "api" {
		return server.BackendStatus{}, server.ErrNotAPIBackend
	}
	b.Removing = true
	return *b, nil
}

func (f *fakeLB) SetWeightOverride(pool, address string, weight *int) (server.BackendStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if weight != nil && (*weight < 0 || *weight > balancer.MaxWeight) {
		f.calls = append(f.calls, fmt.Sprint("refused weight ", *weight))
		return server.BackendStatus{}, &server.BadRequestError{Field: "weight", Reason: fmt.Sprintf("%d is not within 0..1000000", *weight)}
	}
	w := "reset"
	if weight != nil {
		w = fmt.Sprint(*weight)
	}
	b, err := f.find("weight "+pool+" "+address+" "+w, pool, address)
	if err != nil {
		return server.BackendStatus{}, err
	}
	b.WeightOverride = weight
	b.Weight = 1
	if weight != nil {
		b.Weight = *weight
	}
	return *b, nil
}

func (f *fakeLB) KillBackend(pool, address string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := f.find("kill "+pool+" "+address, pool, address)
	if err != nil {
		return 0, err
	}
	n := b.Active
	b.Active = 0
	return int(n), nil
}

func (f *fakeLB) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

// startFakeAdmin serves the real admin API in front of rt on a loopback
// port, with a token, and returns the flags that reach it.
func startFakeAdmin(t *testing.T, rt admin.Runtime) []string {
	t.Helper()
	token := writeFile(t, t.TempDir(), "token", "s3cret\n")
	adm, err := admin.New(admin.Options{
		Bind: "127.0.0.1:0", TokenFile: token, Registry: prometheus.NewRegistry(), Server: rt,
		Reload: func() error { return nil }, Log: zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- adm.Serve() }()
	t.Cleanup(func() {
		adm.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("admin Serve: %v", err)
		}
	})
	return []string{"--admin", adm.Addr().String(), "--token-file", token}
}

// lbctl runs the command line in this process and returns its stdout,
// stderr and exit status.
func lbctl(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := runWith(args, &out, &errOut)
	return out.String(), errOut.String(), code
}

// TestBackendCommands runs each `lbctl backend` command against the admin
// API in front of a fake lbctl: what reaches the server, what is printed,
// the exit status.
func TestBackendCommands(t *testing.T) {
	lb := newFakeLB(
		server.BackendStatus{Address: "127.0.0.1:9000", Weight: 1, Health: "up", Admin: "enabled", Source: "config", Active: 4},
		server.BackendStatus{Address: "[::1]:9000", Weight: 1, Health: "up", Admin: "enabled", Source: "api", Active: 2},
	)
	flags := startFakeAdmin(t, lb)
	for _, tc := range []struct {
		name string
		args string
		code int
		call string // what reached the server ("" none)
		out  string // stdout for exit 0, stderr otherwise (contained)
	}{
		{"add", "add web 127.0.0.1:9001", 0, "add web 127.0.0.1:9001 weight=1 backup=false",
			"pool web backend 127.0.0.1:9001: added (weight 1, health down)\n"},
		{"add a backup with a weight", "add web 127.0.0.1:9002 --weight 5 --backup", 0, "add web 127.0.0.1:9002 weight=5 backup=true",
			"pool web backend 127.0.0.1:9002: added (weight 5, backup, health down)\n"},
		{"add weight 0", "add web 127.0.0.1:9003 --weight 0", 0, "add web 127.0.0.1:9003 weight=0 backup=false",
			"added (weight 0, health down)"},
		{"add an address in the pool", "add web 127.0.0.1:9000", 1, "add web 127.0.0.1:9000 weight=1 backup=false",
			"lbctl: backend 127.0.0.1:9000 is already in pool web (HTTP 409)\n"},
		{"add to an unknown pool", "add nope 127.0.0.1:9001", 1, "add nope 127.0.0.1:9001 weight=1 backup=false",
			"unknown pool nope (HTTP 404)"},
		{"add a host name", "add web localhost:9001", 1, "refused localhost:9001", `bad address: "localhost:9001" is not IP:port (HTTP 400)`},
		{"add a weight out of range", "add web 127.0.0.1:9004 --weight 1000001", 1, "refused weight 1000001", "bad weight: 1000001 is not within 0..1000000 (HTTP 400)"},
		{"add, weight not a number", "add web 127.0.0.1:9004 --weight x", 2, "", `invalid argument "x" for "--weight"`},
		{"add without an address", "add web", 2, "", "accepts 2 arg(s), received 1"},

		{"remove", "remove web 127.0.0.1:9001", 0, "remove web 127.0.0.1:9001",
			"pool web backend 127.0.0.1:9001: removed, takes no new connections\n"},
		{"remove IPv6 with connections", "remove web [::1]:9000", 0, "remove web [::1]:9000",
			"pool web backend [::1]:9000: removed, takes no new connections; 2 established connections continue up to the pool's drain_timeout\n"},
		{"remove a config backend", "remove web 127.0.0.1:9000", 1, "remove web 127.0.0.1:9000",
			"backend 127.0.0.1:9000 in pool web was not added through the API: remove it from its source (config file or discovery) (HTTP 409)"},
		{"remove an unknown backend", "remove web 127.0.0.1:1", 1, "remove web 127.0.0.1:1", "unknown backend 127.0.0.1:1 in pool web (HTTP 404)"},

		{"weight", "weight web 127.0.0.1:9000 7", 0, "weight web 127.0.0.1:9000 7",
			"pool web backend 127.0.0.1:9000: weight 7 (override)\n"},
		{"weight reset", "weight web 127.0.0.1:9000 --reset", 0, "weight web 127.0.0.1:9000 reset",
			"pool web backend 127.0.0.1:9000: weight 1 (override removed)\n"},
		{"weight 0 of IPv6", "weight web [::1]:9000 0", 0, "weight web [::1]:9000 0", "pool web backend [::1]:9000: weight 0 (override)\n"},
		{"weight out of range", "weight web 127.0.0.1:9000 2000000", 1, "refused weight 2000000", "bad weight: 2000000 is not within 0..1000000 (HTTP 400)"},
		{"weight of an unknown backend", "weight web 127.0.0.1:1 3", 1, "weight web 127.0.0.1:1 3", "(HTTP 404)"},
		{"weight not a number", "weight web 127.0.0.1:9000 heavy", 2, "", `weight "heavy" is not a whole number`},
		{"weight missing", "weight web 127.0.0.1:9000", 2, "", "accepts 3 arg(s)"},
		{"weight and --reset", "weight web 127.0.0.1:9000 3 --reset", 2, "", "with --reset, accepts 2 arg(s)"},

		{"kill", "kill web 127.0.0.1:9000", 0, "kill web 127.0.0.1:9000",
			"pool web backend 127.0.0.1:9000: killed 4 (established connections and UDP sessions reset)\n"},
		{"kill again", "kill web 127.0.0.1:9000", 0, "kill web 127.0.0.1:9000", "killed 0 "},
		{"kill in an unknown pool", "kill nope 127.0.0.1:9000", 1, "kill nope 127.0.0.1:9000", "unknown pool nope (HTTP 404)"},

		{"drain", "drain web [::1]:9000", 0, "draining web [::1]:9000",
			"pool web backend [::1]:9000: draining (health up), takes no new connections; 2 established connections continue\n"},
		{"enable", "enable web [::1]:9000", 0, "enabled web [::1]:9000", "pool web backend [::1]:9000: enabled (health up)\n"},
		{"drain --timeout without --wait", "drain web [::1]:9000 --timeout 1s", 2, "", "--timeout needs --wait"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{"backend"}, strings.Fields(tc.args)...), flags...)
			out, errOut, code := lbctl(t, args...)
			if code != tc.code {
				t.Fatalf("lbctl %s: exit %d, want %d\nstdout: %s\nstderr: %s", tc.args, code, tc.code, out, errOut)
			}
			got := out
			if code != 0 {
				got = errOut
				if out != "" {
					t.Errorf("stdout on failure: %q", out)
				}
			}
			if !strings.Contains(got, tc.out) {
				t.Errorf("output %q, want it to contain %q", got, tc.out)
			}
			var want []string
			if tc.call != "" {
				want = []string{tc.call}
			}
			if calls := lb.takeCalls(); !slices.Equal(calls, want) {
				t.Errorf("server calls %q, want %q", calls, want)
			}
		})
	}
	_, errOut, code := lbctl(t, "backend", "frob", "web", "[::1]:9000")
	if code != 2 || !strings.Contains(errOut, "want add, remove, weight, kill, drain, enable or disable") {
		t.Errorf("unknown action: exit %d: %s", code, errOut)
	}
}

// TestBackendDrainWait: `drain --wait` returns once the backend has no
// active connection (or has left the pool), and exits 1 at --timeout
// saying how many remain.
func TestBackendDrainWait(t *testing.T) {
	old := drainPoll
	drainPoll = 20 * time.Millisecond
	t.Cleanup(func() { drainPoll = old })

	t.Run("connections end", func(t *testing.T) {
		lb := newFakeLB(server.BackendStatus{Address: "127.0.0.1:9000", Weight: 1, Health: "up", Admin: "enabled", Source: "config", Active: 3})
		// One connection ends per status poll.
		lb.tick = func(b map[string]*server.BackendStatus) {
			if be := b["127.0.0.1:9000"]; be.Active > 0 {
				be.Active--
			}
		}
		out, errOut, code := lbctl(t, append([]string{"backend", "drain", "web", "127.0.0.1:9000", "--wait"}, startFakeAdmin(t, lb)...)...)
		if code != 0 {
			t.Fatalf("exit %d\n%s%s", code, out, errOut)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 || !strings.Contains(lines[0], "draining") ||
			!strings.HasPrefix(lines[1], "pool web backend 127.0.0.1:9000: drained, no active connection (waited ") {
			t.Fatalf("output:\n%s", out)
		}
		lb.mu.Lock()
		defer lb.mu.Unlock()
		if lb.statuses != 3 {
			t.Errorf("%d status polls, want 3 (one per connection that ended)", lb.statuses)
		}
	})

	t.Run("backend leaves the pool", func(t *testing.T) {
		lb := newFakeLB(server.BackendStatus{Address: "127.0.0.1:9000", Weight: 1, Health: "up", Admin: "enabled", Source: "api", Active: 1})
		lb.tick = func(b map[string]*server.BackendStatus) { delete(b, "127.0.0.1:9000") }
		out, errOut, code := lbctl(t, append([]string{"backend", "drain", "web", "127.0.0.1:9000", "--wait", "--timeout", "1m"}, startFakeAdmin(t, lb)...)...)
		if code != 0 || !strings.Contains(out, "drained, no active connection") {
			t.Fatalf("exit %d\n%s%s", code, out, errOut)
		}
	})

	t.Run("already idle", func(t *testing.T) {
		lb := newFakeLB(server.BackendStatus{Address: "127.0.0.1:9000", Weight: 1, Health: "up", Admin: "enabled", Source: "config"})
		out, errOut, code := lbctl(t, append([]string{"backend", "drain", "web", "127.0.0.1:9000", "--wait"}, startFakeAdmin(t, lb)...)...)
		if code != 0 || !strings.Contains(out, "drained, no active connection (waited 0s)") {
			t.Fatalf("exit %d\n%s%s", code, out, errOut)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		lb := newFakeLB(server.BackendStatus{Address: "127.0.0.1:9000", Weight: 1, Health: "up", Admin: "enabled", Source: "config", Active: 2})
		start := time.Now()
		out, errOut, code := lbctl(t, append([]string{"backend", "drain", "web", "127.0.0.1:9000", "--wait", "--timeout", "300ms"}, startFakeAdmin(t, lb)...)...)
		if code != 1 || !strings.Contains(errOut, "lbctl: pool web backend 127.0.0.1:9000: 2 connections still active after 300ms") {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		if !strings.Contains(out, "draining") {
			t.Errorf("the drain itself is not reported: %q", out)
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Errorf("gave up after %v, before the timeout", d)
		}
	})

	t.Run("bad timeout", func(t *testing.T) {
		_, errOut, code := lbctl(t, "backend", "drain", "web", "127.0.0.1:9000", "--wait", "--timeout", "0s", "--admin", freePort(t))
		if code != 2 || !strings.Contains(errOut, "want a positive duration") {
			t.Fatalf("exit %d: %s", code, errOut)
		}
	})

	t.Run("admin API gone", func(t *testing.T) {
		_, errOut, code := lbctl(t, "backend", "drain", "web", "127.0.0.1:9000", "--wait", "--admin", freePort(t),
			"--token-file", writeFile(t, t.TempDir(), "token", "x"))
		if code != 1 || !strings.Contains(errOut, "cannot reach lbctl at") {
			t.Fatalf("exit %d: %s", code, errOut)
		}
	})
}

// TestBackendCommandsNeedTheToken: a wrong token is refused (exit 1, HTTP
// 401) and nothing reaches the server.
func TestBackendCommandsNeedTheToken(t *testing.T) {
	lb := newFakeLB(server.BackendStatus{Address: "127.0.0.1:9000", Source: "api"})
	flags := startFakeAdmin(t, lb)
	wrong := writeFile(t, filepath.Dir(flags[3]), "wrong", "nope\n")
	for _, args := range []string{"add web 127.0.0.1:9001", "remove web 127.0.0.1:9000", "weight web 127.0.0.1:9000 2", "kill web 127.0.0.1:9000"} {
		_, errOut, code := lbctl(t, append(append([]string{"backend"}, strings.Fields(args)...), "--admin", flags[1], "--token-file", wrong)...)
		if code != 1 || !strings.Contains(errOut, "HTTP 401") {
			t.Errorf("backend %s with a wrong token: exit %d: %s", args, code, errOut)
		}
	}
	if calls := lb.takeCalls(); len(calls) != 0 {
		t.Fatalf("refused commands reached the server: %q", calls)
	}
}
