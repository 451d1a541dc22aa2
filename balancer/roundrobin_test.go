package balancer

import (
	"net/netip"
	"strings"
	"testing"
)

func TestRoundRobinExactShares(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []int
		picks   int
	}{
		{"5,1,1", []int{5, 1, 1}, 7000},
		{"3,2,1", []int{3, 2, 1}, 6000},
		{"equal", []int{1, 1, 1, 1}, 6000},
		{"with zero", []int{2, 0, 1}, 6000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms := members(tc.weights...)
			bs := backendsOf(ms)
			c := pickN(t, mustPool(t, RoundRobin, ms), tc.picks, false)
			want := make([]float64, len(tc.weights))
			for i, w := range tc.weights {
				want[i] = float64(w)
			}
			wantShares(t, c, bs, want, 0)
		})
	}
}

// TestRoundRobinIsSmooth: nginx's sequence for 5,1,1, and never five in a
// row to the first backend over many cycles.
func TestRoundRobinIsSmooth(t *testing.T) {
	ms := members(5, 1, 1)
	bs := backendsOf(ms)
	name := map[*Backend]string{bs[0]: "a", bs[1]: "b", bs[2]: "c"}
	p := mustPool(t, RoundRobin, ms)
	var seq strings.Builder
	run, longest := 0, 0
	for range 7000 {
		b := p.Pick(at(netip.Addr{}), nil)
		seq.WriteString(name[b])
		if b == bs[0] {
			run++
			longest = max(longest, run)
		} else {
			run = 0
		}
	}
	if got, want := seq.String()[:14], "aabacaaaabacaa"; got != want {
		t.Errorf("sequence starts %q, want %q", got, want)
	}
	if longest >= 5 {
		t.Errorf("%d picks in a row went to the first backend, want fewer than 5", longest)
	}
}

// TestRoundRobinSkipsTried: a retry takes the next backend in the smooth
// order, and the skipped one keeps its turn for later.
func TestRoundRobinSkipsTried(t *testing.T) {
	ms := members(1, 1, 1)
	bs := backendsOf(ms)
	p := mustPool(t, RoundRobin, ms)
	var tried Tried
	tried.Add(bs[0])
	c := counter{}
	for range 3000 {
		c[p.Pick(at(netip.Addr{}), &tried).Address()]++
	}
	wantShares(t, c, bs, []float64{0, 1, 1}, 0)
	c = pickN(t, p, 3000, false)
	wantShares(t, c, bs, []float64{1, 1, 1}, 0.001)
}
