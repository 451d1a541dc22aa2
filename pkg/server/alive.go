package server

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lbctl/lbctl/health"
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
//     its timeout, so the checker glue's heartbeat for the backend (the
//     time its last check completed, whatever the outcome, checks.go) must
//     move within interval + timeout; Alive allows twice the interval plus
//     the timeout plus aliveSlack, and only calls a checker dead when its
//     heartbeat is older than that (a hung checker goroutine, a probe that
//     ignores its deadline). A check without a verdict (lbctl out of
//     descriptors) still beats: the checker works, the host is short.

// aliveSlack is added to the longest gap expected between two completed
// checks of one backend before its checker is called dead.
const aliveSlack = 5 * time.Second

// lockBusyLimit is how long Alive accepts to find the server lock taken at
// every call before it calls the server dead. A reload resolving many host
// names against a dead DNS server (5s each) stays well within it.
const lockBusyLimit = time.Minute

// aliveState remembers since when Alive has found the server lock taken.
// The zero value is ready to use.
type aliveState struct {
	mu        sync.Mutex
	busySince time.Time // zero: the last call took the lock
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
		name := "?"
		if st := l.state.Load(); st != nil {
			name = st.name
		}
		select {
		case <-l.done:
			dead = append(dead, fmt.Sprintf("listener %s (%s %s): its accept loop has ended", name, l.protocol, l.addr()))
			continue
		default:
		}
		if l.loop != nil && l.loop.Err() != nil {
			dead = append(dead, fmt.Sprintf("listener %s (%s %s): its socket is closed", name, l.protocol, l.addr()))
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

// staleChecks returns a line per backend whose checker's heartbeat is
// older than its bound. s.mu is held.
func (s *Server) staleChecks(now time.Time) []string {
	var stale []string
	for _, lp := range s.pools {
		p := lp.gen
		spec := healthSpec(p)
		if spec.Kind == health.KindNone {
			continue
		}
		bound := 2*spec.Interval + spec.Timeout + aliveSlack
		for _, be := range p.backends {
			last, ok := s.health.lastCheck(be.key())
			if !ok {
				continue
			}
			if idle := now.Sub(last); idle > bound {
				stale = append(stale, fmt.Sprintf("pool %s backend %s: no health check completed for %s (interval %s)",
					p.name, be.b.Address(), idle.Round(time.Second), spec.Interval))
			}
		}
	}
	return stale
}
