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

// Member is a backend as one [Pool] sees it. Its weight and whether it is a
// backup belong to the pool (to the configuration that built it), not to
// the Backend, whose run-time state every pool that holds it shares.
type Member struct {
	Backend *Backend
	// Weight is the member's share of new connections, 0..MaxWeight (New
	// clamps); 0 takes none.
	Weight int
	// Backup members take connections only while no primary is eligible.
	Backup bool
}

// Pool is an immutable set of members with a selection algorithm. It is
// safe for concurrent use. Build a new Pool to change the members, their
// weights, which are backups or the algorithm; the backends' own state
// (health, admin, slow-start scale, counters) may change at any time and
// Pick sees it at once.
type Pool struct {
	algorithm string
	members   []Member   // configured order, weights clamped
	backends  []*Backend // the members' backends, same order
	primary   tier
	backup    tier
}

// New builds a pool over members, in configured order, with algorithm
// "round-robin", "least-connections" or "ip-hash" (see [Algorithms]). It
// keeps its own copy of the slice. Backends must be non-nil with distinct
// addresses. An empty list is allowed; Pick then always returns nil.
func New(algorithm string, members []Member) (*Pool, error) {
	if !knownAlgorithm(algorithm) {
		return nil, fmt.Errorf("new pool: %w %q (want round-robin, least-connections or ip-hash)", ErrUnknownAlgorithm, algorithm)
	}
	p := &Pool{
		algorithm: algorithm,
		members:   make([]Member, len(members)),
		backends:  make([]*Backend, len(members)),
	}
	seen := make(map[string]struct{}, len(members))
	var primaries, backups []candidate
	for i, m := range members {
		if m.Backend == nil {
			return nil, fmt.Errorf("new %s pool: backend %d is nil", algorithm, i)
		}
		if _, dup := seen[m.Backend.Address()]; dup {
			return nil, fmt.Errorf("new %s pool: duplicate backend address %q", algorithm, m.Backend.Address())
		}
		seen[m.Backend.Address()] = struct{}{}
		m.Weight = min(max(m.Weight, 0), MaxWeight)
		p.members[i], p.backends[i] = m, m.Backend
		c := candidate{b: m.Backend, weight: uint32(m.Weight)}
		if m.Backup {
			backups = append(backups, c)
		} else {
			primaries = append(primaries, c)
		}
	}
	p.primary = newTier(algorithm, primaries)
	p.backup = newTier(algorithm, backups)
	return p, nil
}

func knownAlgorithm(algorithm string) bool {
	switch algorithm {
	case RoundRobin, LeastConnections, IPHash:
		return true
	}
	return false
}

// candidate is one member in a tier: the backend and its weight in this pool.
type candidate struct {
	b      *Backend
	weight uint32
}

// pickWeight is the weight the algorithms use; see Backend.pickWeight.
func (c candidate) pickWeight() uint64 { return c.b.pickWeight(c.weight) }

// tier is one rank of a pool's members, its primaries or its backups, and
// the state of the pool's algorithm over them: exactly one field is set, or
// none for an empty rank. Pick calls the algorithms by their concrete
// types, so the compiler can see that tried does not escape and callers
// keep it on the stack.
type tier struct {
	rr *roundRobin
	lc *leastConn
	ih *ipHash
}

func newTier(algorithm string, candidates []candidate) tier {
	if len(candidates) == 0 {
		return tier{}
	}
	switch algorithm {
	case RoundRobin:
		return tier{rr: newRoundRobin(candidates)}
	case LeastConnections:
		return tier{lc: newLeastConn(candidates)}
	}
	return tier{ih: newIPHash(candidates)}
}

func (t *tier) pick(client netip.Addr, tried *Tried) *Backend {
	switch {
	case t.rr != nil:
		return t.rr.pick(tried)
	case t.lc != nil:
		return t.lc.pick(tried)
	case t.ih != nil:
		return t.ih.pick(client, tried)
	}
	return nil
}

// Pick chooses the backend for a new connection from client. It chooses
// among the eligible primaries not in tried; if there is none, among the
// eligible backups not in tried. It returns nil when nothing is left. A nil
// tried is an empty set. client is used by ip-hash only; the zero Addr is
// hashed as all-zero bytes. Pick does not allocate.
func (p *Pool) Pick(client netip.Addr, tried *Tried) *Backend {
	if b := p.primary.pick(client, tried); b != nil {
		return b
	}
	return p.backup.pick(client, tried)
}

// Members returns the members in configured order, with their weights
// clamped to 0..MaxWeight. Do not modify the slice.
func (p *Pool) Members() []Member { return p.members }

// Backends returns the members' backends in configured order. Do not
// modify the slice.
func (p *Pool) Backends() []*Backend { return p.backends }

// Algorithm returns the algorithm name given to New.
func (p *Pool) Algorithm() string { return p.algorithm }
