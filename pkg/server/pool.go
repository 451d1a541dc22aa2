package server

// pool.go: a pool's live backend set. A pool's backends come from its
// sources of truth: the config file's entries, the ones added through the
// admin API, and each discovery source's last good set (sources.go). One
// function, merge, turns them into the member list (first wins per
// address: config, api, then the sources in the order written), applies
// the weight overrides, and only when the result differs from the running
// generation builds a new one and swaps it into every listener using the
// pool (refresh). Backends are identified by address within the pool
// (livePool.byAddr), so their state (backendstate.go) follows the address
// and never another one; a backend that leaves the set drains
// (removal.go).

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/config"
	"go.uber.org/zap"
)

// Source names in status and metrics for the two sources that are not
// discovery sources.
const (
	sourceConfig = "config"
	sourceAPI    = "api"
)

// entry is one backend as a source of truth gives it.
type entry struct {
	ap     netip.AddrPort // identity: IP:port, IPv4 unmapped
	name   string         // as configured (config entries); "" = ap.String()
	weight int            // 0..balancer.MaxWeight
	backup bool
	source string   // "config", "api", "dns:NAME", ...
	be     *backend // merge: the backend at ap, nil if none yet
}

// livePool is the run-time state of one configured pool, which outlives
// its generations and reloads while the pool's name stays. Guarded by
// Server.mu.
type livePool struct {
	name   string
	cfg    *config.Pool
	gen    *pool                       // the generation in service
	byAddr map[netip.AddrPort]*backend // in gen, or draining after removal
	conf   []entry                     // the config file's entries, resolved
	api    []entry                     // added through the API, in order
	srcs   []*sourceRun                // in the order written (sources.go)

	// merge's scratch, reused so that an unchanged refresh allocates
	// nothing.
	want  []entry
	seen  map[netip.AddrPort]struct{} // addresses without a backend yet
	epoch uint64                      // marks the backends seen by a merge

	// byBal finds a backend from the balancer's, for the data path's
	// passive checks (ConnectFailed): every backend of byAddr.
	balMu sync.RWMutex
	byBal map[*balancer.Backend]*backend

	// Saved state waiting for its backend, by address (state.go).
	pendAdmin    map[string]balancer.AdminState
	pendOverride map[string]int
}

func newLivePool(name string) *livePool {
	return &livePool{name: name, byAddr: map[netip.AddrPort]*backend{}, seen: map[netip.AddrPort]struct{}{},
		byBal: map[*balancer.Backend]*backend{}}
}

// pool is one generation of a pool: the balancer over its members. It is
// immutable once built; listeners hold it through their listenerState.
type pool struct {
	name     string
	cfg      *config.Pool
	protocol string // cfg.Protocol: "tcp" or "udp", the protocol of the listeners using it
	live     *livePool
	bal      *balancer.Pool
	backends []*backend // member order
	health   *healthMonitor
}

// merge computes the member list of lp from conf, lp.api and the sources'
// sets into lp.want, applies the weight overrides, and reports whether it
// differs from the running generation as a set (order does not matter).
// It allocates nothing when the set is unchanged.
func (lp *livePool) merge(conf []entry, srcs []*sourceRun) (changed bool) {
	lp.want = lp.want[:0]
	clear(lp.seen)
	lp.epoch++
	lp.add(conf)
	lp.add(lp.api)
	for _, r := range srcs {
		lp.add(r.set)
	}
	same := lp.gen != nil && len(lp.want) == len(lp.gen.backends)
	for i := range lp.want {
		e := &lp.want[i]
		be := e.be
		if be != nil && be.override != nil {
			e.weight = *be.override
		}
		if same && (be == nil || !be.inGen || be.weight != e.weight || be.backup != e.backup || be.source != e.source) {
			same = false
		}
	}
	return !same
}

// add appends the entries of one source whose address no earlier source
// gave.
func (lp *livePool) add(es []entry) {
	for _, e := range es {
		if e.be = lp.byAddr[e.ap]; e.be != nil {
			if e.be.mark == lp.epoch {
				continue
			}
			e.be.mark = lp.epoch
		} else {
			if _, dup := lp.seen[e.ap]; dup {
				continue
			}
			lp.seen[e.ap] = struct{}{}
		}
		lp.want = append(lp.want, e)
	}
}

