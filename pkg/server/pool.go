package server

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/health"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Backend health in lbctl has two inputs and one output.
//
//   - The active verdict comes from the health package's Checker (rise/fall
//     over tcp, http or send-expect checks). Before the first check of a
//     backend completes, the verdict is "up"; the first result alone decides.
//     check = "none" keeps the verdict at "up".
//   - The passive verdict comes from the data path: pkg/tcpproxy and
//     pkg/udpproxy report every failed connect through pool.ConnectFailed.
//     max_fails failures within fail_timeout eject the backend for
//     fail_timeout (nginx's semantics), whatever the active checks say in
//     the meantime. max_fails = 0 turns this off.
//
// A backend is up when the active verdict is up and no passive ejection
// holds. That single state is what the balancer sees (SetHealthy), what
// lbctl_backend_up shows and what the log reports: one line per change of
// that state, with the reason, never one per check or per connection.
// A backend that comes back up with slow_start set ramps its weight from
// 10% to full over slow_start.

// pool is one generation of a configured pool: the balancer over its
// backends and the per-backend run-time state that outlives reloads.
type pool struct {
	name     string
	cfg      *config.Pool
	protocol string // "tcp" or "udp": the protocol of the listeners using it
	bal      *balancer.Pool
	backends []*backend // configured order
	addrs    []string   // resolved ip:port of each backend, committed to backend.addr by start
	byBal    map[*balancer.Backend]*backend
	health   *healthMonitor
}

// backend is the server's view of one backend: the balancer's state plus
// what decides its health (active checks and passive ejection). The same
// value is reused across reloads while pool and address stay.
type backend struct {
	pool string
	b    *balancer.Backend
	addr string // resolved ip:port; written only under Server.mu
	log  *zap.Logger
	m    *metrics.Metrics

	mu          sync.Mutex
	upGauge     prometheus.Gauge // lbctl_backend_up; set by start, deleted by stop
	activeUp    bool             // last active-check verdict (true when unchecked)
	passiveDown bool             // ejected by max_fails within fail_timeout
	fails       []time.Time      // recent connect failures (len < max_fails)
	passiveT    *time.Timer      // ends the passive ejection
	maxFails    int
	failTimeout time.Duration
	slowStart   time.Duration
	rampStop    chan struct{} // closes to end the slow-start ramp goroutine
	stopped     bool          // left the configuration: no more changes
}

func (s *Server) buildPools(cfg *config.Config, resolved map[string]string) (map[string]*pool, error) {
	protocols := map[string]string{}
	for _, l := range cfg.Listeners {
		if _, ok := protocols[l.Pool]; !ok || l.Protocol == "tcp" {
			protocols[l.Pool] = l.Protocol
		}
	}
	pools := make(map[string]*pool, len(cfg.Pools))
	for name, pc := range cfg.Pools {
		kept := map[string]*backend{}
		if old := s.pools[name]; old != nil {
			for _, ob := range old.backends {
				kept[ob.b.Address()] = ob
			}
		}
		p := &pool{name: name, cfg: pc, protocol: protocols[name], byBal: map[*balancer.Backend]*backend{}, health: s.health}
		if p.protocol == "" {
			p.protocol = "tcp"
		}
		var bals []*balancer.Backend
		for _, bc := range pc.Backends {
			addr, ok := resolved[bc.Address]
			if !ok {
				return nil, fmt.Errorf("pool %s backend %s: not resolved", name, bc.Address)
			}
			be := kept[bc.Address]
			if be == nil {
				// Nothing is registered for it yet (no metric series, no
				// check): a reload that fails later leaves no trace.
				be = &backend{
					pool:     name,
					b:        balancer.NewBackend(bc.Address, bc.Weight, bc.Backup),
					log:      s.log,
					m:        s.m,
					activeUp: true,
				}
			}
			p.backends = append(p.backends, be)
			p.addrs = append(p.addrs, addr)
			p.byBal[be.b] = be
			bals = append(bals, be.b)
		}
		// balancer.New splits primaries from backups by reading the backup
		// flags now: show it the new ones, then restore the old ones, which
		// the running generation reports until start commits this one.
		prev := make([]bool, len(bals))
		for i, b := range bals {
			prev[i] = b.Backup()
			b.SetBackup(pc.Backends[i].Backup)
		}
		bal, err := balancer.New(pc.Algorithm, bals)
		for i, b := range bals {
			b.SetBackup(prev[i])
		}
		if err != nil {
			return nil, fmt.Errorf("pool %s: %w", name, err)
		}
		p.bal = bal
		pools[name] = p
	}
	return pools, nil
}

