package server

import (
	"errors"
	"sort"
	"time"

	"github.com/lbctl/lbctl/balancer"
)

// Status is a snapshot of the running configuration and its counters, the
// body of the admin API's GET /api/v1/status.
type Status struct {
	Listeners []ListenerStatus `json:"listeners"`
	Pools     []PoolStatus     `json:"pools"`
}

// ListenerStatus describes one listener.
type ListenerStatus struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"`
	Bind     string `json:"bind"`
	Pool     string `json:"pool"`
	Active   int64  `json:"active"`
}

// PoolStatus describes one pool.
type PoolStatus struct {
	Name      string          `json:"name"`
	Algorithm string          `json:"algorithm"`
	Backends  []BackendStatus `json:"backends"`
}

// BackendStatus describes one backend.
type BackendStatus struct {
	Address  string `json:"address"`
	Weight   int    `json:"weight"`
	Backup   bool   `json:"backup"`
	Health   string `json:"health"` // "up" | "down"
	Admin    string `json:"admin"`  // "enabled" | "draining" | "disabled"
	Active   int64  `json:"active"`
	Total    uint64 `json:"total"`
	Failures uint64 `json:"failures"`
	// Source is where the backend comes from: "config", "api", or the
	// discovery source ("dns:NAME", "srv:NAME", "file:PATH", "etcd:PREFIX").
	Source string `json:"source"`
	// WeightOverride is the operator's weight (SetWeightOverride), which
	// Weight then shows; nil without one.
	WeightOverride *int `json:"weight_override"`
	// LastCheck is the last active check's outcome; nil before the first
	// one, or without active checks.
	LastCheck *CheckStatus `json:"last_check"`
	// LastChange is when health or admin state last changed; nil if never.
	LastChange *time.Time `json:"last_change"`
	// Removing is true while a backend removed from the pool drains.
	Removing bool `json:"removing"`
}

// Errors returned by SetBackendAdmin.
var (
	ErrUnknownPool    = errors.New("unknown pool")
	ErrUnknownBackend = errors.New("unknown backend")
	// ErrNotRunning is returned by Reload before Start and once Shutdown
	// has begun.
	ErrNotRunning = errors.New("server not running (starting or stopping)")
)

// Status returns a snapshot of listeners, pools and backends.
func (s *Server) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Listeners: []ListenerStatus{}, Pools: []PoolStatus{}}
	for _, l := range s.listeners {
		ls := l.state.Load()
		if ls == nil {
			continue
		}
		st.Listeners = append(st.Listeners, ListenerStatus{
			Name: ls.name, Protocol: l.protocol, Bind: l.addr().String(), Pool: ls.pool.name, Active: l.active.Load(),
		})
	}
	sort.Slice(st.Listeners, func(i, j int) bool { return st.Listeners[i].Name < st.Listeners[j].Name })
	for _, p := range s.pools {
		ps := PoolStatus{Name: p.name, Algorithm: p.cfg.Algorithm, Backends: []BackendStatus{}}
		for _, m := range p.bal.Members() {
			ps.Backends = append(ps.Backends, backendStatus(m))
		}
		st.Pools = append(st.Pools, ps)
	}
	sort.Slice(st.Pools, func(i, j int) bool { return st.Pools[i].Name < st.Pools[j].Name })
	return st
}

// backendStatus describes member m of the pool in service: its weight and
// backup flag are that pool's.
func backendStatus(m balancer.Member) BackendStatus {
	b := m.Backend
	h := "down"
	if b.Healthy() {
		h = "up"
	}
	return BackendStatus{
		Address: b.Address(), Weight: m.Weight, Backup: m.Backup, Health: h, Admin: b.Admin().String(),
		Active: b.Active(), Total: b.Total(), Failures: b.Failures(), Source: "config",
	}
}

// SetBackendAdmin changes one backend's administrative state. The state
// survives reloads while the backend stays in the pool.
func (s *Server) SetBackendAdmin(pool, address string, state balancer.AdminState) (BackendStatus, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pools[pool]
	if !ok {
		return BackendStatus{}, ErrUnknownPool
	}
	for _, m := range p.bal.Members() {
		if m.Backend.Address() == address {
			prev := m.Backend.Admin()
			m.Backend.SetAdmin(state)
			if prev != state {
				s.log.Info("backend admin state changed", zapPool(pool), zapBackend(address),
					zapString("from", prev.String()), zapString("to", state.String()))
			}
			return backendStatus(m), nil
		}
	}
	return BackendStatus{}, ErrUnknownBackend
}
