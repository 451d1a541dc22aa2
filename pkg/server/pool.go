package server

import (
	"fmt"
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

// pool is one generation of a configured pool: the balancer over its
// backends and the per-backend run-time state that outlives reloads.
type pool struct {
	name     string
	cfg      *config.Pool
	protocol string // "tcp" or "udp": the protocol of the listeners using it
	bal      *balancer.Pool
	backends []*backend // configured order
	byBal    map[*balancer.Backend]*backend
	health   *healthMonitor
}

// backend is the server's view of one backend: the balancer's state plus
// what decides its health (active checks and passive ejection). The same
// value is reused across reloads while pool and address stay.
type backend struct {
	pool    string
	b       *balancer.Backend
	addr    string // resolved ip:port
	upGauge prometheus.Gauge
	log     *zap.Logger

	mu          sync.Mutex
	activeUp    bool        // last active-check verdict (true when unchecked)
	passiveDown bool        // ejected by max_fails within fail_timeout
	fails       []time.Time // recent connect failures (ring, len <= max_fails)
	passiveT    *time.Timer // ends the passive ejection
	maxFails    int
	failTimeout time.Duration
	slowStart   time.Duration
	rampStop    chan struct{}
}

func (s *Server) buildPools(cfg *config.Config) (map[string]*pool, error) {
	protocols := map[string]string{}
	for _, l := range cfg.Listeners {
		if _, ok := protocols[l.Pool]; !ok || l.Protocol == "tcp" {
			protocols[l.Pool] = l.Protocol
		}
	}
	pools := make(map[string]*pool, len(cfg.Pools))
	for name, pc := range cfg.Pools {
		var old *pool
		if s.pools != nil {
			old = s.pools[name]
		}
		p := &pool{name: name, cfg: pc, protocol: protocols[name], byBal: map[*balancer.Backend]*backend{}, health: s.health}
		if p.protocol == "" {
			p.protocol = "tcp"
		}
		var bals []*balancer.Backend
		for _, bc := range pc.Backends {
			addr, err := s.resolve(bc.Address)
			if err != nil {
				return nil, fmt.Errorf("pool %s backend %s: %w", name, bc.Address, err)
			}
			var be *backend
			if old != nil {
				for _, ob := range old.backends {
					if ob.b.Address() == bc.Address {
						be = ob
					}
				}
			}
			if be == nil {
				be = &backend{
					pool:     name,
					b:        balancer.NewBackend(bc.Address, bc.Weight, bc.Backup),
					upGauge:  s.m.BackendUp.WithLabelValues(name, bc.Address),
					log:      s.log,
					activeUp: true,
				}
			}
			be.addr = addr
			p.backends = append(p.backends, be)
			p.byBal[be.b] = be
			bals = append(bals, be.b)
		}
		bal, err := balancer.New(pc.Algorithm, bals)
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
		be.b.SetWeight(bc.Weight)
		be.b.SetBackup(bc.Backup)
		be.mu.Lock()
		be.maxFails, be.failTimeout, be.slowStart = p.cfg.MaxFails, p.cfg.FailTimeout, p.cfg.SlowStart
		be.mu.Unlock()
		be.publish()
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

func (be *backend) stop() {
	be.mu.Lock()
	defer be.mu.Unlock()
	if be.passiveT != nil {
		be.passiveT.Stop()
	}
	if be.rampStop != nil {
		close(be.rampStop)
		be.rampStop = nil
	}
}

// publish recomputes the balancer's health flag from the active and
// passive verdicts. Called with be.mu not held.
func (be *backend) publish() {
	be.mu.Lock()
	up := be.activeUp && !be.passiveDown
	wasUp := be.b.Healthy()
	be.b.SetHealthy(up)
	if up {
		be.upGauge.Set(1)
	} else {
		be.upGauge.Set(0)
	}
	if up && !wasUp && be.slowStart > 0 {
		be.startRampLocked()
	}
	if !up && be.rampStop != nil {
		close(be.rampStop)
		be.rampStop = nil
		be.b.SetWeightScale(1000)
	}
	be.mu.Unlock()
}

// startRampLocked ramps the backend's effective weight from 10% to full
// over slow_start, in 20 steps.
func (be *backend) startRampLocked() {
	if be.rampStop != nil {
		close(be.rampStop)
	}
	stop := make(chan struct{})
	be.rampStop = stop
	total := be.slowStart
	be.b.SetWeightScale(100)
	go func() {
		step := total / 20
		if step < 10*time.Millisecond {
			step = 10 * time.Millisecond
		}
		t := time.NewTicker(step)
		defer t.Stop()
		start := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				f := time.Since(start)
				if f >= total {
					be.b.SetWeightScale(1000)
					be.mu.Lock()
					if be.rampStop == stop {
						be.rampStop = nil
					}
					be.mu.Unlock()
					return
				}
				be.b.SetWeightScale(100 + int(900*f/total))
			}
		}
	}()
}

// ConnectFailed implements tcpproxy.PassiveObserver: max_fails failures
// within fail_timeout eject the backend for fail_timeout.
func (p *pool) ConnectFailed(b *balancer.Backend) {
	be := p.byBal[b]
	if be == nil {
		return
	}
	be.connectFailed(time.Now())
}

func (be *backend) connectFailed(now time.Time) {
	be.mu.Lock()
	if be.maxFails <= 0 || be.passiveDown {
		be.mu.Unlock()
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
		be.mu.Unlock()
		return
	}
	be.fails = be.fails[:0]
	be.passiveDown = true
	ft := be.failTimeout
	be.passiveT = time.AfterFunc(ft, func() {
		be.mu.Lock()
		be.passiveDown = false
		be.mu.Unlock()
		be.publish()
		be.log.Info("backend passive ejection over", zap.String("pool", be.pool), zap.String("backend", be.b.Address()))
	})
	be.mu.Unlock()
	be.log.Warn("backend marked down by passive check",
		zap.String("pool", be.pool), zap.String("backend", be.b.Address()),
		zap.Int("max_fails", be.maxFails), zap.Duration("fail_timeout", ft))
	be.publish()
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
		be.activeUp = true
		be.mu.Unlock()
		be.publish()
		return
	}
	if err := h.checker.Set(k, be.addr, spec, be.b.Healthy()); err != nil {
		h.log.Error("health check not started", zap.String("pool", be.pool), zap.String("backend", be.b.Address()), zap.Error(err))
	}
}

func (h *healthMonitor) remove(be *backend) {
	k := be.key()
	h.checker.Remove(k)
	h.mu.Lock()
	delete(h.backends, k)
	delete(h.results, k)
	h.mu.Unlock()
	h.m.BackendUp.DeleteLabelValues(be.pool, be.b.Address())
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
	be.mu.Unlock()
	be.publish()
	if ev.Up {
		h.log.Info("backend up", zap.String("pool", be.pool), zap.String("backend", be.b.Address()), zap.String("reason", ev.Reason))
	} else {
		h.log.Warn("backend down", zap.String("pool", be.pool), zap.String("backend", be.b.Address()), zap.String("reason", ev.Reason))
	}
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
