package config

import (
	"testing"

	"github.com/lbctl/lbctl/balancer"
)

// hashingPool is a config whose pool p has the keys extra.
func hashingPool(extra string) string {
	return "[listeners.w]\nbind = \"127.0.0.1:8080\"\npool = \"p\"\n[pools.p]\n" + extra +
		"[[pools.p.backends]]\naddress = \"127.0.0.1:9000\"\n"
}

// TestHashingKeys: table_size and hash_key, their defaults, and an error
// naming the line and key for each misuse.
func TestHashingKeys(t *testing.T) {
	for _, tc := range []struct {
		name, extra string
		wantAlg     string
		wantSize    int
		wantKey     string
	}{
		{"round-robin has neither", "", "round-robin", 0, ""},
		{"ip-hash defaults to ip", "algorithm = \"ip-hash\"\n", "ip-hash", 0, "ip"},
		{"ip-hash ip-port", "algorithm = \"ip-hash\"\nhash_key = \"ip-port\"\n", "ip-hash", 0, "ip-port"},
		{"maglev defaults", "algorithm = \"maglev\"\n", "maglev", 65537, "ip"},
		{"maglev set", "algorithm = \"maglev\"\ntable_size = 131071\nhash_key = \"ip-port\"\n", "maglev", 131071, "ip-port"},
		{"maglev smallest", "algorithm = \"maglev\"\ntable_size = 7\n", "maglev", 7, "ip"},
		{"maglev largest", "algorithm = \"maglev\"\ntable_size = 1048583\n", "maglev", 1048583, "ip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := mustParse(t, hashingPool(tc.extra))
			p := cfg.Pools["p"]
			if p.Algorithm != tc.wantAlg || p.TableSize != tc.wantSize || p.HashKey != tc.wantKey {
				t.Errorf("algorithm %q, table_size %d, hash_key %q; want %q, %d, %q",
					p.Algorithm, p.TableSize, p.HashKey, tc.wantAlg, tc.wantSize, tc.wantKey)
			}
		})
	}
	for _, tc := range []struct{ name, extra, want string }{
		{"not a prime", "algorithm = \"maglev\"\ntable_size = 65536\n",
			"t.toml:6: pools.p.table_size: must be a prime (such as 65537, 131071 or 262139), got 65536"},
		{"too small", "algorithm = \"maglev\"\ntable_size = 5\n",
			"t.toml:6: pools.p.table_size: must be a prime from 7 to 1048583, got 5"},
		{"too large", "algorithm = \"maglev\"\ntable_size = 2000003\n",
			"t.toml:6: pools.p.table_size: must be a prime from 7 to 1048583, got 2000003"},
		{"zero", "algorithm = \"maglev\"\ntable_size = 0\n",
			"t.toml:6: pools.p.table_size: must be at least 1, got 0"},
		{"a string", "algorithm = \"maglev\"\ntable_size = \"big\"\n",
			"t.toml:6: pools.p.table_size: expected an integer, got string"},
		{"table_size without maglev", "algorithm = \"ip-hash\"\ntable_size = 65537\n",
			`t.toml:6: pools.p.table_size: only valid with algorithm = "maglev" (algorithm is "ip-hash")`},
		{"table_size by default round-robin", "table_size = 65537\n",
			`t.toml:5: pools.p.table_size: only valid with algorithm = "maglev" (algorithm is "round-robin")`},
		{"unknown hash_key", "algorithm = \"maglev\"\nhash_key = \"port\"\n",
			`t.toml:6: pools.p.hash_key: unknown hash key "port" (want ip or ip-port)`},
		{"hash_key with least-connections", "algorithm = \"least-connections\"\nhash_key = \"ip\"\n",
			`t.toml:6: pools.p.hash_key: only valid with algorithm = "ip-hash" or "maglev" (algorithm is "least-connections")`},
		{"unknown algorithm lists maglev", "algorithm = \"consistent\"\n",
			`t.toml:5: pools.p.algorithm: unknown algorithm "consistent" (want round-robin, least-connections, ip-hash or maglev)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.toml", []byte(hashingPool(tc.extra)))
			if err == nil || err.Error() != tc.want {
				t.Fatalf("got  %v\nwant %s", err, tc.want)
			}
		})
	}
}

// TestHashingBoundsAreTheBalancers: what the config accepts, the balancer
// builds.
func TestHashingBoundsAreTheBalancers(t *testing.T) {
	if MinTableSize != balancer.MinTableSize || MaxTableSize != balancer.MaxTableSize || DefaultTableSize != balancer.DefaultTableSize {
		t.Errorf("config table sizes %d..%d (default %d), balancer's %d..%d (default %d)",
			MinTableSize, MaxTableSize, DefaultTableSize, balancer.MinTableSize, balancer.MaxTableSize, balancer.DefaultTableSize)
	}
	if DefaultHashKey != balancer.HashKeyIP {
		t.Errorf("default hash key %q, balancer's %q", DefaultHashKey, balancer.HashKeyIP)
	}
	for _, n := range []int{7, 65537, 131071, 262139, 1048583, 4, 65535, 1048581} {
		if isPrime(n) != balancer.IsPrime(n) {
			t.Errorf("isPrime(%d) = %v, balancer.IsPrime = %v", n, isPrime(n), balancer.IsPrime(n))
		}
	}
}
