package tcpproxy

import (
	"sync"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// FailAccepts makes the loops' accept4 calls after the first skip fail
// with EMFILE, n of them, until the test ends, as a process out of
// descriptors sees them (accept4 fails so even with nothing queued). It
// returns how many accept4 calls the loops have made since.
func FailAccepts(t *testing.T, skip, n int) (calls func() int) {
	var mu sync.Mutex
	made := 0
	f := func() error {
		mu.Lock()
		defer mu.Unlock()
		made++
		if skip > 0 {
			skip--
			return nil
		}
		if n > 0 {
			n--
			return syscall.EMFILE
		}
		return nil
	}
	acceptFault.Store(&f)
	t.Cleanup(func() { acceptFault.Store(nil) })
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return made
	}
}

// FailWatches makes the next n EPOLL_CTL_ADDs of a listening socket into
// its loop's set fail with ENOSPC (max_user_watches reached).
func FailWatches(t *testing.T, n int) {
	var mu sync.Mutex
	f := func() error {
		mu.Lock()
		defer mu.Unlock()
		if n > 0 {
			n--
			return syscall.ENOSPC
		}
		return nil
	}
	watchFault.Store(&f)
	t.Cleanup(func() { watchFault.Store(nil) })
}

// FailDups makes conversions of a loop's socket to a *net.TCPConn
// (promote; the hand-off of a client to the goroutine path) fail with
// EMFILE, as a process out of descriptors sees them:
// after the first skip, n of them (n < 0: every one), until lift is
// called or the test ends.
func FailDups(t *testing.T, skip, n int) (lift func()) {
	var mu sync.Mutex
	f := func() error {
		mu.Lock()
		defer mu.Unlock()
		if skip > 0 {
			skip--
			return nil
		}
		if n != 0 {
			n--
			return syscall.EMFILE
		}
		return nil
	}
	convertFault.Store(&f)
	lift = func() { convertFault.Store(nil) }
	t.Cleanup(lift)
	return lift
}

// ObserveLeaveLog sends the package's logs to a zap observer for the rest
// of the test, and lets leaveFailed's next failure be logged however
// recent the last one was.
func ObserveLeaveLog(t *testing.T) *observer.ObservedLogs {
	core, logs := observer.New(zap.WarnLevel)
	restore := zap.ReplaceGlobals(zap.New(core))
	leaveLogged.Store(0)
	t.Cleanup(restore)
	return logs
}

// handEngine makes a loop that no goroutine runs, for a test to drive by
// hand; its descriptors are closed when the test ends.
func handEngine(t *testing.T) *engine {
	t.Helper()
	e, err := newEngine()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Close(e.evfd)
		if e.ep != nil {
			e.ep.Close()
		} else {
			unix.Close(e.epfd) // LBCTL_TCP_PARK=epoll: not in Go's poller
		}
	})
	return e
}
