package balancer

import (
	"encoding/binary"
	"math"
	"math/bits"
	"net/netip"
)

// ipHash is weighted rendezvous hashing (highest random weight). For a client
// each eligible untried candidate gets the score -weight/ln(u), where u in
// (0,1) comes from a fixed hash of the client IP and the candidate's address;
// the highest score wins. The score of a (client, backend) pair depends on
// nothing else, so:
//
//   - when a backend leaves (down, drained, disabled, removed or tried) only
//     the clients it had move, and they spread over the rest by weight;
//     when it returns, exactly those clients come back;
//   - every process with the same backend addresses picks the same backend;
//   - a backend's share of clients is its weight over the sum of weights.
//
// Candidates of equal weight are compared by their hashes alone (the score is
// monotonic in u), which is exact integer arithmetic and skips the logarithm.
//
// With hash key "ip-port" the client's port is mixed into the client's
// half of the hash, so each (IP, port) pair is a client of its own.
type ipHash struct {
	cands []candidate
	port  bool
}

func newIPHash(candidates []candidate, port bool) *ipHash {
	return &ipHash{cands: candidates, port: port}
}

func (p *ipHash) pick(client netip.AddrPort, tried *Tried) *Backend {
	// As16 maps IPv4 to ::ffff:a.b.c.d, so an IPv4 client and its
	// IPv4-mapped IPv6 form hash alike; the zero Addr gives all zeros.
	ip := client.Addr().Unmap().As16()
	lo := binary.LittleEndian.Uint64(ip[:8])
	hi := binary.LittleEndian.Uint64(ip[8:])
	if p.port {
		hi ^= uint64(client.Port())*prime2 + prime3
	}

	var (
		best    *Backend
		bestW   uint64
		bestH   uint64
		bestNLn float64 // -ln(u) of best, or 0 if not computed yet
	)
	for _, c := range p.cands {
		b, w := c.b, c.pickWeight()
		if w == 0 || tried.Has(b) {
			continue
		}
		h := hash16(lo, hi, b.seed)
		switch {
		case best == nil:
			best, bestW, bestH, bestNLn = b, w, h, 0
		case w == bestW:
			if h > bestH {
				best, bestH, bestNLn = b, h, 0
			}
		default:
			if bestNLn == 0 {
				bestNLn = negLogUnit(bestH)
			}
			nln := negLogUnit(h)
			// w/nln > bestW/bestNLn, both logarithms positive.
			if float64(w)*bestNLn > float64(bestW)*nln {
				best, bestW, bestH, bestNLn = b, w, h, nln
			}
		}
	}
	return best
}

// negLogUnit maps h onto u in the open interval (0,1) and returns -ln(u) > 0.
func negLogUnit(h uint64) float64 {
	u := (float64(h>>11) + 0.5) * (1.0 / (1 << 53))
	return -math.Log(u)
}

// xxHash64 primes.
const (
	prime1 uint64 = 0x9e3779b185ebca87
	prime2 uint64 = 0xc2b2ae3d27d4eb4f
	prime3 uint64 = 0x165667b19e3779f9
	prime4 uint64 = 0x85ebca77c2b2ae63
	prime5 uint64 = 0x27d4eb2f165667c5
)

// hash16 is XXH64 of the 16 bytes lo|hi (little-endian) with the given seed:
// a fixed, well-mixed hash, identical in every process.
func hash16(lo, hi, seed uint64) uint64 {
	h := seed + prime5 + 16
	h ^= xxRound(lo)
	h = bits.RotateLeft64(h, 27)*prime1 + prime4
	h ^= xxRound(hi)
	h = bits.RotateLeft64(h, 27)*prime1 + prime4
	h ^= h >> 33
	h *= prime2
	h ^= h >> 29
	h *= prime3
	h ^= h >> 32
	return h
}

func xxRound(lane uint64) uint64 {
	return bits.RotateLeft64(lane*prime2, 31) * prime1
}

// hashString is 64-bit FNV-1a finished with the splitmix64 mixer; it turns a
// backend address into the seed of hash16.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return mix64(h)
}
