package server

// pool.go: one generation of a configured pool. A reload builds a new
// generation (buildPools) over the backends it keeps by address, and start
// commits it; the per-backend state that outlives reloads is in
// backendstate.go, the active checks in checks.go.

import (
	"fmt"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/config"
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
	addrs    []string   // resolved ip:port of each backend, committed to backend.addr by start
	byBal    map[*balancer.Backend]*backend
	health   *healthMonitor
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
		var members []balancer.Member
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
					b:        balancer.NewBackend(bc.Address),
					log:      s.log,
					m:        s.m,
					activeUp: true,
				}
			}
			p.backends = append(p.backends, be)
			p.addrs = append(p.addrs, addr)
			p.byBal[be.b] = be
			// Weight and backup belong to this generation: the running one
			// keeps its own until start commits this one.
			members = append(members, balancer.Member{Backend: be.b, Weight: bc.Weight, Backup: bc.Backup})
		}
		bal, err := balancer.New(pc.Algorithm, members)
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
		be.addr = p.addrs[i]
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

// ConnectFailed implements tcpproxy.PassiveObserver (and udpproxy's): max_fails
// failures within fail_timeout eject the backend for fail_timeout.
func (p *pool) ConnectFailed(b *balancer.Backend) {
	be := p.byBal[b]
	if be == nil {
		return
	}
	be.connectFailed(time.Now())
}

func zapPool(p string) zap.Field      { return zap.String("pool", p) }
func zapBackend(b string) zap.Field   { return zap.String("backend", b) }
func zapString(k, v string) zap.Field { return zap.String(k, v) }
