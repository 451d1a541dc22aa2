package tcpproxy

import (
	"testing"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"golang.org/x/sys/unix"
)

// TestLoopStartsSparePoller: a loop's turns are accounted with package
// sparepoll: busy, with another loop parked on a ready descriptor, it
// starts a spare poller (the policy itself is sparepoll's test). The loop
// here is driven by hand, as Go's poller would call it.
func TestLoopStartsSparePoller(t *testing.T) {
	e := handEngine(t)
	if e.ep == nil {
		t.Skip("LBCTL_TCP_PARK=epoll: the loops do not park in Go's poller")
	}
	defer e.sp.Close() // before handEngine's clean-up: its slot names e.epfd
	e.sp.SetAfter(0)
	lbtest.ParkedReadyLoop(t)

	turn := func() int64 {
		t.Helper()
		before := e.sp.Started()
		var one = [8]byte{1}
		if _, err := unix.Write(e.evfd, one[:]); err != nil {
			t.Fatal(err)
		}
		if e.serve() {
			t.Fatal("serve returned true: the loop would not park")
		}
		return e.sp.Started() - before
	}
	if n := turn(); n != 1 {
		t.Fatalf("a busy loop, another loop parked and ready: %d spare pollers, want 1", n)
	}
}
