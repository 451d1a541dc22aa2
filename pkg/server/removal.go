package server

// removal.go: a backend that leaves its pool's set (a reload, a source or
// the API removed it) drains. It takes no new connection from the moment
// the generation without it is in service; its established connections
// and UDP sessions run on, for the pool's drain_timeout at most (0: until
// they end), and are then reset. Status shows it with removing: true
// meanwhile, and it disappears once its last connection has ended. An
// address that comes back while its backend drains is that same backend
// again, with its state.
//
// Its metric series and active checks end at the removal (series follow
// the pool's set), so a backend that comes back starts them afresh.

import (
	"time"

	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"github.com/lbctl/lbctl/pkg/udpproxy"
	"go.uber.org/zap"
)

// reapEvery is how often draining backends are looked at: whether their
// last connection has ended, or their drain_timeout has passed.
const reapEvery = 100 * time.Millisecond

// remove starts the removal of be, which left lp's generation in service.
// Called with s.mu held.
func (s *Server) remove(lp *livePool, be *backend) {
	s.health.remove(be)
	be.mu.Lock()
	if be.upGauge != nil {
		be.m.BackendUp.DeleteLabelValues(be.pool, be.b.Address())
		be.upGauge = nil
	}
	be.mu.Unlock()
	s.forgetBackendSeries(be)
	if be.b.Active() == 0 {
		s.finalize(lp, be)
		s.log.Info("backend removed", zapPool(lp.name), zapBackend(be.b.Address()))
		return
	}
	be.removing, be.killed = true, false
	be.drainAt = time.Time{}
	if d := lp.cfg.DrainTimeout; d > 0 {
		be.drainAt = time.Now().Add(d)
	}
	s.draining[be] = lp
	s.log.Info("backend removed, draining its connections", zapPool(lp.name), zapBackend(be.b.Address()),
		zap.Int64("active", be.b.Active()), zap.Duration("drain_timeout", lp.cfg.DrainTimeout))
	if !s.reaping && !s.stopping.Load() {
		s.reaping = true
		s.bg.Add(1)
		go s.reap()
	}
}

// unremove takes be, draining, back into its pool. Called with s.mu held.
func (s *Server) unremove(be *backend) {
	be.removing, be.killed = false, false
	delete(s.draining, be)
	s.log.Info("backend back in the pool while it drained", zapPool(be.pool), zapBackend(be.b.Address()))
}

// finalize forgets be for good: timers, series, and its place in lp.
// Called with s.mu held.
func (s *Server) finalize(lp *livePool, be *backend) {
	s.health.remove(be)
	be.stop()
	s.forgetBackendSeries(be)
	if lp.byAddr[be.ap] == be {
		delete(lp.byAddr, be.ap)
		lp.balMu.Lock()
		delete(lp.byBal, be.b)
		lp.balMu.Unlock()
	}
	delete(s.draining, be)
	be.removing, be.inGen = false, false
}

// forgetBackendSeries deletes the metric series of be and drops the
// targets that hold their handles. Called with s.mu held.
func (s *Server) forgetBackendSeries(be *backend) {
	for l := range be.tcpTargets {
		s.m.ForgetBackend(l, be.pool, be.b.Address())
	}
	for l := range be.udpTargets {
		s.m.ForgetBackend(l, be.pool, be.b.Address())
	}
	be.tcpTargets, be.udpTargets = nil, nil
	s.m.ForgetPoolBackend(be.pool, be.b.Address())
	be.settings = settingsPub{}
}

// reap runs while backends drain: it forgets those whose last connection
// has ended and resets the connections of those whose drain_timeout has
// passed.
func (s *Server) reap() {
	defer s.bg.Done()
	t := time.NewTicker(reapEvery)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		s.mu.Lock()
		now := time.Now()
		for be, lp := range s.draining {
			switch {
			case be.b.Active() == 0:
				s.finalize(lp, be)
				s.log.Info("backend drained", zapPool(lp.name), zapBackend(be.b.Address()))
			case !be.killed && !be.drainAt.IsZero() && !now.Before(be.drainAt):
				be.killed = true
				n := be.tcpConns.Kill(tcpproxy.EndDrainTimeout) + be.udpConns.Kill(udpproxy.EndDrainTimeout)
				s.log.Info("drain_timeout reached, connections of a removed backend reset", zapPool(lp.name),
					zapBackend(be.b.Address()), zap.Int("reset", n))
			}
		}
		if len(s.draining) == 0 {
			s.reaping = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}
