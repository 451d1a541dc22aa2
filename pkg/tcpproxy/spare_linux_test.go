package tcpproxy

import (
	"os"
	"testing"

	"github.com/lbctl/lbctl/pkg/sparepoll"
	"golang.org/x/sys/unix"
)

// TestLoopStartsSparePoller: a loop's turns are accounted with package
// sparepoll: busy, with another loop parked on a ready descriptor, it
// starts a spare poller (the policy itself is sparepoll's test). The loop
// here is driven by hand, as Go's poller would call it.
func TestLoopStartsSparePoller(t *testing.T) {
	e, err := newEngine()
	if err != nil {
		t.Fatal(err)
	}
	if e.ep == nil {
		t.Skip("LBCTL_TCP_PARK=epoll: the loops do not park in Go's poller")
	}
	defer e.ep.Close()
	defer unix.Close(e.evfd)
	e.sp.SetAfter(0)
	// Another loop, parked on a descriptor that is ready.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	w.Write([]byte("x"))
	var other sparepoll.Loop
	other.Park(int(r.Fd()))
	defer other.Close()

	turn := func() int64 {
		t.Helper()
		before := sparepoll.Started()
		var one = [8]byte{1}
		if _, err := unix.Write(e.evfd, one[:]); err != nil {
			t.Fatal(err)
		}
		if e.serve() {
			t.Fatal("serve returned true: the loop would not park")
		}
		return sparepoll.Started() - before
	}
	if n := turn(); n < 1 {
		t.Fatal("a busy loop, another loop parked and ready, started no spare poller")
	}
}
