package udpproxy_test

import (
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/udpproxy"
)

// An idle listener sleeps between its timers: its expiry sweep (here every
// 25ms, for an idle timeout of 200ms) and its check for a closed socket
// (every 100ms) wake it, and neither may leave it spinning on a read
// deadline that has passed while it waits for the other.
func TestIdleListenerSleeps(t *testing.T) {
	newRig(t, rigOpts{tweak: func(c *udpproxy.Config) { c.IdleTimeout = 200 * time.Millisecond }}, "127.0.0.1:9")
	time.Sleep(200 * time.Millisecond) // the loop is set up and has swept
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	const idle = 2 * time.Second
	before := cpu()
	time.Sleep(idle) // what is measured: the process doing nothing
	if used := cpu() - before; used > idle/8 {
		t.Errorf("the idle listener used %v of CPU in %v: it spins", used, idle)
	}
}
