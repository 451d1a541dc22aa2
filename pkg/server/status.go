package server

import (
	"errors"
	"net/netip"
	"sort"
	"time"

	"github.com/lbctl/lbctl/balancer"
)

// Status is a snapshot of the running configuration and its counters, the
// body of the admin API's GET /api/v1/status.
type Status struct {
	Version       string           `json:"version"`        // lbctl's version
	Started       time.Time        `json:"started"`        // when it started serving
	UptimeSeconds float64          `json:"uptime_seconds"` // since Started
	ConfigFile    string           `json:"config_file"`    // the file it loads and reloads
	LastReload    *ReloadStatus    `json:"last_reload"`    // nil before the first reload (runinfo.go)
	Listeners     []ListenerStatus `json:"listeners"`
	Pools         []PoolStatus     `json:"pools"`
	BGP           *BGPStatus       `json:"bgp"` // nil without [bgp] (bgp.go)
}

// ListenerStatus describes one listener.
type ListenerStatus struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"`
	Bind     string `json:"bind"`
	Pool     string `json:"pool"`
	Active   int64  `json:"active"`
	// Routes are a tcp listener's routes in order (tlsroute.go); absent
	// without routes. Pool is "" when routes alone serve the listener.
	Routes []RouteStatus `json:"routes,omitempty"`
}

// PoolStatus describes one pool.
type PoolStatus struct {
	Name      string          `json:"name"`
	Algorithm string          `json:"algorithm"`
	Backends  []BackendStatus `json:"backends"`
	// TableDigest is 16 hex digits, equal on every instance that built
	// the same pool: for maglev, the digest of its lookup table (members,
	// weights, table_size, hash_key); for the other algorithms, of its
	// algorithm, hash_key and members with their weights.
	TableDigest string `json:"table_digest"`
	// TableSize and HashKey are the pool's table_size (maglev) and
	// hash_key (ip-hash and maglev); absent for the other algorithms.
	TableSize int    `json:"table_size,omitempty"`
	HashKey   string `json:"hash_key,omitempty"`
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
	s.info.fill(&st, s.opts.Version, s.cfg.Load().File, time.Now())
	for _, l := range s.listeners {
		ls := l.state.Load()
		if ls == nil {
			continue
		}
		st.Listeners = append(st.Listeners, ListenerStatus{
			Name: ls.name, Protocol: l.protocol, Bind: l.addr().String(), Pool: ls.poolName(), Active: l.active.Load(),
			Routes: ls.routeStatus(),
		})
	}
	sort.Slice(st.Listeners, func(i, j int) bool { return st.Listeners[i].Name < st.Listeners[j].Name })
	for _, lp := range s.pools {
		ps := PoolStatus{Name: lp.name, Algorithm: lp.cfg.Algorithm, Backends: []BackendStatus{},
			TableDigest: lp.gen.bal.TableDigest(), TableSize: lp.gen.bal.TableSize(), HashKey: lp.gen.bal.HashKey()}
		for _, be := range lp.gen.backends {
			ps.Backends = append(ps.Backends, backendStatus(be))
		}
		var removing []BackendStatus
		for _, be := range lp.byAddr {
			if be.removing {
				removing = append(removing, backendStatus(be))
			}
		}
		sort.Slice(removing, func(i, j int) bool { return removing[i].Address < removing[j].Address })
		ps.Backends = append(ps.Backends, removing...)
		st.Pools = append(st.Pools, ps)
	}
	sort.Slice(st.Pools, func(i, j int) bool { return st.Pools[i].Name < st.Pools[j].Name })
	st.BGP = s.bgpStatus()
	return st
}

// backendStatus describes be: a member of its pool's generation in
// service (its weight and backup flag are that generation's), or a
// backend that drains after its removal. Called with s.mu held.
func backendStatus(be *backend) BackendStatus {
	b := be.b
	h := "down"
	if b.Healthy() {
		h = "up"
	}
	st := BackendStatus{
		Address: b.Address(), Weight: be.weight, Backup: be.backup, Health: h, Admin: b.Admin().String(),
		Active: b.Active(), Total: b.Total(), Failures: b.Failures(), Source: be.source, Removing: be.removing,
	}
	if be.override != nil {
		w := *be.override
		st.WeightOverride = &w
	}
	be.mu.Lock()
	if !be.lastChange.IsZero() {
		t := be.lastChange
		st.LastChange = &t
	}
	if be.lastCheck != nil {
		c := *be.lastCheck
		st.LastCheck = &c
	}
	be.mu.Unlock()
	return st
}

// lookup finds the backend address names in pool: by its IP:port, or by
// its address as configured (a host name). inPool: only a member of the
// generation in service, not one that drains. Called with s.mu held.
func (s *Server) lookup(pool, address string, inPool bool) (*livePool, *backend, error) {
	lp, ok := s.pools[pool]
	if !ok {
		return nil, nil, ErrUnknownPool
	}
	var be *backend
	if ap, err := netip.ParseAddrPort(address); err == nil {
		be = lp.byAddr[unmap(ap)]
	}
	if be == nil {
		for _, c := range lp.byAddr {
			if c.b.Address() == address {
				be = c
				break
			}
		}
	}
	if be == nil || (inPool && !be.inGen) {
		return lp, nil, ErrUnknownBackend
	}
	return lp, be, nil
}

// SetBackendAdmin changes one backend's administrative state. The state
// survives reloads and refreshes while the backend stays in the pool.
func (s *Server) SetBackendAdmin(pool, address string, state balancer.AdminState) (BackendStatus, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, be, err := s.lookup(pool, address, true)
	if err != nil {
		return BackendStatus{}, err
	}
	prev := be.b.Admin()
	be.b.SetAdmin(state)
	be.publishSettings()
	if prev != state {
		be.mu.Lock()
		be.lastChange = time.Now()
		be.mu.Unlock()
		s.log.Info("backend admin state changed", zapPool(pool), zapBackend(be.b.Address()),
			zapString("from", prev.String()), zapString("to", state.String()))
		s.saveState()
	}
	return backendStatus(be), nil
}
