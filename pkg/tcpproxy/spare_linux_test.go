package tcpproxy

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSparePoller: a loop that resumes from Go's poller while another loop
// is parked there starts one spare poller once its turn has lasted
// spareAfter; a turn shorter than that starts none, nor does a loop's first
// turn (it did not come from the poller), nor a loop with
// LBCTL_TCP_SPARE_POLLER=off. The loop here is driven by hand; the other
// parked loop is counted in.
func TestSparePoller(t *testing.T) {
	e, err := newEngine()
	if err != nil {
		t.Fatal(err)
	}
	if e.ep == nil {
		t.Skip("LBCTL_TCP_PARK=epoll: the loops do not park in Go's poller")
	}
	defer e.ep.Close()
	defer unix.Close(e.evfd)
	engines.parked.Add(1) // another loop, parked
	defer engines.parked.Add(-1)

	// turn makes the set ready (the eventfd) and runs one turn of the
	// loop, as Go's poller would call it; it returns the spare pollers
	// started during the turn and whether the loop counts itself parked
	// after it.
	turn := func() int64 {
		t.Helper()
		before := sparePollers.Load()
		var one = [8]byte{1}
		if _, err := unix.Write(e.evfd, one[:]); err != nil {
			t.Fatal(err)
		}
		if e.serve() {
			t.Fatal("serve returned true: the loop would not park")
		}
		if !e.parked {
			t.Fatal("the loop does not count itself parked after its turn")
		}
		return sparePollers.Load() - before
	}

	e.spareAfter = 0
	if n := turn(); n != 0 {
		t.Fatalf("first turn, not resumed from the poller: %d spare pollers, want 0", n)
	}
	if n := turn(); n != 1 {
		t.Fatalf("resumed with another loop parked, turn past spareAfter: %d spare pollers, want 1", n)
	}
	e.spareAfter = int64(time.Hour)
	if n := turn(); n != 0 {
		t.Fatalf("a turn shorter than spareAfter: %d spare pollers, want 0", n)
	}
	e.spareAfter = -1 // as newEngine sets it with LBCTL_TCP_SPARE_POLLER=off
	if n := turn(); n != 0 {
		t.Fatalf("LBCTL_TCP_SPARE_POLLER=off: %d spare pollers, want 0", n)
	}
}