// start commits the pool: applies per-backend settings, registers health
// checks, and drops the state of backends that left the pool.
func (p *pool) start(old *pool) {
	kept := map[*backend]bool{}
	for i, be := range p.backends {
		bc := p.cfg.Backends[i]
		be.addr = p.addrs[i]
		be.b.SetWeight(bc.Weight)
		be.b.SetBackup(bc.Backup)
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
		be.mu.Unlock()
		p.health.set(p, be)
		kept[be] = true
	}
	if old == nil {
		return
	}
	for _, be := range old.backends {
		if !kept[be] {
			p.health.remove(be)
			be.stop()
		}
	}
}

// stop forgets every backend of a pool that left the configuration.
func (p *pool) stop() {
	for _, be := range p.backends {
		p.health.remove(be)
		be.stop()
	}
}

func (be *backend) key() string { return be.pool + "|" + be.b.Address() }

// stop ends the backend's timers and goroutines and deletes its
// lbctl_backend_up series. Connections of an old generation may still
// report failures afterwards; they change nothing.
func (be *backend) stop() {
	be.mu.Lock()
	defer be.mu.Unlock()
	if be.stopped {
		return
	}
	be.stopped = true
	if be.passiveT != nil {
		be.passiveT.Stop()
		be.passiveT = nil
	}
	be.stopRampLocked()
	if be.upGauge != nil {
		be.m.BackendUp.DeleteLabelValues(be.pool, be.b.Address())
	}
}

// publishLocked recomputes the backend's state from the active and passive
// verdicts and pushes it to the balancer and lbctl_backend_up. A change of
// state is logged here, once, with the check that caused it and why; a
// verdict that does not change the state is logged at debug level only.
// The caller holds be.mu (so transitions are logged in order).
func (be *backend) publishLocked(check, reason string) {
	if be.stopped {
		return
	}
	up := be.activeUp && !be.passiveDown
	changed := be.b.SetHealthy(up)
	if be.upGauge != nil {
		v := 0.0
		if up {
			v = 1
		}
		be.upGauge.Set(v)
	}
	fields := []zap.Field{zap.String("pool", be.pool), zap.String("backend", be.b.Address()),
		zap.String("check", check), zap.String("reason", reason)}
	switch {
	case !changed:
		if check != "" {
			be.log.Debug("backend verdict without change of state", append(fields,
				zap.Bool("up", up), zap.Bool("active_up", be.activeUp), zap.Bool("passive_down", be.passiveDown))...)
		}
	case up:
		if be.slowStart > 0 {
			be.startRampLocked()
		}
		be.log.Info("backend up", fields...)
	default:
		be.stopRampLocked()
		be.log.Warn("backend down", fields...)
	}
}

// startRampLocked ramps the backend's effective weight from 10% to full
// over slow_start, in steps of slow_start/20 (at least 10ms). The caller
// holds be.mu.
func (be *backend) startRampLocked() {
	if be.rampStop != nil {
		close(be.rampStop)
	}
	stop := make(chan struct{})
	be.rampStop = stop
	total := be.slowStart
	be.b.SetWeightScale(100)
	go be.ramp(stop, total)
}

// ramp is the slow-start goroutine of one comeback; it ends when the weight
// is full or stop closes.
func (be *backend) ramp(stop chan struct{}, total time.Duration) {
	step := max(total/20, 10*time.Millisecond)
	t := time.NewTicker(step)
	defer t.Stop()
	start := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			f := time.Since(start)
			be.mu.Lock()
			if be.rampStop != stop { // replaced or ended meanwhile
				be.mu.Unlock()
				return
			}
			if f < total {
				be.b.SetWeightScale(100 + int(900*f/total))
				be.mu.Unlock()
				continue
			}
			be.rampStop = nil
			be.b.SetWeightScale(1000)
			be.mu.Unlock()
			return
		}
	}
}

// stopRampLocked ends a slow-start ramp in progress and restores the full
// weight. The caller holds be.mu.
func (be *backend) stopRampLocked() {
	if be.rampStop != nil {
		close(be.rampStop)
		be.rampStop = nil
	}
	be.b.SetWeightScale(1000)
}

// ConnectFailed implements tcpproxy.PassiveObserver (and udpproxy's): max_fails
// failures within fail_timeout eject the backend for fail_timeout.
func (p *pool) ConnectFailed(b *balancer.Backend) {
	be := p.byBal[b]
	if be == nil {
		return
	}
	be.connectFailed(time.Now())
}

