package balancer

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
)

// Maglev lookup tables (Eisenbud et al., "Maglev: A Fast and Reliable
// Software Network Load Balancer", NSDI 2016, section 3.4), weighted as in
// Katran: every lbctl instance with the same configured pool builds the
// same table, so a client keeps its backend whichever instance receives its
// flow.
//
// Building. The tier's members are sorted by address (the order a config
// file, a DNS answer or the API gave them in does not matter). Each member
// of weight > 0 has a permutation of the M table entries, from two fixed
// hashes of its address: offset in [0, M) and skip in [1, M). The members
// take turns in rounds; in each round every member adds its weight to a
// running sum and takes a turn whenever the sum reaches the largest weight
// (then loses it), so members of weight w take w/wmax turns per round. A
// turn claims the next entry of the member's permutation not yet claimed.
// When all M entries are claimed, each member holds a share of the table
// proportional to its weight (within one entry), and adding or removing a
// member moves little more than that member's own share.
//
// The table is built from the pool's backends as configured (with weight
// overrides, which are configuration too): health and admin state do not
// change it, so two instances that see different health states still hold
// identical tables. Members of weight 0 own no entries.
//
// Picking. A key (the client IP, or IP and port) hashes to an entry e and a
// step s in [1, M). If the entry's backend is not eligible (down, not
// Enabled, or already tried by this connection), the pick walks e+s, e+2s,
// ... (mod M) until an eligible one: the key's own fallback order,
// decided by the key and the configured set only, so every instance that
// sees the same backends up picks the same one. After maglevWalk entries
// without success (most of the pool is out), the pick falls back to
// weighted rendezvous hashing over the tier's members, which finds an
// eligible member if there is one, again the same in every instance.
// The slow-start scale does not apply: a key's backend is decided by the
// table alone.
type maglev struct {
	cands []candidate // sorted by address; table entries index it
	table []uint32    // len M; nil when no member has weight > 0
	port  bool        // hash_key "ip-port": the client's port is in the key
}

// Maglev table sizes: table_size must be a prime in this range. The
// default is the paper's.
const (
	DefaultTableSize = 65537
	MinTableSize     = 7
	MaxTableSize     = 1_048_583 // the first prime above 2^20
)

// maglevWalk is how many table entries a pick tries before it falls back to
// rendezvous hashing over the members. With half of the table's entries
// out, 32 entries all miss once in 4 billion picks.
const maglevWalk = 32

// Fixed seeds of the maglev hashes; changing any of them moves clients
// between backends when lbctl is upgraded.
const (
	maglevKeySeed    uint64 = 0x6d61676c65762d6b // "maglev-k"
	maglevOffsetSeed uint64 = 0x6d61676c65762d6f // "maglev-o"
	maglevSkipSeed   uint64 = 0x6d61676c65762d73 // "maglev-s"
)

// newMaglev builds the table of size m (a prime) over candidates.
func newMaglev(candidates []candidate, m int, port bool) *maglev {
	cands := slices.Clone(candidates)
	slices.SortFunc(cands, func(a, b candidate) int { return strings.Compare(a.b.address, b.b.address) })
	return &maglev{cands: cands, table: populate(cands, uint64(m)), port: port}
}

// populate runs the weighted population loop. It returns nil when no
// candidate has weight > 0.
func populate(cands []candidate, m uint64) []uint32 {
	var maxW uint64
	for _, c := range cands {
		maxW = max(maxW, uint64(c.weight))
	}
	if maxW == 0 || m == 0 {
		return nil
	}
	const free = math.MaxUint32
	table := make([]uint32, m)
	for i := range table {
		table[i] = free
	}
	pos := make([]uint64, len(cands))  // the next entry of each permutation
	skip := make([]uint64, len(cands)) // the step of each permutation
	sum := make([]uint64, len(cands))  // running weight sums
	for i, c := range cands {
		pos[i] = mix64(c.b.seed^maglevOffsetSeed) % m
		skip[i] = mix64(c.b.seed^maglevSkipSeed)%(m-1) + 1
	}
	filled := uint64(0)
	for {
		for i, c := range cands {
			if c.weight == 0 {
				continue
			}
			sum[i] += uint64(c.weight)
			if sum[i] < maxW {
				continue
			}
			sum[i] -= maxW
			// A free entry exists (filled < m), and a permutation of a
			// prime m visits every entry, so this ends.
			p, st := pos[i], skip[i]
			for table[p] != free {
				if p += st; p >= m {
					p -= m
				}
			}
			table[p] = uint32(i)
			if p += st; p >= m {
				p -= m
			}
			pos[i] = p
			if filled++; filled == m {
				return table
			}
		}
	}
}

