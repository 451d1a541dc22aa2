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
	Maglev           = "maglev"
)

// Hash keys of ip-hash and maglev pools ([WithHashKey]): what of the client
// decides its backend.
const (
	HashKeyIP     = "ip"      // the client's IP address (the default)
	HashKeyIPPort = "ip-port" // its IP address and port
)

// Algorithms returns the algorithm names [New] accepts, for validation
// messages. The caller may modify the returned slice.
func Algorithms() []string {
	return []string{RoundRobin, LeastConnections, IPHash, Maglev}
}

// Option sets a parameter of the algorithm of a pool [New] builds.
type Option func(*options)

type options struct {
	tableSize int
	hashKey   string
}

// WithTableSize sets the size of a maglev pool's lookup table: a prime in
// [MinTableSize, MaxTableSize]; the default is [DefaultTableSize]. Other
// algorithms ignore it.
func WithTableSize(m int) Option { return func(o *options) { o.tableSize = m } }

// WithHashKey sets what an ip-hash or maglev pool hashes: [HashKeyIP] (the
// default) or [HashKeyIPPort]. Other algorithms ignore it.
func WithHashKey(k string) Option { return func(o *options) { o.hashKey = k } }

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
	hashKey   string     // "ip" or "ip-port" for ip-hash and maglev, else ""
	tableSize int        // maglev only, else 0
	digest    string     // see TableDigest
	primary   tier
	backup    tier
}

// New builds a pool over members, in configured order, with algorithm
// "round-robin", "least-connections", "ip-hash" or "maglev" (see
// [Algorithms]). It keeps its own copy of the slice. Backends must be
// non-nil with distinct addresses. An empty list is allowed; Pick then
// always returns nil. A maglev pool builds its lookup tables here: New
// takes milliseconds for it (see BenchmarkMaglevBuild), so call it off the
// data path and swap the pool in.
func New(algorithm string, members []Member, opts ...Option) (*Pool, error) {
	if !knownAlgorithm(algorithm) {
		return nil, fmt.Errorf("new pool: %w %q (want round-robin, least-connections, ip-hash or maglev)", ErrUnknownAlgorithm, algorithm)
	}
	o := options{tableSize: DefaultTableSize, hashKey: HashKeyIP}
	for _, opt := range opts {
		opt(&o)
	}
	if o.hashKey != HashKeyIP && o.hashKey != HashKeyIPPort {
		return nil, fmt.Errorf("new %s pool: unknown hash key %q (want ip or ip-port)", algorithm, o.hashKey)
	}
	if algorithm == Maglev && (o.tableSize < MinTableSize || o.tableSize > MaxTableSize || !IsPrime(o.tableSize)) {
		return nil, fmt.Errorf("new maglev pool: table size %d is not a prime in [%d, %d]", o.tableSize, MinTableSize, MaxTableSize)
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
	switch algorithm {
	case IPHash:
		p.hashKey = o.hashKey
	case Maglev:
		p.hashKey, p.tableSize = o.hashKey, o.tableSize
	}
	p.primary = newTier(algorithm, primaries, o)
	p.backup = newTier(algorithm, backups, o)
	if algorithm == Maglev {
		p.digest = tableDigest(o.tableSize, o.hashKey, p.primary.mg, p.backup.mg)
	} else {
		p.digest = membersDigest(algorithm, p.hashKey, p.members)
	}
	return p, nil
}

func knownAlgorithm(algorithm string) bool {
	switch algorithm {
	case RoundRobin, LeastConnections, IPHash, Maglev:
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
	mg *maglev
}

func newTier(algorithm string, candidates []candidate, o options) tier {
	if len(candidates) == 0 {
		return tier{}
	}
	switch algorithm {
	case RoundRobin:
		return tier{rr: newRoundRobin(candidates)}
	case LeastConnections:
		return tier{lc: newLeastConn(candidates)}
	case Maglev:
		return tier{mg: newMaglev(candidates, o.tableSize, o.hashKey == HashKeyIPPort)}
	}
	return tier{ih: newIPHash(candidates, o.hashKey == HashKeyIPPort)}
}

func (t *tier) pick(client netip.AddrPort, tried *Tried) *Backend {
	switch {
	case t.rr != nil:
		return t.rr.pick(tried)
	case t.lc != nil:
		return t.lc.pick(tried)
	case t.ih != nil:
		return t.ih.pick(client, tried)
	case t.mg != nil:
		return t.mg.pick(client, tried)
	}
	return nil
}

// Pick chooses the backend for a new connection from client. It chooses
// among the eligible primaries not in tried; if there is none, among the
// eligible backups not in tried. It returns nil when nothing is left. A nil
// tried is an empty set. client is used by ip-hash and maglev only: its
// address, and its port too with hash key "ip-port"; the zero Addr is
// hashed as all-zero bytes. Pick does not allocate.
func (p *Pool) Pick(client netip.AddrPort, tried *Tried) *Backend {
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

// HashKey returns the hash key of an ip-hash or maglev pool ("ip" or
// "ip-port"), or "" for the other algorithms.
func (p *Pool) HashKey() string { return p.hashKey }

// TableSize returns the size of a maglev pool's lookup table, or 0.
func (p *Pool) TableSize() int { return p.tableSize }

// TableDigest returns 16 hex digits that are equal for pools built alike
// in any process. For maglev, the digest of its lookup tables: a SHA-256
// over the table size, the hash key, and each tier's members' addresses
// and table entries. Pools built from the same members (addresses,
// weights, backup flags; in any order), table size and hash key have the
// same digest, and then pick alike for every client whose backend is
// eligible in both. For the other algorithms, a SHA-256 over the
// algorithm, the hash key and the members (sorted by address) with their
// weights and backup flags.
func (p *Pool) TableDigest() string { return p.digest }