func (be *backend) connectFailed(now time.Time) {
	be.mu.Lock()
	defer be.mu.Unlock()
	if be.stopped || be.maxFails <= 0 || be.passiveDown {
		return
	}
	cut := now.Add(-be.failTimeout)
	recent := be.fails[:0]
	for _, t := range be.fails {
		if t.After(cut) {
			recent = append(recent, t)
		}
	}
	be.fails = append(recent, now)
	if len(be.fails) < be.maxFails {
		return
	}
	be.fails = be.fails[:0]
	be.passiveDown = true
	ft := be.failTimeout
	var timer *time.Timer
	timer = time.AfterFunc(ft, func() {
		be.mu.Lock()
		defer be.mu.Unlock()
		if be.passiveT != timer {
			return // stopped meanwhile
		}
		be.passiveT = nil
		be.passiveDown = false
		be.publishLocked("passive", "passive ejection over after "+ft.String())
	})
	be.passiveT = timer
	be.publishLocked("passive", strconv.Itoa(be.maxFails)+" failed connects within "+ft.String())
}

// healthMonitor connects the health package's checker to backends, metrics
// and logs.
type healthMonitor struct {
	log     *zap.Logger
	m       *metrics.Metrics
	checker *health.Checker

	mu       sync.Mutex
	backends map[string]*backend // by key
	results  map[string][2]prometheus.Counter
}

func newHealthMonitor(log *zap.Logger, m *metrics.Metrics) *healthMonitor {
	h := &healthMonitor{log: log, m: m, backends: map[string]*backend{}, results: map[string][2]prometheus.Counter{}}
	h.checker = health.NewChecker(h.onResult, h.onChange)
	return h
}

// set starts or updates the active checks of be, a backend of p. A backend
// already checked at the same address keeps its state; a new one starts
// with the backend's current active verdict (up when never checked) and is
// checked at once.
func (h *healthMonitor) set(p *pool, be *backend) {
	k := be.key()
	spec := healthSpec(p)
	h.mu.Lock()
	h.backends[k] = be
	if _, ok := h.results[k]; !ok {
		h.results[k] = [2]prometheus.Counter{
			h.m.HealthChecks.WithLabelValues(be.pool, be.b.Address(), "success"),
			h.m.HealthChecks.WithLabelValues(be.pool, be.b.Address(), "failure"),
		}
	}
	h.mu.Unlock()
	if spec.Kind == health.KindNone {
		h.checker.Remove(k)
		be.mu.Lock()
		if !be.activeUp {
			be.activeUp = true
			be.publishLocked("active", "active checks off")
		}
		be.mu.Unlock()
		return
	}
	// The checker's initial state must be the backend's active verdict (not
	// its overall health, which a passive ejection may hold down): the
	// checker reports only changes from it.
	be.mu.Lock()
	initialUp := be.activeUp
	be.mu.Unlock()
	if err := h.checker.Set(k, be.addr, spec, initialUp); err != nil {
		h.log.Error("health check not started", zap.String("pool", be.pool), zap.String("backend", be.b.Address()), zap.Error(err))
	}
}

// remove stops the active checks of be and deletes its
// lbctl_health_checks_total series. Once it returns, no callback runs for be.
func (h *healthMonitor) remove(be *backend) {
	k := be.key()
	h.checker.Remove(k)
	h.mu.Lock()
	_, had := h.results[k]
	delete(h.backends, k)
	delete(h.results, k)
	h.mu.Unlock()
	if had {
		h.m.HealthChecks.DeleteLabelValues(be.pool, be.b.Address(), "success")
		h.m.HealthChecks.DeleteLabelValues(be.pool, be.b.Address(), "failure")
	}
}

func (h *healthMonitor) stop() { h.checker.Stop() }

func (h *healthMonitor) onResult(key string, err error) {
	h.mu.Lock()
	c, ok := h.results[key]
	h.mu.Unlock()
	if !ok {
		return
	}
	if err == nil {
		c[0].Inc()
	} else {
		c[1].Inc()
	}
}

func (h *healthMonitor) onChange(ev health.Event) {
	h.mu.Lock()
	be := h.backends[ev.Target]
	h.mu.Unlock()
	if be == nil {
		return
	}
	be.mu.Lock()
	be.activeUp = ev.Up
	be.publishLocked("active", ev.Reason)
	be.mu.Unlock()
}

func healthSpec(p *pool) health.Spec {
	hc := p.cfg.Health
	s := health.Spec{
		Kind:     health.Kind(hc.Check),
		Network:  "tcp",
		Interval: hc.Interval,
		Timeout:  hc.Timeout,
		Rise:     hc.Rise,
		Fall:     hc.Fall,
		Port:     hc.Port,
		Path:     hc.Path,
		Host:     hc.Host,
		StatusOK: hc.StatusOK,
		Send:     hc.Send,
		Expect:   hc.Expect,
	}
	if p.protocol == "udp" {
		s.Network = "udp"
	}
	if strings.TrimSpace(hc.Check) == "" {
		s.Kind = health.KindNone
	}
	return s
}

func zapPool(p string) zap.Field      { return zap.String("pool", p) }
func zapBackend(b string) zap.Field   { return zap.String("backend", b) }
func zapString(k, v string) zap.Field { return zap.String(k, v) }
