//go:build linux

// Package sparepoll keeps a thread of the Go runtime waiting in its network
// poller for lbctl's parked event loops while another loop is busy.
//
// An event loop (the TCP loops of package tcpproxy, the UDP listeners'
// loops of package udpproxy) parks in Go's poller while nothing is ready.
// The runtime thread that waits in the poller runs what it finds, and no
// other thread takes its place there: idle threads sleep until a goroutine
// is made runnable or a thread passes through the scheduler, and sysmon
// polls at most every 10 ms. Goroutines that park and wake often keep that
// gap short; a loop that stays busy does neither (it polls its own epoll
// set), so the sockets of the loops parked meanwhile could wait up to
// 10 ms.
//
// So a loop busy for After looks, every After, at what the parked loops
// wait on (one ppoll(2) of their descriptors, which takes nothing from
// them). If one is ready, nobody is looking at it: the busy loop starts an
// empty goroutine, and making one runnable wakes an idle thread (the
// runtime's wakep), which finds nothing else to do and waits in the
// poller, where the parked loop's readiness is. A loop that parks again
// within After looks at nothing, and a spare poller is started only for a
// loop that is ready. docs/benchmarks.md (issue 14, 16.) has the
// measurements.
//
// The caller passes the time (nanoseconds, any monotonic clock, the same
// one for all the calls of a Loop): a loop reads it once per batch anyway.
//
//	var sp sparepoll.Loop // owned by the loop's goroutine
//	rc.Read(func(uintptr) bool {
//		sp.Resume(nanotime())
//		for n := poll(); n > 0; n = poll() {
//			now := nanotime()
//			handle(n, now)
//			sp.Busy(now)
//		}
//		sp.Park(epfd)
//		return false
//	})
//	sp.Close() // when the loop ends for good
package sparepoll

import (
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbctl/lbctl/pkg/rawsys"
	"golang.org/x/sys/unix"
)

// After is how long a loop is busy before it looks at the parked loops, and
// how often it looks again while it stays busy: longer than the turn of
// one connection's request and response, short against the 10 ms a parked
// loop could wait.
const After = int64(200 * time.Microsecond)

// maxLoops bounds the loops looked at; more are served, but not looked at
// while parked.
const maxLoops = 256

var (
	// waitOn[i] is what the loop in slot i waits on while it is parked,
	// -1 while it runs or the slot is free.
	waitOn [maxLoops]atomic.Int32
	mu     sync.Mutex // over used and high's growth
	used   [maxLoops]bool
	high   atomic.Int32 // slots in use are below it

	off = os.Getenv("LBCTL_SPARE_POLLER") == "off"
)

// Loop is one event loop's account. The zero value is ready; it is owned by
// the loop's goroutine, and must not be copied once used.
type Loop struct {
	slot    int32         // slot+1; 0: none yet, -1: none was free (tried again at each Park)
	parked  bool          // since Park, until Resume
	after   int64         // After, or SetAfter's; -1: never
	set     bool          // after is set
	at      int64         // when this turn looks next; -1: it looks no more; 0: no turn yet
	fds     []unix.PollFd // scratch for the look
	slots   []int32       // the slot of each of fds
	started int64         // spare pollers this loop started, for tests
}

// Resume is called when the loop runs again: when its callback is entered,
// and when the wait it parked in returns without calling it (a deadline,
// an error). Back from a park, it looks at the parked loops After from now
// if it stays busy; a loop that did not park goes on with its turn.
func (l *Loop) Resume(now int64) {
	if !l.set {
		l.set, l.after = true, After
		if off {
			l.after = -1
		}
	}
	if !l.parked && l.at != 0 {
		return
	}
	if l.parked {
		l.parked = false
		if l.slot > 0 {
			waitOn[l.slot-1].Store(-1)
		}
	}
	l.at = 0
	if l.after >= 0 {
		l.at = max(now+l.after, 1)
	}
}

// Busy is called after each batch of events: once the turn has lasted
// After, it looks at the parked loops, then every After while one is.
func (l *Loop) Busy(now int64) {
	if l.at <= 0 || now < l.at {
		return
	}
	l.at = now + l.after
	if !l.look() {
		// None parked: a loop that parks from now on has a thread that
		// polls (its own, or one already waiting there), so this turn
		// looks no more.
		l.at = -1
	}
}

// look starts a spare poller if a parked loop is ready, and reports
// whether any loop was parked.
func (l *Loop) look() bool {
	l.fds, l.slots = l.fds[:0], l.slots[:0]
	for i, n := int32(0), high.Load(); i < n; i++ {
		if i == l.slot-1 {
			continue
		}
		if fd := waitOn[i].Load(); fd >= 0 {
			l.fds = append(l.fds, unix.PollFd{Fd: fd, Events: unix.POLLIN})
			l.slots = append(l.slots, i)
		}
	}
	if len(l.fds) == 0 {
		return false
	}
	if n, errno := rawsys.PollNow(l.fds); n > 0 && errno == 0 {
		for k, pf := range l.fds {
			// Still parked on the same descriptor: not resumed since it
			// was read above. (A descriptor closed and its number reused
			// meanwhile can cost one spare poller for nothing.)
			if pf.Revents&(unix.POLLIN|unix.POLLERR|unix.POLLHUP) != 0 && waitOn[l.slots[k]].Load() == pf.Fd {
				l.started++
				go func() {}()
				break
			}
		}
	}
	return true
}

// Park is called when the loop is about to park in Go's poller, waiting on
// the descriptor fd (its epoll set, or a socket).
func (l *Loop) Park(fd int) {
	if l.slot <= 0 {
		l.slot = take() // -1 again while every slot is in use
	}
	if l.slot > 0 {
		waitOn[l.slot-1].Store(int32(fd))
	}
	l.parked = true
}

// Close gives the loop's slot back; the loop no longer parks. Call it
// before the descriptors it parked on are closed.
func (l *Loop) Close() {
	if l.slot <= 0 {
		return
	}
	waitOn[l.slot-1].Store(-1)
	mu.Lock()
	used[l.slot-1] = false
	mu.Unlock()
	l.slot, l.parked = 0, false
}

// take returns a free slot, +1; -1 if there is none.
func take() int32 {
	mu.Lock()
	defer mu.Unlock()
	for i := range used {
		if !used[i] {
			used[i] = true
			waitOn[i].Store(-1)
			if int32(i) >= high.Load() {
				high.Store(int32(i) + 1)
			}
			return int32(i) + 1
		}
	}
	return -1
}

// SetAfter sets, in place of After, how long this loop is busy before it
// looks at the parked loops (-1: never); for tests.
func (l *Loop) SetAfter(d int64) { l.set, l.after = true, d }

// Started returns the number of spare pollers this loop started; for
// tests, from the loop's goroutine or once it has ended.
func (l *Loop) Started() int64 { return l.started }

// Registered reports whether the loop holds a slot: it parked since it
// was made or last closed; for tests.
func (l *Loop) Registered() bool { return l.slot > 0 }
