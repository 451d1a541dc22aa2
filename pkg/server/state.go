package server

// state.go: the state file in service (its format is statefile.go). At
// start the server reads it: the backends added through the API join
// their pools, and admin states and weight overrides wait, per pool and
// address, for their backend (a discovered one may appear later) and are
// applied when it joins. After every change of those (SetBackendAdmin,
// SetWeightOverride, AddBackend, RemoveBackend) the server writes it
// again, with what is pending.

import (
	"maps"

	"github.com/lbctl/lbctl/balancer"
	"go.uber.org/zap"
)

// loadState reads the state file of the configuration in force, if there
// is one, into the pools. Called by Start with s.mu held, once the pools
// are in service and before any source has delivered.
func (s *Server) loadState() {
	path := s.cfg.Load().StateFile
	if path == "" {
		return
	}
	st, err := LoadState(path, s.log)
	if err != nil {
		s.log.Error("state file not read, starting without saved state", zap.Error(err))
		return
	}
	s.applyState(st, "state file")
}

// applyState puts st into the pools: the API backends join (those already
// there are skipped), admin states and weight overrides wait for their
// backend and apply to those present. from names where st came from, for
// the log. Called with s.mu held, once the pools are in service.
func (s *Server) applyState(st State, from string) {
	for name, ps := range st.Pools {
		lp := s.pools[name]
		if lp == nil {
			s.log.Info(from+": pool no longer configured, its saved state is ignored", zapPool(name))
			continue
		}
		if lp.pendAdmin == nil {
			lp.pendAdmin = map[string]balancer.AdminState{}
		}
		if lp.pendOverride == nil {
			lp.pendOverride = map[string]int{}
		}
		maps.Copy(lp.pendAdmin, ps.Admin)
		maps.Copy(lp.pendOverride, ps.WeightOverrides)
	specs:
		for _, spec := range ps.Backends {
			ap, err := parseBackendAddr(spec.Address)
			if err == nil {
				err = checkWeight(spec.Weight)
			}
			if err != nil {
				s.log.Warn(from+": backend ignored", zapPool(name), zapBackend(spec.Address), zap.Error(err))
				continue
			}
			for _, e := range lp.api {
				if e.ap == ap {
					continue specs // there already (the state file had it)
				}
			}
			lp.api = append(lp.api, entry{ap: ap, weight: spec.Weight, backup: spec.Backup, source: sourceAPI})
		}
		for _, be := range lp.byAddr {
			lp.pending(be, true)
			if be.inGen {
				be.publishSettings()
			}
		}
		// A new generation when API backends joined or weights changed.
		if err := s.refresh(lp); err != nil {
			s.log.Error(from+": pool not refreshed", zapPool(name), zap.Error(err))
		}
		s.log.Info(from+" read", zapPool(name), zap.Int("api_backends", len(ps.Backends)),
			zap.Int("admin_states", len(ps.Admin)), zap.Int("weight_overrides", len(ps.WeightOverrides)))
	}
}

// pending applies the saved admin state and weight override waiting for
// be's address (as configured, or IP:port), and with consume forgets
// them. It reports whether there was any. Called with s.mu held.
func (lp *livePool) pending(be *backend, consume bool) bool {
	found := false
	for _, k := range [2]string{be.b.Address(), be.addr} {
		if a, ok := lp.pendAdmin[k]; ok {
			be.b.SetAdmin(a)
			found = true
			if consume {
				delete(lp.pendAdmin, k)
			}
		}
		if w, ok := lp.pendOverride[k]; ok {
			w := clampWeight(w)
			be.override = &w
			found = true
			if consume {
				delete(lp.pendOverride, k)
			}
		}
	}
	return found
}

// saveState writes the state file, when there is one. Called with s.mu
// held after a change it keeps; a failure is logged.
func (s *Server) saveState() {
	path := s.cfg.Load().StateFile
	if path == "" {
		return
	}
	if err := SaveState(path, s.snapshotState()); err != nil {
		s.log.Error("state file not written", zap.String("path", path), zap.Error(err))
	}
}

// snapshotState is what the state file keeps, as it is now: the admin
// states, weight overrides and API backends of every pool, and the saved
// ones still waiting for their backend. Called with s.mu held.
func (s *Server) snapshotState() State {
	st := State{Pools: map[string]PoolState{}}
	for name, lp := range s.pools {
		ps := PoolState{Admin: map[string]balancer.AdminState{}, WeightOverrides: map[string]int{}}
		for k, v := range lp.pendAdmin {
			ps.Admin[k] = v
		}
		for k, v := range lp.pendOverride {
			ps.WeightOverrides[k] = v
		}
		for _, be := range lp.byAddr {
			if !be.inGen {
				continue
			}
			if a := be.b.Admin(); a != balancer.Enabled {
				ps.Admin[be.b.Address()] = a
			}
			if be.override != nil {
				ps.WeightOverrides[be.b.Address()] = *be.override
			}
		}
		for _, e := range lp.api {
			ps.Backends = append(ps.Backends, BackendSpec{Address: e.ap.String(), Weight: e.weight, Backup: e.backup})
		}
		if len(ps.Admin)+len(ps.WeightOverrides)+len(ps.Backends) > 0 {
			st.Pools[name] = ps
		}
	}
	return st
}
