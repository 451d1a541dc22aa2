package balancer

import (
	"net/netip"
	"testing"
)

func TestLeastConnectionsPicksLowestLoad(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []int
		active  []int
		want    int
	}{
		{"fewest", []int{1, 1, 1}, []int{5, 2, 7}, 1},
		{"weighted", []int{2, 1, 1}, []int{4, 3, 3}, 0},     // 2 < 3
		{"weighted other way", []int{2, 1}, []int{5, 2}, 1}, // 2.5 > 2
		{"heavy and busy", []int{10, 1}, []int{9, 1}, 0},    // 0.9 < 1
		{"unpaired release counts as 0", []int{1, 1}, []int{-2, 1}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms := members(tc.weights...)
			bs := backendsOf(ms)
			for i, n := range tc.active {
				for range max(n, 0) {
					bs[i].Acquire()
				}
				for range max(-n, 0) {
					bs[i].Release()
				}
			}
			p := mustPool(t, LeastConnections, ms)
			for range 10 {
				if got := p.Pick(at(netip.Addr{}), nil); got != bs[tc.want] {
					t.Fatalf("Pick = %s, want %s", got, bs[tc.want])
				}
			}
		})
	}
}

// TestLeastConnectionsFillsByWeight: picks that Acquire and never Release
// fill the backends in proportion to weight, within one connection.
func TestLeastConnectionsFillsByWeight(t *testing.T) {
	ms := members(3, 2, 1)
	bs := backendsOf(ms)
	p := mustPool(t, LeastConnections, ms)
	for i := 1; i <= 600; i++ {
		p.Pick(at(netip.Addr{}), nil).Acquire()
		for j, b := range bs {
			exact := float64(i) * float64(ms[j].Weight) / 6
			if d := float64(b.Active()) - exact; d > 1 || d < -1 {
				t.Fatalf("after %d picks backend %d has %d active, want %.1f ± 1", i, j, b.Active(), exact)
			}
		}
	}
	if bs[0].Active() != 300 || bs[1].Active() != 200 || bs[2].Active() != 100 {
		t.Fatalf("active %d/%d/%d, want 300/200/100", bs[0].Active(), bs[1].Active(), bs[2].Active())
	}

	// The first backend's connections end: it takes every new one until it
	// is as loaded as the others again.
	for range 300 {
		bs[0].Release()
	}
	for i := range 300 {
		b := p.Pick(at(netip.Addr{}), nil)
		if b != bs[0] {
			t.Fatalf("pick %d after releases = %s, want %s", i, b, bs[0])
		}
		b.Acquire()
	}
	if bs[0].Active() != 300 {
		t.Errorf("first backend active %d, want 300", bs[0].Active())
	}
}

// TestLeastConnectionsTiesAreShared: with no connections everyone ties;
// ties are shared by weight, and a gap in the list (an ineligible backend)
// does not hand its share to its neighbour.
func TestLeastConnectionsTiesAreShared(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []int
		down    int // index of a down backend, or -1
		want    []float64
	}{
		{"equal", []int{1, 1, 1}, -1, []float64{1, 1, 1}},
		{"equal with a gap", []int{1, 1, 1, 1}, 1, []float64{1, 0, 1, 1}},
		{"weighted", []int{3, 2, 1}, -1, []float64{3, 2, 1}},
		{"first of two", []int{1, 1}, -1, []float64{1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms := members(tc.weights...)
			bs := backendsOf(ms)
			if tc.down >= 0 {
				bs[tc.down].SetHealthy(false)
			}
			p := mustPool(t, LeastConnections, ms)
			wantShares(t, pickN(t, p, 6000, false), bs, tc.want, 0.005)
			// Short runs are fair too: the first backend is not favoured.
			wantShares(t, pickN(t, p, 60, false), bs, tc.want, 0.05)
		})
	}
}
