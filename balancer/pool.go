package balancer

import (
	"fmt"
	"net/netip"
)

// Algorithm names, as written in the config file.
const (
	RoundRobin       = "round-robin"
	LeastConnections = "least-connections"
	IPHash           = "ip-hash"
)

// Algorithms returns the algorithm names [New] accepts, for validation
// messages. The caller may modify the returned slice.
func Algorithms() []string {
	return []string{RoundRobin, LeastConnections, IPHash}
}

// Policy is one selection algorithm over a fixed list of candidates, fixed
// when the policy is built. Pick returns an eligible candidate that is not in
// tried (a nil tried is empty), or nil if there is none. Pick never changes
// tried; the caller adds the backend it attempts. Policies are safe for
// concurrent use.
//
// Calling Pick through this interface makes tried escape to the heap;
// [Pool.Pick] calls the built-in policies directly and does not allocate.
type Policy interface {
	Pick(client netip.Addr, tried *Tried) *Backend
}

// NewPolicy returns the policy for algorithm over candidates. Unlike a [Pool],
// a policy makes no difference between primaries and backups.
func NewPolicy(algorithm string, candidates []*Backend) (Policy, error) {
	switch algorithm {
	case RoundRobin:
		return newRoundRobin(candidates), nil
	case LeastConnections:
		return newLeastConn(candidates), nil
	case IPHash:
		return newIPHash(candidates), nil
	}
	return nil, fmt.Errorf("%w %q (want round-robin, least-connections or ip-hash)", ErrUnknownAlgorithm, algorithm)
}

// Pool is an immutable set of backends with a selection algorithm. It is
// safe for concurrent use. Build a new Pool to change the list, the algorithm
// or which backends are backups; the backends' own state (health, admin,
// weight, scale, counters) may change at any time and Pick sees it at once.
type Pool struct {
	algorithm string
	backends  []*Backend // configured order
	primary   Policy     // over the primaries, nil if none
	backup    Policy     // over the backups, nil if none
}

// New builds a pool over backends, in configured order, with algorithm
// "round-robin", "least-connections" or "ip-hash" (see [Algorithms]).
// It reads each backend's Backup flag now, and keeps its own copy of the
// slice. Backends must be non-nil with distinct addresses. An empty list is
// allowed; Pick then always returns nil.
func New(algorithm string, backends []*Backend) (*Pool, error) {
	seen := make(map[string]struct{}, len(backends))
	var primaries, backups []*Backend
	for i, b := range backends {
		if b == nil {
			return nil, fmt.Errorf("new %s pool: backend %d is nil", algorithm, i)
		}
		if _, dup := seen[b.Address()]; dup {
			return nil, fmt.Errorf("new %s pool: duplicate backend address %q", algorithm, b.Address())
		}
		seen[b.Address()] = struct{}{}
		if b.Backup() {
			backups = append(backups, b)
		} else {
			primaries = append(primaries, b)
		}
	}
	p := &Pool{algorithm: algorithm, backends: append([]*Backend(nil), backends...)}
	var err error
	if p.primary, err = newPolicyOrNil(algorithm, primaries); err != nil {
		return nil, fmt.Errorf("new pool: %w", err)
	}
	if p.backup, err = newPolicyOrNil(algorithm, backups); err != nil {
		return nil, fmt.Errorf("new pool: %w", err)
	}
	return p, nil
}

// newPolicyOrNil checks the algorithm name always and builds a policy only
// for a non-empty candidate list.
func newPolicyOrNil(algorithm string, candidates []*Backend) (Policy, error) {
	pol, err := NewPolicy(algorithm, candidates)
	if err != nil || len(candidates) == 0 {
		return nil, err
	}
	return pol, nil
}

// Pick chooses the backend for a new connection from client. It chooses
// among the eligible primaries not in tried; if there is none, among the
// eligible backups not in tried. It returns nil when nothing is left. A nil
// tried is an empty set. client is used by ip-hash only; the zero Addr is
// hashed as all-zero bytes.
func (p *Pool) Pick(client netip.Addr, tried *Tried) *Backend {
	if b := pick(p.primary, client, tried); b != nil {
		return b
	}
	return pick(p.backup, client, tried)
}

// pick calls the built-in policies by their concrete types, so the compiler
// can see that tried does not escape and callers keep it on the stack. A Pool
// holds nothing else (nil means no candidates).
func pick(pol Policy, client netip.Addr, tried *Tried) *Backend {
	switch pol := pol.(type) {
	case *roundRobin:
		return pol.Pick(client, tried)
	case *leastConn:
		return pol.Pick(client, tried)
	case *ipHash:
		return pol.Pick(client, tried)
	}
	return nil
}

// Backends returns the backends in configured order. Do not modify the slice.
func (p *Pool) Backends() []*Backend { return p.backends }

// Algorithm returns the algorithm name given to New.
func (p *Pool) Algorithm() string { return p.algorithm }
