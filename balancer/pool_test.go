package balancer

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		name      string
		algorithm string
		members   []Member
		wantIs    error
		wantText  string
	}{
		{"unknown algorithm", "random", members(1), ErrUnknownAlgorithm, `"random"`},
		{"unknown algorithm, no backends", "weighted", nil, ErrUnknownAlgorithm, `"weighted"`},
		{"nil backend", RoundRobin, []Member{{Backend: NewBackend("a:1"), Weight: 1}, {Weight: 1}}, nil, "backend 1 is nil"},
		{"duplicate address", IPHash, []Member{{Backend: NewBackend("a:1"), Weight: 1}, {Backend: NewBackend("a:1"), Weight: 2, Backup: true}},
			nil, `duplicate backend address "a:1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.algorithm, tc.members)
			if err == nil {
				t.Fatalf("New = %v, nil; want an error", p)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("error %v does not wrap %v", err, tc.wantIs)
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("error %q does not mention %q", err, tc.wantText)
			}
		})
	}
}

func TestPoolKeepsConfiguredOrderAndAlgorithm(t *testing.T) {
	for _, alg := range algorithms {
		t.Run(alg, func(t *testing.T) {
			ms := []Member{
				{Backend: NewBackend("c:1"), Weight: 1, Backup: true},
				{Backend: NewBackend("a:1"), Weight: 2},
				{Backend: NewBackend("b:1"), Weight: 3, Backup: true},
			}
			in := slices.Clone(ms)
			p := mustPool(t, alg, in)
			in[0] = Member{} // the pool keeps its own copy
			if p.Algorithm() != alg {
				t.Errorf("Algorithm() = %q, want %q", p.Algorithm(), alg)
			}
			if !slices.Equal(p.Members(), ms) {
				t.Errorf("Members() = %v, want %v", p.Members(), ms)
			}
			if bs := backendsOf(ms); !slices.Equal(p.Backends(), bs) {
				t.Errorf("Backends() = %v, want %v", p.Backends(), bs)
			}
		})
	}
	if got := Algorithms(); !slices.Equal(got, algorithms) {
		t.Errorf("Algorithms() = %v, want %v", got, algorithms)
	}
}

func TestEmptyPoolPicksNil(t *testing.T) {
	for _, alg := range algorithms {
		p := mustPool(t, alg, nil)
		if b := p.Pick(at(netip.MustParseAddr("10.1.1.1")), nil); b != nil {
			t.Errorf("%s: Pick on an empty pool = %v, want nil", alg, b)
		}
	}
}

// TestNewClampsWeights: weights outside 0..MaxWeight are clamped, and the
// pool picks by the clamped weights.
func TestNewClampsWeights(t *testing.T) {
	ms := members(-3, 1<<40, 1)
	p := mustPool(t, RoundRobin, ms)
	for i, want := range []int{0, MaxWeight, 1} {
		if got := p.Members()[i].Weight; got != want {
			t.Errorf("member %d: weight %d, want %d", i, got, want)
		}
	}
	if c := pickN(t, p, 1000, false); c[ms[0].Backend.Address()] != 0 {
		t.Errorf("picks %v: the member of weight -3 (0) was picked", c)
	}
}

// TestWeightsBelongToThePool: one backend in two pools with different
// weights and ranks; each pool picks by its own, and building the second
// changed nothing in the first (a reload builds its pool beside the one in
// service).
func TestWeightsBelongToThePool(t *testing.T) {
	for _, alg := range algorithms {
		t.Run(alg, func(t *testing.T) {
			a, b := NewBackend("10.0.0.1:80"), NewBackend("10.0.0.2:80")
			bs := []*Backend{a, b}
			old := mustPool(t, alg, []Member{{Backend: a, Weight: 3}, {Backend: b, Weight: 1}})
			next := mustPool(t, alg, []Member{{Backend: a, Weight: 1, Backup: true}, {Backend: b, Weight: 1}})
			tol := 0.0
			switch alg {
			case LeastConnections:
				tol = 0.005 // ties are shared along a sequence, not exactly
			case IPHash, Maglev:
				tol = 0.02
			}
			wantShares(t, pickN(t, old, 4000, false), bs, []float64{3, 1}, tol)
			wantShares(t, pickN(t, next, 4000, false), bs, []float64{0, 1}, 0)
			b.SetHealthy(false)
			wantShares(t, pickN(t, next, 4000, false), bs, []float64{1, 0}, 0)
			wantShares(t, pickN(t, old, 4000, false), bs, []float64{1, 0}, 0)
		})
	}
}

// TestPickNeverChoosesIneligible: down, draining, disabled and weight-0
// backends get nothing, whatever the client.
func TestPickNeverChoosesIneligible(t *testing.T) {
	for _, alg := range algorithms {
		t.Run(alg, func(t *testing.T) {
			ms := members(1, 2, 3, 0, 2)
			bs := backendsOf(ms)
			bs[0].SetHealthy(false)
			bs[1].SetAdmin(Draining)
			bs[2].SetAdmin(Disabled)
			p := mustPool(t, alg, ms)
			c := pickN(t, p, 2000, alg == LeastConnections)
			if c[bs[4].Address()] != 2000 {
				t.Errorf("picks %v, want all 2000 on %s", c, bs[4])
			}
			bs[4].SetHealthy(false)
			if b := p.Pick(at(netip.MustParseAddr("192.0.2.1")), nil); b != nil {
				t.Errorf("Pick with nothing eligible = %v, want nil", b)
			}
		})
	}
}

// TestPickTriedThenNil: successive picks that add to Tried visit every
// eligible backend once (primaries before backups), then return nil.
func TestPickTriedThenNil(t *testing.T) {
	for _, alg := range algorithms {
		t.Run(alg, func(t *testing.T) {
			ms := members(3, 1, 2, 1, 1)
			ms[3].Backup, ms[4].Backup = true, true
			bs := backendsOf(ms)
			bs[2].SetHealthy(false)
			p := mustPool(t, alg, ms)
			for _, ip := range clientIPs(50) {
				var tried Tried
				var order []*Backend
				for range len(bs) {
					b := p.Pick(at(ip), &tried)
					if b == nil {
						break
					}
					if tried.Has(b) {
						t.Fatalf("client %v: picked %s again", ip, b)
					}
					tried.Add(b)
					order = append(order, b)
				}
				if len(order) != 4 {
					t.Fatalf("client %v: picked %v, want the 4 eligible backends", ip, order)
				}
				for _, b := range order[:2] {
					if b == bs[3] || b == bs[4] {
						t.Fatalf("client %v: order %v tries a backup before a primary", ip, order)
					}
				}
				if b := p.Pick(at(ip), &tried); b != nil {
					t.Fatalf("client %v: Pick after trying all = %v, want nil", ip, b)
				}
			}
		})
	}
}

// TestBackups: backups take connections only while no primary is eligible,
// and hand them back when a primary returns.
func TestBackups(t *testing.T) {
	for _, alg := range algorithms {
		t.Run(alg, func(t *testing.T) {
			ms := members(2, 1, 1, 1)
			ms[2].Backup, ms[3].Backup = true, true
			bs := backendsOf(ms)
			primaries, backups := bs[:2], bs[2:]
			p := mustPool(t, alg, ms)
			onlyFrom := func(step string, want ...*Backend) {
				t.Helper()
				c := pickN(t, p, 600, false)
				n := 0
				for _, b := range want {
					n += c[b.Address()]
				}
				if n != 600 {
					t.Errorf("%s: picks %v, want all on %v", step, c, want)
				}
			}
			onlyFrom("all up", primaries...)
			primaries[0].SetHealthy(false)
			onlyFrom("one primary down", primaries[1])
			primaries[1].SetAdmin(Draining)
			onlyFrom("no primary eligible", backups...)
			backups[0].SetAdmin(Disabled)
			onlyFrom("one backup disabled", backups[1])
			primaries[1].SetAdmin(Enabled)
			onlyFrom("a primary returns", primaries[1])
			primaries[0].SetHealthy(true)
			onlyFrom("all primaries back", primaries...)
		})
	}
}

// TestPickDoesNotAllocate pins the caller pattern: a Tried on the stack,
// passed by pointer, and no allocation per pick.
func TestPickDoesNotAllocate(t *testing.T) {
	for _, alg := range algorithms {
		t.Run(alg, func(t *testing.T) {
			ms := members(5, 1, 1, 3)
			ms[3].Backup = true
			p := mustPool(t, alg, ms)
			ips := clientIPs(64)
			i := 0
			allocs := testing.AllocsPerRun(1000, func() {
				var tried Tried
				for {
					b := p.Pick(at(ips[i%len(ips)]), &tried)
					if b == nil {
						break
					}
					tried.Add(b)
				}
				i++
			})
			if allocs != 0 {
				t.Errorf("%v allocs per run, want 0", allocs)
			}
		})
	}
}

// TestSlowStart: a backend at scale 100 (a tenth) gets a tenth of its peer's
// share, also at weight 1 (the algorithms work in permille of a weight).
func TestSlowStart(t *testing.T) {
	for _, alg := range algorithms {
		for _, weight := range []int{1, 10} {
			t.Run(fmt.Sprintf("%s/weight=%d", alg, weight), func(t *testing.T) {
				ms := members(weight, weight)
				bs := backendsOf(ms)
				bs[0].SetWeightScale(100)
				p := mustPool(t, alg, ms)
				var c counter
				tol := 0.0
				switch alg {
				case RoundRobin:
					c = pickN(t, p, 11_000, false) // exact: 1000 vs 10000
				case LeastConnections:
					c = pickN(t, p, 11_000, true)
					tol = 0.0002 // within one connection
				case IPHash:
					c = pickN(t, p, 10_000, false)
					tol = 0.012 // 10,000 clients: ~4 standard deviations
				case Maglev:
					// The table alone decides a key's backend: slow start
					// does not apply.
					wantShares(t, pickN(t, p, 10_000, false), bs, []float64{1, 1}, 0.015)
					return
				}
				wantShares(t, c, bs, []float64{1, 10}, tol)

				bs[0].SetWeightScale(1000) // ramp done
				for _, b := range bs {
					for b.Active() > 0 {
						b.Release()
					}
				}
				c = pickN(t, p, 10_000, alg == LeastConnections)
				tol = 0.0002 // a ramp leaves round-robin and least-connections one pick off at most
				if alg == IPHash {
					tol = 0.015
				}
				wantShares(t, c, bs, []float64{1, 1}, tol)
			})
		}
	}
}
