package server

// runtime.go: the changes an operator makes to a pool's backends at run
// time through the admin API and the control socket: backends added and
// removed (source "api"), weight overrides and kills. The admin state
// (SetBackendAdmin) is in status.go.

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"github.com/lbctl/lbctl/pkg/udpproxy"
	"go.uber.org/zap"
)

// BackendSpec is a backend added at run time (source "api").
type BackendSpec struct {
	// Address is the backend's "IP:port"; host names are not accepted.
	Address string
	// Weight is 0..1,000,000 (the admin API fills in its default, 1).
	Weight int
	// Backup backends take connections only while no primary is eligible.
	Backup bool
}

// Errors of the run-time changes, beside ErrUnknownPool and
// ErrUnknownBackend (status.go).
var (
	// ErrBackendExists is returned by AddBackend for an address already in
	// the pool, whatever its source.
	ErrBackendExists = errors.New("backend already in the pool")
	// ErrNotAPIBackend is returned by RemoveBackend for a backend whose
	// source is not "api" (the config file or a discovery source owns it).
	ErrNotAPIBackend = errors.New("backend not added through the API")
)

// BadRequestError is a run-time change that cannot be made as asked: an
// address that is not IP:port, a weight out of range. The admin API answers
// it with 400.
type BadRequestError struct {
	Field  string // "address", "weight"
	Reason string
}

func (e *BadRequestError) Error() string { return fmt.Sprintf("bad %s: %s", e.Field, e.Reason) }

func badRequest(field, format string, args ...any) error {
	return &BadRequestError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// CheckStatus is the outcome of a backend's last active check, in status.
type CheckStatus struct {
	Result          string    `json:"result"` // "success" | "failure"
	Reason          string    `json:"reason"`
	DurationSeconds float64   `json:"duration_seconds"`
	At              time.Time `json:"at"` // RFC 3339
}

// AddBackend adds a backend to pool (source "api"): it takes connections
// at once (through slow_start when set) and is checked at once. The
// address must be IP:port; ErrBackendExists when it is in the pool
// already, whatever its source.
func (s *Server) AddBackend(pool string, spec BackendSpec) (BackendStatus, error) {
	ap, err := parseBackendAddr(spec.Address)
	if err != nil {
		return BackendStatus{}, err
	}
	if err := checkWeight(spec.Weight); err != nil {
		return BackendStatus{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	lp, ok := s.pools[pool]
	if !ok {
		return BackendStatus{}, ErrUnknownPool
	}
	if be := lp.byAddr[ap]; be != nil && be.inGen {
		return BackendStatus{}, ErrBackendExists
	}
	for _, e := range lp.api {
		if e.ap == ap {
			return BackendStatus{}, ErrBackendExists
		}
	}
	lp.api = append(lp.api, entry{ap: ap, weight: spec.Weight, backup: spec.Backup, source: sourceAPI})
	if err := s.refresh(lp); err != nil {
		lp.api = lp.api[:len(lp.api)-1]
		return BackendStatus{}, err
	}
	be := lp.byAddr[ap]
	s.log.Info("backend added", zapPool(pool), zapBackend(be.b.Address()), zap.Int("weight", spec.Weight),
		zap.Bool("backup", spec.Backup))
	s.saveState()
	return backendStatus(be), nil
}

// RemoveBackend removes a backend that AddBackend added (ErrNotAPIBackend
// for any other): it takes no new connection, and its established ones
// drain as after any removal (drain_timeout).
func (s *Server) RemoveBackend(pool, address string) (BackendStatus, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lp, be, err := s.lookup(pool, address, true)
	if err != nil {
		return BackendStatus{}, err
	}
	if be.source != sourceAPI {
		return BackendStatus{}, ErrNotAPIBackend
	}
	i := slices.IndexFunc(lp.api, func(e entry) bool { return e.ap == be.ap })
	if i < 0 {
		return BackendStatus{}, ErrNotAPIBackend
	}
	removed := lp.api[i]
	lp.api = slices.Delete(lp.api, i, i+1)
	if err := s.refresh(lp); err != nil {
		lp.api = slices.Insert(lp.api, i, removed)
		return BackendStatus{}, err
	}
	s.saveState()
	return backendStatus(be), nil
}

// SetWeightOverride sets the weight of a backend whatever its source
// says, or with nil goes back to that weight. The override outlives
// reloads and refreshes while the backend stays in the pool.
func (s *Server) SetWeightOverride(pool, address string, weight *int) (BackendStatus, error) {
	if weight != nil {
		if err := checkWeight(*weight); err != nil {
			return BackendStatus{}, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	lp, be, err := s.lookup(pool, address, true)
	if err != nil {
		return BackendStatus{}, err
	}
	prev := be.override
	if weight != nil {
		w := *weight
		be.override = &w
	} else {
		be.override = nil
	}
	if err := s.refresh(lp); err != nil {
		be.override = prev
		return BackendStatus{}, err
	}
	if weight != nil {
		s.log.Info("backend weight overridden", zapPool(pool), zapBackend(be.b.Address()), zap.Int("weight", *weight))
	} else {
		s.log.Info("backend weight override reset", zapPool(pool), zapBackend(be.b.Address()), zap.Int("weight", be.weight))
	}
	s.saveState()
	return backendStatus(be), nil
}

// KillBackend resets every established TCP connection of a backend (both
// sides get a reset; the access log says end "killed") and ends every UDP
// session, and returns how many it ended. A backend that drains after its
// removal can be killed too. New connections are not affected.
func (s *Server) KillBackend(pool, address string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, be, err := s.lookup(pool, address, false)
	if err != nil {
		return 0, err
	}
	n := be.tcpConns.Kill(tcpproxy.EndKilled) + be.udpConns.Kill(udpproxy.EndKilled)
	s.log.Info("backend connections killed", zapPool(pool), zapBackend(be.b.Address()), zap.Int("killed", n))
	return n, nil
}

// parseBackendAddr checks a run-time backend address: a literal IP:port.
func parseBackendAddr(address string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return netip.AddrPort{}, badRequest("address", "%q is not IP:port", address)
	}
	if ap.Port() == 0 || !ap.Addr().IsValid() || ap.Addr().IsUnspecified() {
		return netip.AddrPort{}, badRequest("address", "%q: need a host IP and a port", address)
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, badRequest("address", "%q: zones are not supported", address)
	}
	return unmap(ap), nil
}

func checkWeight(w int) error {
	if w < 0 || w > balancer.MaxWeight {
		return badRequest("weight", "%d is not within 0..%d", w, balancer.MaxWeight)
	}
	return nil
}
