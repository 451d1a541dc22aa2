package balancer

import (
	"math/bits"
	"sync/atomic"
)

// leastConn picks the eligible untried candidate with the lowest
// Active()/weight, comparing a1*w2 < a2*w1 in 128 bits (no division, no
// overflow). It is lock-free: it reads the counters that Acquire and Release
// keep.
//
// Ties (common at low load, when every candidate has 0 active connections)
// are shared in proportion to weight: a counter advanced by every tied pick
// walks the golden-ratio (Weyl) sequence over the tied weights, so successive
// picks spread evenly over the tied candidates and the first one is not
// favoured.
type leastConn struct {
	cands []candidate
	ties  atomic.Uint64
}

func newLeastConn(candidates []candidate) *leastConn {
	return &leastConn{cands: candidates}
}

func (l *leastConn) pick(tried *Tried) *Backend {
	var (
		best         *Backend
		bestA, bestW uint64
		tiedW        uint64 // sum of the weights tied with best
		tied         int
	)
	for _, cand := range l.cands {
		b, w := cand.b, cand.pickWeight()
		if w == 0 || tried.Has(b) {
			continue
		}
		a := activeCount(b)
		c := 0
		if best != nil {
			c = compareLoad(a, w, bestA, bestW)
		}
		switch {
		case best == nil || c < 0:
			best, bestA, bestW, tiedW, tied = b, a, w, w, 1
		case c == 0:
			tiedW += w
			tied++
		}
	}
	if tied <= 1 {
		return best
	}
	// Second pass: take the tied candidate that covers point k of [0, tiedW).
	// The counters may have moved since the first pass; if the tie is gone,
	// the first pass's choice stands.
	k := weyl(l.ties.Add(1), tiedW)
	for _, cand := range l.cands {
		b, w := cand.b, cand.pickWeight()
		if w == 0 || tried.Has(b) || compareLoad(activeCount(b), w, bestA, bestW) != 0 {
			continue
		}
		if k < w {
			return b
		}
		k -= w
	}
	return best
}

// activeCount is Active() clamped at 0, in case of an unpaired Release.
func activeCount(b *Backend) uint64 {
	return uint64(max(b.active.Load(), 0))
}

// compareLoad compares the loads a1/w1 and a2/w2 (w1, w2 > 0) and returns
// -1, 0 or +1.
func compareLoad(a1, w1, a2, w2 uint64) int {
	h1, l1 := bits.Mul64(a1, w2)
	h2, l2 := bits.Mul64(a2, w1)
	switch {
	case h1 < h2 || (h1 == h2 && l1 < l2):
		return -1
	case h1 == h2 && l1 == l2:
		return 0
	}
	return 1
}

// weyl maps the n-th element of the golden-ratio sequence frac(n*phi) onto
// [0, m). Consecutive n land far apart and evenly spread.
func weyl(n, m uint64) uint64 {
	hi, _ := bits.Mul64(n*0x9e3779b97f4a7c15, m)
	return hi
}
