package main

import (
	"math"
	"testing"
	"time"
)

func TestHistIndexBounds(t *testing.T) {
	// Every value lands in a bucket whose range holds it, buckets are
	// ordered, and the bucket width stays within 1/64 of the value.
	prev := -1
	for v := uint64(0); v < 1<<40; v = v*17/16 + 1 {
		i := histIndex(v)
		if i < prev {
			t.Fatalf("index not monotonic at %d: %d after %d", v, i, prev)
		}
		prev = i
		lo, w := histLow(i), histWidth(i)
		if v < lo || v >= lo+w {
			t.Fatalf("value %d in bucket %d = [%d, %d)", v, i, lo, lo+w)
		}
		if v >= histLinear && float64(w)/float64(v) > 1.0/64 {
			t.Fatalf("bucket %d too wide for %d: %d", i, v, w)
		}
	}
	if i := histIndex(math.MaxUint64); i != histBuckets-1 {
		t.Fatalf("largest value in bucket %d, want %d", i, histBuckets-1)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	tests := []struct {
		name   string
		values []time.Duration
		q      float64
		want   time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one value", []time.Duration{42 * time.Microsecond}, 0.99, 42 * time.Microsecond},
		{"median of 1..1000µs", seq(1000, time.Microsecond), 0.5, 500 * time.Microsecond},
		{"p99 of 1..1000µs", seq(1000, time.Microsecond), 0.99, 990 * time.Microsecond},
		{"p99.9 of 1..1000µs", seq(1000, time.Microsecond), 0.999, 999 * time.Microsecond},
		{"p0 is the smallest", seq(1000, time.Microsecond), 0, time.Microsecond},
		{"p100 is the largest", seq(1000, time.Microsecond), 1, 1000 * time.Microsecond},
		{"small exact values", []time.Duration{1, 2, 3, 4, 5}, 0.6, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Histogram
			for _, v := range tt.values {
				h.Record(v)
			}
			got := h.Quantile(tt.q)
			if math.Abs(float64(got-tt.want)) > float64(tt.want)/64+1 {
				t.Errorf("Quantile(%v) = %v, want %v within 1/64", tt.q, got, tt.want)
			}
		})
	}
}

func TestHistogramMergeAndMean(t *testing.T) {
	var a, b Histogram
	for _, v := range seq(100, time.Millisecond) {
		a.Record(v)
	}
	for _, v := range seq(100, time.Millisecond) {
		b.Record(v + 100*time.Millisecond)
	}
	a.Merge(&b)
	if a.Count() != 200 {
		t.Fatalf("count %d, want 200", a.Count())
	}
	if got, want := a.Mean(), 100500*time.Microsecond; got != want {
		t.Errorf("mean %v, want %v", got, want)
	}
	if got := a.Quantile(0.5); got < 99*time.Millisecond || got > 101*time.Millisecond {
		t.Errorf("median %v, want about 100ms", got)
	}
	a.Record(-time.Second) // counts as zero
	if got := a.Quantile(0); got != 0 {
		t.Errorf("negative value recorded as %v, want 0", got)
	}
	a.Reset()
	if a.Count() != 0 || a.Quantile(0.5) != 0 {
		t.Errorf("Reset left %d values", a.Count())
	}
}

func TestHistogramRecordDoesNotAllocate(t *testing.T) {
	var h Histogram
	if n := testing.AllocsPerRun(1000, func() { h.Record(1234 * time.Microsecond) }); n != 0 {
		t.Errorf("Record allocates %v times", n)
	}
}

// seq is n, 2n, ... n*unit: the values 1..n in unit.
func seq(n int, unit time.Duration) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(i+1) * unit
	}
	return out
}
