package balancer

import (
	"sync/atomic"
	"testing"
)

// benchPool is 8 primaries of mixed weight and one backup: a realistic pool.
func benchPool(b *testing.B, alg string) *Pool {
	ms := members(5, 1, 1, 3, 2, 1, 1, 2, 1)
	ms[8].Backup = true
	return mustPool(b, alg, ms)
}

// BenchmarkPick measures one pick the way a connection handler makes it:
// a fresh Tried on the stack, a different client each time.
func BenchmarkPick(b *testing.B) {
	for _, alg := range algorithms {
		b.Run(alg, func(b *testing.B) {
			p := benchPool(b, alg)
			ips := clientIPs(1024)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				var tried Tried
				if p.Pick(at(ips[i&1023]), &tried) == nil {
					b.Fatal("nil pick")
				}
				i++
			}
		})
	}
}

// BenchmarkPickRetry measures the third attempt of a connection: two
// backends already tried.
func BenchmarkPickRetry(b *testing.B) {
	for _, alg := range algorithms {
		b.Run(alg, func(b *testing.B) {
			p := benchPool(b, alg)
			ips := clientIPs(1024)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				var tried Tried
				tried.Add(p.Backends()[0])
				tried.Add(p.Backends()[3])
				if p.Pick(at(ips[i&1023]), &tried) == nil {
					b.Fatal("nil pick")
				}
				i++
			}
		})
	}
}

// BenchmarkPickParallel is BenchmarkPick from GOMAXPROCS goroutines on one
// pool, with Acquire/Release as a connection would do.
func BenchmarkPickParallel(b *testing.B) {
	for _, alg := range algorithms {
		b.Run(alg, func(b *testing.B) {
			p := benchPool(b, alg)
			ips := clientIPs(1024)
			var seq atomic.Uint64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seq.Add(1)) * 97
				for pb.Next() {
					var tried Tried
					be := p.Pick(at(ips[i&1023]), &tried)
					if be == nil {
						panic("nil pick")
					}
					be.Acquire()
					be.Release()
					i++
				}
			})
		})
	}
}
