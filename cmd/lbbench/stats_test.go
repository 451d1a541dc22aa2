package main

import (
	"math"
	"testing"
)

func TestMedianAndSpread(t *testing.T) {
	tests := []struct {
		name      string
		xs        []float64
		med, sprd float64
		nanMedian bool
		nanSpread bool
	}{
		{name: "empty", xs: nil, nanMedian: true, nanSpread: true},
		{name: "one", xs: []float64{5}, med: 5, sprd: 0},
		{name: "odd", xs: []float64{3, 1, 2}, med: 2, sprd: 50},
		{name: "even", xs: []float64{4, 1, 3, 2}, med: 2.5, sprd: 60},
		{name: "equal", xs: []float64{7, 7, 7}, med: 7, sprd: 0},
		{name: "zero median, spread unknown", xs: []float64{-1, 0, 1}, med: 0, nanSpread: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]float64(nil), tt.xs...)
			m, s := median(tt.xs), spread(tt.xs)
			if tt.nanMedian != math.IsNaN(m) || (!tt.nanMedian && m != tt.med) {
				t.Errorf("median = %v, want %v", m, tt.med)
			}
			if tt.nanSpread != math.IsNaN(s) || (!tt.nanSpread && math.Abs(s-tt.sprd) > 1e-9) {
				t.Errorf("spread = %v, want %v", s, tt.sprd)
			}
			for i := range in {
				if in[i] != tt.xs[i] {
					t.Fatalf("input modified: %v", tt.xs)
				}
			}
		})
	}
}
