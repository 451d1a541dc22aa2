package config

// This file holds a pool's hashing keys: table_size (maglev) and hash_key
// (ip-hash and maglev).

// Maglev and hash key defaults and bounds. The bounds are the balancer's
// (balancer.MinTableSize, balancer.MaxTableSize); a test keeps them equal.
const (
	DefaultTableSize = 65537 // a prime, the Maglev paper's size
	MinTableSize     = 7
	MaxTableSize     = 1_048_583 // the first prime above 2^20
	DefaultHashKey   = "ip"      // "ip" | "ip-port"
)

// hashing decodes table_size and hash_key of pool p, whose Algorithm is
// already decoded: table_size is valid with maglev only, hash_key with
// ip-hash and maglev.
func (d *decoder) hashing(t *table, p *Pool) {
	hashed := p.Algorithm == "ip-hash" || p.Algorithm == "maglev"
	if hashed {
		p.HashKey = DefaultHashKey
	}
	if p.Algorithm == "maglev" {
		p.TableSize = DefaultTableSize
	}
	if v, ok := t.oneOf("hash_key", "ip", "ip-port"); ok {
		if hashed {
			p.HashKey = v
		} else {
			t.errf("hash_key", `only valid with algorithm = "ip-hash" or "maglev" (algorithm is %q)`, p.Algorithm)
		}
	}
	if v, ok := t.integer("table_size", 1); ok {
		switch {
		case p.Algorithm != "maglev":
			t.errf("table_size", `only valid with algorithm = "maglev" (algorithm is %q)`, p.Algorithm)
		case v < MinTableSize || v > MaxTableSize:
			t.errf("table_size", "must be a prime from %d to %d, got %d", MinTableSize, MaxTableSize, v)
		case !isPrime(v):
			t.errf("table_size", "must be a prime (such as 65537, 131071 or 262139), got %d", v)
		default:
			p.TableSize = v
		}
	}
}

// isPrime is trial division: table sizes are at most about a million.
func isPrime(n int) bool {
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
