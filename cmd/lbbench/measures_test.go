package main

import (
	"testing"
	"time"
)

// startTestBackends runs the real backends in-process for the duration of
// the test.
func startTestBackends(t *testing.T) backendAddrs {
	t.Helper()
	b, err := startBackends(2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b.addrs
}

// shortWindow is long enough to count something on a loaded 2-core CI
// machine under the race detector.
func shortWindow() window {
	return newWindow(time.Now(), 20*time.Millisecond, 500*time.Millisecond)
}

func TestMeasuresAgainstLoopbackBackends(t *testing.T) {
	b := startTestBackends(t)
	t.Run("bulk", func(t *testing.T) {
		r := measureBulk(b.Sink, 2, shortWindow())
		if r.Errors != 0 || r.Bytes == 0 || r.Gbps() <= 0 {
			t.Errorf("bulk %+v", r)
		}
	})
	t.Run("short connections", func(t *testing.T) {
		r := measureShort(b.Echo, 4, shortWindow())
		if r.Errors != 0 || r.Count == 0 || r.Hist.Count() != r.Count {
			t.Errorf("short: %d exchanges, %d errors, %d latencies", r.Count, r.Errors, r.Hist.Count())
		}
		if p50, p99 := r.Hist.Quantile(0.5), r.Hist.Quantile(0.99); p50 <= 0 || p99 < p50 || p99 > time.Second {
			t.Errorf("short latencies p50 %v p99 %v", p50, p99)
		}
	})
	t.Run("request/response", func(t *testing.T) {
		r := measureRR(b.Echo, 3, shortWindow())
		if r.Errors != 0 || r.Count == 0 || r.Rate() <= 0 {
			t.Errorf("rr %d requests, %d errors", r.Count, r.Errors)
		}
	})
	t.Run("udp", func(t *testing.T) {
		r, lost := measureUDP(b.UDP, 2, shortWindow())
		if r.Errors != 0 || r.Count == 0 || lost > r.Count/10 {
			t.Errorf("udp %d datagrams, %d lost, %d errors", r.Count, lost, r.Errors)
		}
	})
	t.Run("idle", func(t *testing.T) {
		snaps := 0
		snap := func() (int64, int, error) {
			snaps++
			if snaps == 1 {
				return 1 << 20, 10, nil
			}
			return 1<<20 + 50*1024, 110, nil // +50 KiB, +100 fds
		}
		r := measureIdle(b.Echo[0], 50, 5*time.Second, snap)
		if r.Established != 50 || r.Err != "" {
			t.Fatalf("idle %+v", r)
		}
		if r.RSSPerConnKiB() != 1 || r.FDsPerConn() != 2 {
			t.Errorf("per connection: %v KiB, %v fds; want 1 and 2", r.RSSPerConnKiB(), r.FDsPerConn())
		}
	})
}

func TestMeasuresReportUnreachableTarget(t *testing.T) {
	dead := []string{"127.0.0.1:1"} // nothing listens on port 1 in a test sandbox
	w := newWindow(time.Now(), 10*time.Millisecond, 50*time.Millisecond)
	if r := measureBulk(dead, 1, w); r.Errors != 1 || r.Bytes != 0 {
		t.Errorf("bulk to nowhere: %+v", r)
	}
	if r := measureRR(dead, 2, w); r.Errors == 0 || r.Count != 0 {
		t.Errorf("rr to nowhere: %+v", r)
	}
	if r := measureShort(dead, 1, w); r.Errors == 0 || r.Count != 0 {
		t.Errorf("short to nowhere: %+v", r)
	}
	r := measureIdle(dead[0], 5, time.Second, func() (int64, int, error) { return 0, 0, nil })
	if r.Established != 0 || r.Err == "" {
		t.Errorf("idle to nowhere: %+v", r)
	}
}

func TestWindowCounted(t *testing.T) {
	now := time.Now()
	w := newWindow(now, time.Second, 2*time.Second)
	tests := []struct {
		at   time.Duration
		want bool
	}{{0, false}, {999 * time.Millisecond, false}, {time.Second, true}, {2999 * time.Millisecond, true}, {3 * time.Second, false}}
	for _, tt := range tests {
		if got := w.counted(now.Add(tt.at)); got != tt.want {
			t.Errorf("counted(+%v) = %v", tt.at, got)
		}
	}
	if w.seconds() != 2 {
		t.Errorf("seconds %v", w.seconds())
	}
}
