package balancer

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestConcurrentPicksAndStateChanges runs pickers (Pick, Acquire, Release,
// retry with Tried) against goroutines that flip health, admin state and
// slow-start scale. Run with -race. Whatever the interleaving, a pick is
// never a tried backend nor the one that stays disabled, and the counters add
// up at the end.
//
// Pickers and flippers yield now and then, and the pickers go on (bounded by
// a deadline) until the flippers have made progress and some picks have
// succeeded: on a loaded machine the scheduler may otherwise run every picker
// to its end while the flippers wait, with the state frozen where no backend
// is eligible (CI saw "no pick succeeded" that way).
func TestConcurrentPicksAndStateChanges(t *testing.T) {
	for _, alg := range algorithms {
		t.Run(alg, func(t *testing.T) {
			ms := members(3, 2, 1, 1, 1, 1)
			ms[4].Backup = true
			bs := backendsOf(ms)
			fixed := bs[5] // stays disabled; the flippers leave it alone
			fixed.SetAdmin(Disabled)
			flipped := bs[:5]
			p := mustPool(t, alg, ms)
			ips := clientIPs(256)

			const (
				pickers, picksEach    = 8, 1500
				flippers, flipsMax    = 2, 50_000_000
				minAcquired, minFlips = 2000, 20_000
			)
			var (
				pickWG, flipWG sync.WaitGroup
				acquired       atomic.Uint64
				flips          atomic.Uint64
				tooMany        atomic.Int64 // picked a tried or disabled backend
				stop           = make(chan struct{})
				deadline       = time.Now().Add(20 * time.Second)
			)
			for f := range flippers {
				flipWG.Go(func() {
					for i := range flipsMax {
						select {
						case <-stop:
							return
						default:
						}
						if i%64 == 63 {
							runtime.Gosched()
						}
						flips.Add(1)
						b := flipped[(i+f)%len(flipped)]
						switch i % 3 {
						case 0:
							b.SetHealthy(!b.Healthy())
						case 1:
							b.SetAdmin(AdminState(i / 3 % 3))
						case 2:
							b.SetWeightScale(i % 1001)
						}
					}
				})
			}
			for g := range pickers {
				pickWG.Go(func() {
					for i := 0; ; i++ {
						if i >= picksEach && acquired.Load() >= minAcquired && flips.Load() >= minFlips {
							break
						}
						if i%64 == 63 {
							runtime.Gosched()
							if time.Now().After(deadline) {
								break
							}
						}
						var tried Tried
						for range 3 {
							b := p.Pick(at(ips[(g*picksEach+i)%len(ips)]), &tried)
							if b == nil {
								break
							}
							if tried.Has(b) || b == fixed {
								tooMany.Add(1)
							}
							tried.Add(b)
							b.Acquire()
							b.Established()
							acquired.Add(1)
							b.Release()
						}
					}
				})
			}
			pickWG.Wait()
			close(stop)
			flipWG.Wait()

			if n := tooMany.Load(); n != 0 {
				t.Errorf("%d picks returned a tried or disabled backend", n)
			}
			var total uint64
			for _, b := range bs {
				if b.Active() != 0 {
					t.Errorf("%s: %d active after every Release", b, b.Active())
				}
				total += b.Total()
			}
			if total != acquired.Load() {
				t.Errorf("sum of Total() = %d, want %d acquired", total, acquired.Load())
			}
			if n, f := acquired.Load(), flips.Load(); n < minAcquired || f < minFlips {
				t.Errorf("in 20 s: %d picks succeeded (want %d) beside %d state changes (want %d)", n, minAcquired, f, minFlips)
			}

			for _, b := range flipped {
				b.SetHealthy(true)
				b.SetAdmin(Enabled)
				b.SetWeightScale(1000)
			}
			c := pickN(t, p, 700, false)
			wantShares(t, c, bs, []float64{3, 2, 1, 1, 0, 0}, 0.1)
		})
	}
}
