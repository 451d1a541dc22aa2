package udpproxy_test

import (
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/udpproxy"
)

// A listener whose sessions are quiet sleeps between its timers: its
// expiry sweep (here every 25ms, for an unreplied timeout of 200ms) and its
// check for a closed socket (every 100ms) wake it, and neither may leave
// it spinning on a read deadline that has passed while it waits for the
// other. The session is answered, so it stays open throughout.
func TestQuietListenerSleeps(t *testing.T) {
	be := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
	r := newRig(t, rigOpts{tweak: func(c *udpproxy.Config) {
		c.IdleTimeout = time.Hour
		c.UnrepliedTimeout = 200 * time.Millisecond
	}}, be.Addr)
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lbtest.UDPExchange(t, c, r.addr, []byte("1"), 5*time.Second)
	time.Sleep(200 * time.Millisecond) // the loop has swept since
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	const quiet = 2 * time.Second
	before := cpu()
	time.Sleep(quiet) // what is measured: the process doing nothing
	if used := cpu() - before; used > quiet/8 {
		t.Errorf("the listener used %v of CPU in %v with a quiet session: it spins", used, quiet)
	}
	if n := r.sessions.Load(); n != 1 {
		t.Errorf("%d sessions open after the quiet time, want the one", n)
	}
}
