package main

import (
	"math"
	"math/bits"
	"time"
)

// histSubBits sets the precision of a Histogram: every power of two is split
// into 1<<histSubBits buckets, so a recorded value is known to within
// 1/64 (about 1.6%) of itself.
const histSubBits = 6

const (
	histSub     = 1 << histSubBits // buckets per power of two
	histLinear  = 2 * histSub      // values below this are exact
	histBuckets = (64-histSubBits)*histSub + histLinear - histSub
)

// Histogram records durations in log-linear buckets, in the manner of
// HdrHistogram: constant memory, no allocation per value, mergeable. The zero
// value is ready to use. It is not safe for concurrent use: give each worker
// its own and Merge them afterwards.
type Histogram struct {
	counts [histBuckets]uint64
	n      uint64
	sum    float64
	max    uint64
}

// histIndex maps a value in nanoseconds to its bucket.
func histIndex(v uint64) int {
	if v < histLinear {
		return int(v)
	}
	e := bits.Len64(v) - (histSubBits + 1) // v in [2^(e+6), 2^(e+7))
	top := v >> uint(e)                    // in [64, 128)
	return e*histSub + int(top)
}

// histLow is the smallest value that lands in bucket i; histWidth is the
// number of values the bucket holds.
func histLow(i int) uint64 {
	if i < histLinear {
		return uint64(i)
	}
	e := i/histSub - 1
	top := uint64(i - e*histSub)
	return top << uint(e)
}

func histWidth(i int) uint64 {
	if i < histLinear {
		return 1
	}
	return 1 << uint(i/histSub-1)
}

// Record adds one duration; negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := uint64(0)
	if d > 0 {
		v = uint64(d)
	}
	h.counts[histIndex(v)]++
	h.n++
	h.sum += float64(v)
	if v > h.max {
		h.max = v
	}
}

// Count is the number of recorded values.
func (h *Histogram) Count() uint64 { return h.n }

// Mean is the exact mean of the recorded values (0 when empty).
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Merge adds every value recorded in o to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	if o.max > h.max {
		h.max = o.max
	}
}

// Reset forgets every value.
func (h *Histogram) Reset() { *h = Histogram{} }

// Quantile returns the value below which a fraction q (0..1) of the recorded
// values fall: the middle of the bucket holding the value of rank ceil(q*n),
// never more than the largest value seen. It is 0 for an empty histogram.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank < 1 {
		rank = 1
	}
	if rank > h.n {
		rank = h.n
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := histLow(i) + (histWidth(i)-1)/2
			if v > h.max {
				v = h.max
			}
			return time.Duration(v)
		}
	}
	return time.Duration(h.max)
}
