package udpproxy

import (
	"testing"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// TestLoopStartsSparePoller: a listener's loop accounts its turns with
// package sparepoll: busy (here with the first datagram, after it waited
// on its socket, idle), with another loop parked on a ready descriptor, it
// starts a spare poller (the policy itself is sparepoll's test); and it
// gives its slot back when it ends.
func TestLoopStartsSparePoller(t *testing.T) {
	l := oneBackendListener(t)
	l.sp.SetAfter(0) // before the loop runs: from then on it is the loop's
	lbtest.ParkedReadyLoop(t)
	stop := serveIdle(t, l)
	exchangeOne(t, l)
	stop()
	if l.sp.Started() < 1 {
		t.Fatal("the busy loop, another loop parked and ready, started no spare poller")
	}
	if l.sp.Registered() {
		t.Fatal("the loop ended holding its slot")
	}
}