// keyHash hashes the client's address (and port, with hash_key "ip-port").
func (t *maglev) keyHash(client netip.AddrPort) uint64 {
	ip := client.Addr().Unmap().As16()
	seed := maglevKeySeed
	if t.port {
		seed ^= uint64(client.Port()) * prime2
	}
	return hash16(binary.LittleEndian.Uint64(ip[:8]), binary.LittleEndian.Uint64(ip[8:]), seed)
}

func (t *maglev) pick(client netip.AddrPort, tried *Tried) *Backend {
	if t.table == nil {
		return nil
	}
	h := t.keyHash(client)
	m := uint64(len(t.table))
	e := reduce(h, m)
	step := reduce(mix64(h), m-1) + 1
	for range maglevWalk {
		b := t.cands[t.table[e]].b
		if b.Eligible() && !tried.Has(b) {
			return b
		}
		if e += step; e >= m {
			e -= m
		}
	}
	return t.rendezvous(h, tried)
}

// rendezvous is weighted highest-random-weight hashing of the key hash h
// over the members of weight > 0: the end of every key's fallback order.
func (t *maglev) rendezvous(h uint64, tried *Tried) *Backend {
	var (
		best  *Backend
		score float64
	)
	for _, c := range t.cands {
		if c.weight == 0 || !c.b.Eligible() || tried.Has(c.b) {
			continue
		}
		s := float64(c.weight) / negLogUnit(hash16(h, 0, c.b.seed))
		if best == nil || s > score {
			best, score = c.b, s
		}
	}
	return best
}

// reduce maps h onto [0, n) without a division (Lemire's multiply-shift).
func reduce(h, n uint64) uint64 {
	hi, _ := bits.Mul64(h, n)
	return hi
}

// mix64 is the splitmix64 finaliser.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// digest writes what decides this tier's picks to d: the members'
// addresses in table order and the table.
func (t *maglev) digest(w func([]byte)) {
	var buf [8]byte
	binary.LittleEndian.PutUint64(buf[:], uint64(len(t.cands)))
	w(buf[:])
	for _, c := range t.cands {
		binary.LittleEndian.PutUint64(buf[:], uint64(len(c.b.address)))
		w(buf[:])
		w([]byte(c.b.address))
	}
	binary.LittleEndian.PutUint64(buf[:], uint64(len(t.table)))
	w(buf[:])
	tb := make([]byte, 4*len(t.table))
	for i, x := range t.table {
		binary.LittleEndian.PutUint32(tb[4*i:], x)
	}
	w(tb)
}

// tableDigest is the hex digest of a maglev pool's tables and hash key.
func tableDigest(size int, hashKey string, primary, backup *maglev) string {
	d := sha256.New()
	w := func(b []byte) { d.Write(b) }
	w([]byte("lbctl maglev v1\x00" + hashKey + "\x00"))
	var buf [8]byte
	binary.LittleEndian.PutUint64(buf[:], uint64(size))
	w(buf[:])
	for _, t := range []*maglev{primary, backup} {
		if t == nil {
			t = &maglev{}
		}
		t.digest(w)
	}
	return hex.EncodeToString(d.Sum(nil)[:8])
}

// membersDigest is the digest of a pool of another algorithm than maglev:
// its algorithm, hash key, and members sorted by address.
func membersDigest(algorithm, hashKey string, members []Member) string {
	ms := slices.Clone(members)
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.Backend.address, b.Backend.address) })
	d := sha256.New()
	d.Write([]byte("lbctl pool v1\x00" + algorithm + "\x00" + hashKey + "\x00"))
	var buf [8]byte
	for _, m := range ms {
		binary.LittleEndian.PutUint64(buf[:], uint64(len(m.Backend.address)))
		d.Write(buf[:])
		d.Write([]byte(m.Backend.address))
		binary.LittleEndian.PutUint64(buf[:], uint64(m.Weight))
		if m.Backup {
			buf[7] = 1
		}
		d.Write(buf[:])
	}
	return hex.EncodeToString(d.Sum(nil)[:8])
}

// IsPrime reports whether n is a prime, for validating table sizes.
func IsPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}
