package server

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lbctl/lbctl/health"
	dto "github.com/prometheus/client_model/go"
)

// Liveness, for a service manager's watchdog (systemd WatchdogSec=): Alive
// answers "do the goroutines that do the work still work?". Readiness
// (Ready, /readyz) is a different question: whether to send traffic here.
//
// Alive checks three things:
//
//   - The server lock is not held for too long. Alive never waits for it:
//     a reload holds it while it resolves host names and binds, which may
//     take a while, and the keep-alives must go on meanwhile. Alive reports
//     a lock held, at every call, for longer than lockBusyLimit: a reload or
//     a shutdown that never ends.
//   - Every listener's accept loop (TCP) or read loop (UDP) still runs.
//     Those loops return only when their listener is closed, so a loop that
//     ended while its listener is still in service has died.
//   - Every backend with active checks completed a check recently. A check
//     starts at most one interval after the previous one and is bounded by
//     its timeout, so its lbctl_health_checks_total series (success plus
//     failure) must move within interval + timeout; Alive allows twice the
//     interval plus aliveSlack, and only calls a checker dead when a series
//     stood still for longer than that (a hung checker goroutine, a probe
//     that ignores its deadline). The counters are the checker's heartbeat:
//     reading them needs no hook in the health package.

// aliveSlack is added to the longest gap expected between two completed
// checks of one backend before its checker is called dead.
const aliveSlack = 5 * time.Second

// lockBusyLimit is how long Alive accepts to find the server lock taken at
// every call before it calls the server dead. A reload resolving many host
// names against a dead DNS server (5s each) stays well within it.
const lockBusyLimit = time.Minute

// aliveState remembers, per health target, the last completed-check count
// Alive saw and when it first saw it, and since when Alive has found the
// server lock taken. The zero value is ready to use.
type aliveState struct {
	mu        sync.Mutex
	seen      map[string]checkProgress // by backend key
	busySince time.Time                // zero: the last call took the lock
}

type checkProgress struct {
	checks float64   // success + failure
	since  time.Time // when Alive first saw this count
}

// Alive returns nil while the server runs and its accept loops and health
// checkers make progress, else an error that says what stopped. It returns
// an error before Start and once Shutdown has begun. It never blocks.
func (s *Server) Alive() error {
	return s.aliveAt(time.Now())
}

func (s *Server) aliveAt(now time.Time) error {
	if !s.mu.TryLock() {
		return s.alive.lockBusy(now)
	}
	defer s.mu.Unlock()
	s.alive.lockFree()
	switch {
	case s.stopping.Load():
		return errors.New("server: stopping")
	case !s.started:
		return errors.New("server: not started")
	}
	var dead []string
	for _, l := range s.listeners {
		select {
		case <-l.done:
			name := "?"
			if st := l.state.Load(); st != nil {
				name = st.name
			}
			dead = append(dead, fmt.Sprintf("listener %s (%s %s): its accept loop has ended", name, l.protocol, l.addr()))
		default:
		}
	}
	dead = append(dead, s.staleChecks(now)...)
	if len(dead) == 0 {
		return nil
	}
	sort.Strings(dead)
	return errors.New(strings.Join(dead, "; "))
}

// lockBusy records that Alive found the server lock taken at now, and
// returns an error once it has been so at every call for lockBusyLimit.
func (a *aliveState) lockBusy(now time.Time) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.busySince.IsZero() {
		a.busySince = now
	}
	if held := now.Sub(a.busySince); held > lockBusyLimit {
		return fmt.Errorf("server: lock held for %s (a reload or shutdown that does not end?)", held.Round(time.Second))
	}
	return nil
}

func (a *aliveState) lockFree() {
	a.mu.Lock()
	a.busySince = time.Time{}
	a.mu.Unlock()
}

// staleChecks returns a line per backend whose active checks stood still
// for too long. s.mu is held.
func (s *Server) staleChecks(now time.Time) []string {
	a := &s.alive
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.seen == nil {
		a.seen = map[string]checkProgress{}
	}
	current := map[string]bool{}
	var stale []string
	for _, p := range s.pools {
		spec := healthSpec(p)
		if spec.Kind == health.KindNone {
			continue
		}
		bound := 2*spec.Interval + spec.Timeout + aliveSlack
		for _, be := range p.backends {
			k := be.key()
			n, ok := s.health.completedChecks(k)
			if !ok {
				continue
			}
			current[k] = true
			prev, seen := a.seen[k]
			if !seen || n != prev.checks {
				a.seen[k] = checkProgress{checks: n, since: now}
				continue
			}
			if idle := now.Sub(prev.since); idle > bound {
				stale = append(stale, fmt.Sprintf("pool %s backend %s: no health check completed for %s (interval %s)",
					p.name, be.b.Address(), idle.Round(time.Second), spec.Interval))
			}
		}
	}
	for k := range a.seen {
		if !current[k] {
			delete(a.seen, k)
		}
	}
	return stale
}

// completedChecks returns how many checks of the target have completed
// (its lbctl_health_checks_total series, success plus failure), and false
// for a target the monitor does not know.
func (h *healthMonitor) completedChecks(key string) (float64, bool) {
	h.mu.Lock()
	c, ok := h.results[key]
	h.mu.Unlock()
	if !ok {
		return 0, false
	}
	var total float64
	for _, counter := range c {
		var m dto.Metric
		if err := counter.Write(&m); err != nil {
			return 0, false
		}
		total += m.GetCounter().GetValue()
	}
	return total, true
}