// buildGen builds a generation over lp.want. Backends lp does not know
// yet are made here but not registered anywhere: fresh returns them, for
// commit to adopt (a reload that fails later leaves no trace of them).
func (s *Server) buildGen(lp *livePool, pc *config.Pool) (*pool, []*backend, error) {
	p := &pool{name: lp.name, cfg: pc, protocol: pc.Protocol, live: lp, health: s.health,
		backends: make([]*backend, len(lp.want))}
	members := make([]balancer.Member, len(lp.want))
	var fresh []*backend
	for i, e := range lp.want {
		be := e.be
		if be == nil {
			name := e.name
			if name == "" {
				name = e.ap.String()
			}
			be = s.newBackend(lp.name, name, e.ap)
			fresh = append(fresh, be)
			// Saved state waiting for this address (state.go) applies from
			// the start; commit forgets it.
			if lp.pending(be, false) && be.override != nil {
				e.weight = *be.override
				lp.want[i].weight = e.weight
			}
		}
		p.backends[i] = be
		// Weight and backup belong to this generation: the running one
		// keeps its own until commit.
		members[i] = balancer.Member{Backend: be.b, Weight: e.weight, Backup: e.backup}
	}
	bal, err := balancer.New(pc.Algorithm, members, balancerOptions(pc)...)
	if err != nil {
		return nil, nil, fmt.Errorf("pool %s: %w", lp.name, err)
	}
	p.bal = bal
	return p, fresh, nil
}

// commit puts generation p (built over lp.want) in service for lp: it
// adopts its fresh backends, records each member's weight, backup and
// source, applies the pool's settings to backends that joined, and starts
// the removal of those that left (they drain). The listeners are the
// caller's to swap. Called with s.mu held.
func (s *Server) commit(lp *livePool, p *pool, fresh []*backend) {
	if len(fresh) > 0 {
		lp.balMu.Lock()
		for _, be := range fresh {
			lp.byAddr[be.ap] = be
			lp.byBal[be.b] = be
			lp.pending(be, true)
		}
		lp.balMu.Unlock()
	}
	old := lp.gen
	lp.gen = p
	lp.cfg = p.cfg
	s.publishTable(old, p)
	settingsChanged := old == nil || old.cfg != p.cfg
	for i, be := range p.backends {
		e := &lp.want[i]
		be.weight, be.backup, be.source = e.weight, e.backup, e.source
		be.publishSettings()
		joined := !be.inGen
		be.inGen, be.gen = true, p
		if be.removing {
			s.unremove(be)
		}
		if joined || settingsChanged {
			// A new address joining a pool in service enters through
			// slow_start, when set.
			s.startBackend(p, be, joined && old != nil && be.fresh)
		}
		be.fresh = false
	}
	if old == nil {
		return
	}
	for _, be := range old.backends {
		if be.inGen && be.gen != p {
			be.inGen = false
			s.remove(lp, be)
		}
	}
}

// startBackend applies the pool's settings to be, a member of p, and
// (re)registers its health checks. A backend that joins is checked at
// once; one already checked keeps its state.
func (s *Server) startBackend(p *pool, be *backend, ramp bool) {
	be.mu.Lock()
	be.maxFails, be.failTimeout, be.slowStart = p.cfg.MaxFails, p.cfg.FailTimeout, p.cfg.SlowStart
	if be.maxFails <= 0 {
		// Passive checks turned off: forget the failures counted so far
		// (an ejection in progress runs to its end).
		be.fails = be.fails[:0]
	}
	if be.upGauge == nil {
		be.upGauge = be.m.BackendUp.WithLabelValues(be.pool, be.b.Address())
	}
	be.publishLocked("", "")
	if ramp && be.slowStart > 0 && be.b.Healthy() {
		be.startRampLocked()
	}
	be.mu.Unlock()
	p.health.set(p, be)
}

