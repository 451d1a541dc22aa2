package lbtest

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// fatalRecorder is a testing.TB whose Fatalf records the message and ends
// the goroutine, as the real one does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}
func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// failure runs wait with a recorder in its own goroutine and returns what
// it failed with ("" if it did not fail).
func failure(t *testing.T, wait func(tb testing.TB)) string {
	t.Helper()
	r := &fatalRecorder{TB: t}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		wait(r)
	}()
	wg.Wait()
	return r.msg
}

// TestUntilReportsTheLastState: a wait that times out shows the state its
// last check saw, not the one when the wait began.
func TestUntilReportsTheLastState(t *testing.T) {
	n := 0
	msg := failure(t, func(tb testing.TB) {
		Until(tb, 50*time.Millisecond, func() (bool, string) {
			n++
			return false, fmt.Sprintf("polled %d times", n)
		})
	})
	want := fmt.Sprintf("condition not met within 50ms: polled %d times", n)
	if n < 2 || msg != want {
		t.Fatalf("after %d checks the failure says %q, want %q", n, msg, want)
	}

	if msg := failure(t, func(tb testing.TB) {
		Until(tb, time.Minute, func() (bool, string) { n++; return n%3 == 0, "never shown" })
	}); msg != "" {
		t.Fatalf("a check that came true failed the test: %q", msg)
	}
}

func TestEventually(t *testing.T) {
	msg := failure(t, func(tb testing.TB) {
		Eventually(tb, 20*time.Millisecond, func() bool { return false }, "backend %s not %s", "a", "up")
	})
	if msg != "condition not met within 20ms: backend a not up" {
		t.Fatalf("failure %q", msg)
	}
	if msg := failure(t, func(tb testing.TB) { Eventually(tb, 20*time.Millisecond, func() bool { return false }) }); !strings.HasSuffix(msg, "within 20ms") {
		t.Fatalf("failure without a message %q", msg)
	}
	start := time.Now()
	if msg := failure(t, func(tb testing.TB) {
		Eventually(tb, time.Minute, func() bool { return time.Since(start) > 20*time.Millisecond })
	}); msg != "" {
		t.Fatalf("a condition that came true failed the test: %q", msg)
	}
}

// FreePort's ports are distinct in one process, outside the kernel's
// ephemeral range, and bindable for both TCP and UDP; a port already given
// is not given again even when it is free.
func TestFreePort(t *testing.T) {
	lo, hi := freeRange()
	elo, ehi := 32768, 60999
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		fmt.Sscan(string(b), &elo, &ehi)
	}
	if elo-10000 >= 2000 && (lo != 10000 || hi != elo) {
		t.Fatalf("range [%d, %d), want [10000, %d): below the ephemeral range %d-%d", lo, hi, elo, elo, ehi)
	}
	seen := map[int]bool{}
	for range 50 {
		p := FreePort(t)
		if seen[p] {
			t.Fatalf("port %d given twice", p)
		}
		seen[p] = true
		if p < lo || p >= hi {
			t.Fatalf("port %d outside [%d, %d)", p, lo, hi)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", p)
		l, err := net.Listen("tcp4", addr)
		if err != nil {
			t.Fatalf("tcp %s: %v", addr, err)
		}
		u, err := net.ListenPacket("udp4", addr)
		l.Close()
		if err != nil {
			t.Fatalf("udp %s: %v", addr, err)
		}
		u.Close()
	}
	p := FreePort(t) // free: nothing binds it
	defer func(old func(lo, hi int) int) { pickPort = old }(pickPort)
	pickPort = func(int, int) int { return p }
	if msg := failure(t, func(tb testing.TB) { FreePort(tb) }); !strings.HasPrefix(msg, "no free port") {
		t.Fatalf("with only port %d (given before) to try: failure %q, want no free port", p, msg)
	}
}
