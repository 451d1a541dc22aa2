package server

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/health"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

func TestAliveLifecycle(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	cfg, err := config.Parse("test.toml", []byte(listenerTOML("a", "p", "")+poolTOML("p", noHealth, be.Addr)))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(cfg, Options{Log: zap.NewNop(), Metrics: metrics.New(prometheus.NewRegistry())})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Alive(); err == nil || !strings.Contains(err.Error(), "not started") {
		t.Fatalf("before Start: Alive() = %v, want not started", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Alive(); err != nil {
		t.Fatalf("running: Alive() = %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	if err := srv.Alive(); err == nil || !strings.Contains(err.Error(), "stopping") {
		t.Fatalf("after Shutdown: Alive() = %v, want stopping", err)
	}
}

// An accept loop that ends while its listener is in service (here: the
// socket closed behind the server's back) makes the server not alive; so
// does the socket of a listener an event loop accepts on.
func TestAliveDeadAcceptLoop(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	h := startServer(t, listenerTOML("a", "p", "")+listenerTOML("b", "p", "")+poolTOML("p", noHealth, be.Addr))
	if err := h.srv.Alive(); err != nil {
		t.Fatalf("Alive() = %v", err)
	}
	h.srv.mu.Lock()
	var victim *listener
	for _, l := range h.srv.listeners {
		if l.state.Load().name == "b" {
			victim = l
		}
	}
	h.srv.mu.Unlock()
	victim.tcp.Close()
	if victim.loop == nil {
		select {
		case <-victim.done:
		case <-time.After(5 * time.Second):
			t.Fatal("accept loop did not end after its socket closed")
		}
	}
	err := h.srv.Alive()
	if err == nil || !strings.Contains(err.Error(), "listener b") || strings.Contains(err.Error(), "listener a") {
		t.Fatalf("Alive() = %v, want listener b (only) reported", err)
	}
	// The other listener still serves, whoever accepts on it.
	c := h.dial("a")
	defer c.Close()
	echoOnce(t, c, "still here")
}

// Health checkers count as alive while each checked backend's heartbeat
// (its last completed check) is within two intervals plus the timeout and
// aliveSlack.
func TestAliveHealthProgress(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	// One check an hour: the first must succeed, so its timeout is long
	// against what a loaded machine adds to a loopback connect.
	const timeout = 10 * time.Second
	checked := "[pools.p.health]\ncheck = \"tcp\"\ninterval = \"1h\"\ntimeout = \"10s\"\n"
	h := startServer(t, listenerTOML("a", "p", "")+poolTOML("p", checked, be.Addr)+
		listenerTOML("u", "q", "")+poolTOML("q", "[pools.q.health]\ncheck = \"none\"\n", be.Addr))
	key := h.srv.pools["p"].gen.backends[0].key()
	// The first check runs at once; the next one in an hour.
	lbtest.Until(t, timeout+5*time.Second, func() (bool, string) {
		s, f := counter(h.m.HealthChecks.WithLabelValues("p", be.Addr, "success")),
			counter(h.m.HealthChecks.WithLabelValues("p", be.Addr, "failure"))
		return s >= 1, fmt.Sprintf("first health check not completed: %v successes, %v failures", s, f)
	})
	t0, ok := h.srv.health.lastCheck(key)
	if !ok {
		t.Fatal("no heartbeat for a checked backend")
	}
	if _, ok := h.srv.health.lastCheck(h.srv.pools["q"].gen.backends[0].key()); ok {
		t.Error("a heartbeat for a backend with check = none")
	}

	bound := 2*time.Hour + timeout + aliveSlack
	for _, tc := range []struct {
		name  string
		at    time.Time
		stale bool
	}{
		{"at the last check", t0, false},
		{"one interval later", t0.Add(time.Hour), false},
		{"just within the bound", t0.Add(bound), false},
		{"past the bound", t0.Add(bound + time.Second), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := h.srv.aliveAt(tc.at)
			if !tc.stale {
				if err != nil {
					t.Fatalf("aliveAt(+%s) = %v, want nil", tc.at.Sub(t0), err)
				}
				return
			}
			// Only pool p has active checks; pool q's backend is never stale.
			if err == nil || !strings.Contains(err.Error(), "pool p backend "+be.Addr+": no health check completed") ||
				strings.Contains(err.Error(), "pool q") {
				t.Fatalf("aliveAt(+%s) = %v, want pool p's backend reported stale", tc.at.Sub(t0), err)
			}
		})
	}

	// A check without a verdict (lbctl out of descriptors) is a completed
	// check: the checker works, so its heartbeat moves, though no counter
	// does.
	before := time.Now()
	h.srv.health.onResult(key, health.NoVerdict, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", syscall.EMFILE)}, time.Millisecond)
	t1, _ := h.srv.health.lastCheck(key)
	if t1.Before(before) {
		t.Errorf("heartbeat %v did not move with a check without verdict at %v", t1, before)
	}
	if err := h.srv.aliveAt(t1.Add(bound)); err != nil {
		t.Errorf("aliveAt(bound after the check without verdict) = %v, want nil", err)
	}
	if s, f := counter(h.m.HealthChecks.WithLabelValues("p", be.Addr, "success")),
		counter(h.m.HealthChecks.WithLabelValues("p", be.Addr, "failure")); s != 1 || f != 0 {
		t.Errorf("checks counted: %v successes, %v failures; want 1 and 0", s, f)
	}
}

// Alive never waits for the server lock: a long reload does not stop the
// keep-alives, a lock held at every call for lockBusyLimit does.
func TestAliveLockHeld(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	h := startServer(t, listenerTOML("a", "p", "")+poolTOML("p", noHealth, be.Addr))
	t0 := time.Now()
	h.srv.mu.Lock() // a reload in progress
	for _, tc := range []struct {
		after time.Duration
		dead  bool
	}{{0, false}, {lockBusyLimit, false}, {lockBusyLimit + time.Second, true}} {
		err := h.srv.aliveAt(t0.Add(tc.after))
		if tc.dead != (err != nil) || (err != nil && !strings.Contains(err.Error(), "lock held")) {
			h.srv.mu.Unlock()
			t.Fatalf("lock held for %s: Alive() = %v, want dead %v", tc.after, err, tc.dead)
		}
	}
	h.srv.mu.Unlock()
	if err := h.srv.aliveAt(t0.Add(lockBusyLimit + 2*time.Second)); err != nil {
		t.Fatalf("lock free again: Alive() = %v", err)
	}
	// The clock of a held lock starts again from the next busy call.
	h.srv.mu.Lock()
	defer h.srv.mu.Unlock()
	if err := h.srv.aliveAt(t0.Add(lockBusyLimit + 3*time.Second)); err != nil {
		t.Fatalf("lock newly held: Alive() = %v", err)
	}
}