// refresh merges lp's sources of truth and, when the set changed, puts a
// new generation in service and swaps it into every listener using the
// pool: new connections see the new set, established ones keep their
// backend. Called with s.mu held, after a source or the API changed.
func (s *Server) refresh(lp *livePool) error {
	if !lp.merge(lp.conf, lp.srcs) {
		return nil
	}
	p, fresh, err := s.buildGen(lp, lp.cfg)
	if err != nil {
		return err
	}
	access := s.cfg.Load().Log.Access
	states := map[*listener]*listenerState{}
	var tb targetBuild
	for _, l := range s.listeners {
		st := l.state.Load()
		if st == nil || !st.uses(lp) { // its pool or a route's (tlsroute.go)
			continue
		}
		ns, err := s.rebuildListenerState(st, p, access, &tb)
		if err != nil {
			tb.forget(s)
			for _, be := range fresh {
				s.m.ForgetPoolBackend(be.pool, be.b.Address())
			}
			return fmt.Errorf("listener %s: %w", st.name, err)
		}
		states[l] = ns
	}
	tb.adopt()
	s.commit(lp, p, fresh)
	for l, st := range states {
		l.state.Store(st)
	}
	s.refreshes.Add(1)
	return nil
}

// stop forgets every backend of a pool that left the configuration: its
// sources stop, and its backends' connections finish on their own.
func (s *Server) stopPool(lp *livePool) {
	s.m.ForgetPoolTable(lp.name)
	for _, r := range lp.srcs {
		s.stopSource(r)
	}
	for _, be := range lp.byAddr {
		s.finalize(lp, be)
	}
}

// ConnectFailed implements tcpproxy.PassiveObserver (and udpproxy's): max_fails
// failures within fail_timeout eject the backend for fail_timeout.
func (p *pool) ConnectFailed(b *balancer.Backend, err error) {
	p.live.balMu.RLock()
	be := p.live.byBal[b]
	p.live.balMu.RUnlock()
	if be == nil {
		return
	}
	be.connectFailed(time.Now(), err)
}

func zapPool(p string) zap.Field      { return zap.String("pool", p) }
func zapBackend(b string) zap.Field   { return zap.String("backend", b) }
func zapString(k, v string) zap.Field { return zap.String(k, v) }

// poolPlan is what a reload will put in service for one pool.
type poolPlan struct {
	lp    *livePool // the running one, or a new one
	conf  []entry
	srcs  []*sourceRun // kept ones, and new ones not started yet
	gen   *pool
	fresh []*backend
}

// planPools builds a generation for every pool of cfg, over its config
// entries, the API's, and the last good sets of the sources it keeps
// (a new source starts empty). It changes nothing in service.
func (s *Server) planPools(cfg *config.Config, resolved map[string]string) (map[string]*poolPlan, error) {
	plans := make(map[string]*poolPlan, len(cfg.Pools))
	for name, pc := range cfg.Pools {
		lp := s.pools[name]
		if lp == nil {
			lp = newLivePool(name)
		}
		pl := &poolPlan{lp: lp}
		for _, bc := range pc.Backends {
			addr, ok := resolved[bc.Address]
			if !ok {
				forgetFresh(s, plans)
				return nil, fmt.Errorf("pool %s backend %s: not resolved", name, bc.Address)
			}
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				forgetFresh(s, plans)
				return nil, fmt.Errorf("pool %s backend %s: %w", name, bc.Address, err)
			}
			pl.conf = append(pl.conf, entry{ap: unmap(ap), name: bc.Address, weight: clampWeight(bc.Weight),
				backup: bc.Backup, source: sourceConfig})
		}
		pl.srcs = s.planSources(lp, pc)
		lp.merge(pl.conf, pl.srcs)
		gen, fresh, err := s.buildGen(lp, pc)
		if err != nil {
			forgetFresh(s, plans)
			return nil, err
		}
		pl.gen, pl.fresh = gen, fresh
		plans[name] = pl
	}
	return plans, nil
}

// forgetFresh deletes the series an abandoned reload created for backends
// it would have added.
func forgetFresh(s *Server, plans map[string]*poolPlan) {
	for _, pl := range plans {
		for _, be := range pl.fresh {
			s.m.ForgetPoolBackend(be.pool, be.b.Address())
		}
	}
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func clampWeight(w int) int { return min(max(w, 0), balancer.MaxWeight) }
