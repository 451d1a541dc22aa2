package tcpproxy

// The event loop: how an established connection moves small messages on
// Linux without a goroutine per direction.
//
// A goroutine per direction parked in Go's poller costs, for every small
// message, a wake-up of that goroutine and a read(2) that finds nothing
// (Go drops a socket's readiness each time it waits, so a goroutine must
// read until EAGAIN before it may park), and an idle connection keeps two
// goroutine stacks. An event loop, as in HAProxy and nginx, instead waits
// on an epoll set holding the sockets of many connections and handles every
// ready one per wake-up, on the goroutine that woke:
//
//   - One loop per two Ps (GOMAXPROCS/2, at least one; see setupEngines),
//     made when the server starts; a connection joins one, in turn, once
//     its backend connection is made (start), or is connected by one
//     (dial_linux.go). A plain listener's socket is in one loop's set,
//     which accepts its connections itself (accept_linux.go).
//   - Each socket joins the set once, edge-triggered for input and
//     output, as in Go's own poller: no epoll_ctl after that, whatever the
//     connection does. A socket that says it is readable gets one read(2)
//     into the loop's buffer and the bytes go straight to the other socket
//     with write(2): one read and one write per message. A read that
//     returns less than the buffer took all the socket had (new data
//     brings a new event), so there is no read that finds nothing, except
//     when the event also said the peer shut down (its EOF comes with the
//     next read). What the destination does not accept waits in a pooled
//     buffer of the connection (pending); the source is then not read
//     until the destination says it is writable and the buffer is
//     written, and is read again then. These calls never wait, so they
//     are raw system calls (pkg/rawsys).
//   - The loop's epoll descriptor is itself pollable: the loop parks in
//     Go's poller on it like any goroutine on a socket, so it costs no
//     thread while nothing is ready and cooperates with the scheduler. Its
//     sockets stay registered in Go's poller too (they are *net.TCPConn),
//     where nothing waits on them.
//   - A read that fills the buffer means a bulk transfer: the connection
//     leaves the loop for the goroutine-per-direction path (copy_linux.go)
//     which splices, with what was not written yet (promote). A detach for
//     an upgrade (Conn.Detach) moves it there first too.
//   - EOF, half-close, errors, resets, byte counters and the idle clock are
//     the goroutine path's, on the same conn: the idle and half-close
//     timers and the shutdown callback are the same per-connection timers,
//     which end the connection (conn.end). Only the loop closes a
//     connection it serves: an end from elsewhere (a timer, a kill, the
//     shutdown drain) records its reason and posts it to the loop, so no
//     descriptor number is ever closed while the loop may still use it.
//
// An idle connection in a loop costs its conn struct and two sockets: no
// goroutine, no buffer, no pipe.
//
// LBCTL_TCP_ENGINE=goroutines in the environment turns the loops off (every
// connection then runs on the goroutine path), for comparison.

import (
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lbctl/lbctl/pkg/rawsys"
	"github.com/lbctl/lbctl/pkg/sparepoll"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// maxEvents is the most ready sockets one epoll_wait returns.
const maxEvents = 256

// wakeSlot is the epoll data of the loop's eventfd (Fd field); connection
// slots are non-negative.
const wakeSlot = -1

// conn.slot outside a loop's table.
const (
	slotJoining  = -1 // added, not joined yet
	slotPromoted = -2 // moved to the goroutine path
	slotClosed   = -3 // closed by its loop
)

// genMask bounds a slot's generation to the 31 bits it has in an event.
const genMask = 1<<31 - 1

// sockEvents is the interest of every socket in a loop's set, registered
// once: edge-triggered, as in Go's own poller (see the top of this file).
const sockEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET

// engine is one event loop.
type engine struct {
	epfd    int
	ep      *os.File        // epfd, in Go's poller
	eprc    syscall.RawConn // ep's raw conn
	evfd    int             // eventfd in the set: post wakes the loop with it
	buf     []byte          // read buffer, smallBufSize
	events  [maxEvents]unix.EpollEvent
	serveFn func(uintptr) bool // serve as a RawConn callback, bound once: no allocation per wait
	now     int64              // nanotime of the last wake-up

	// Owned by the loop's goroutine.
	sp    sparepoll.Loop // wakes a thread to poll for the parked loops while this one is busy (serve)
	conns []*conn        // by slot
	gens  []uint32       // by slot: bumped each time the slot is taken, so a late event of its last user is told apart
	free  []int32        // free slots
	lns   []*Listener    // the listeners it accepts on (accept_linux.go), by id; nil entries free

	mu       sync.Mutex
	ops      []op // posted, for the loop to carry out
	spare    []op
	sleeping bool // the loop is parked (or about to): post must wake it

	turns atomic.Uint64 // serve calls so far, for the watchdog
	wd    watchdog      // owned by the watchdog's timer (each look starts the next)
}

type opKind uint8

const (
	opAdd          opKind = iota + 1 // serve a started connection
	opEnd                            // close a connection whose reason is set
	opPromote                        // move a connection to the goroutine path
	opConnect                        // connect a client to a backend (dial_linux.go)
	opDialTimeout                    // a connect timer fired
	opReadOn                         // read on a side that yielded with bytes left (read)
	opInspect                        // read a client's ClientHello, then route and connect it (hello_linux.go)
	opHelloTimeout                   // an inspect timer fired
	// A listener's (accept_linux.go).
	opListen
	opPause
	opResume
	opUnlisten
	opAcceptRetry // accept again: more may wait (a batch's end, a resume)
	opAcceptTimer // a back-off is over
)

// op is a request to the loop from another goroutine.
type op struct {
	kind opKind
	c    *conn
	l    *Listener
	done chan struct{} // opPromote and a listener's: closed once carried out
	side int8          // opReadOn: the side to read from (0 client, 1 backend)
}

var engines struct {
	once      sync.Once
	off       bool
	goDial    bool                     // connects on the goroutine path (dial_linux.go)
	parkEpoll bool                     // loops wait in epoll_pwait, not in Go's poller (runInEpoll)
	list      []atomic.Pointer[engine] // made by setupEngines; nil entries not made yet
	next      atomic.Uint32
	mu        sync.Mutex // serializes making a loop
}

// StartEngines makes the event loops now instead of at the first
// connection, so that their descriptors (two per loop) are open from the
// start: a server calls it when it starts. An error (out of descriptors)
// is not fatal: loops that could not be made are tried again when needed.
func StartEngines() error {
	setupEngines()
	if engines.off {
		return nil
	}
	for i := range engines.list {
		if _, err := engineAt(i); err != nil {
			return err
		}
	}
	return nil
}

// setupEngines reads the environment once: LBCTL_TCP_ENGINE=goroutines
// turns the loops off; LBCTL_TCP_ENGINES=N makes N loops.
//
// By default there is one loop per two Ps (GOMAXPROCS/2, at least one): the
// other Ps run what is not in a loop (bulk transfers, PROXY-header
// listeners, Go's poller). On 2 cores shared with a load generator, two
// loops served short connections 4 % faster than one (SNI-routed ones
// 8-14 %), but 32 request/response connections at 0.96-0.99x HAProxy's
// CPU per request instead of 0.72-0.78x, with a p99 of 1.2x HAProxy's
// instead of 0.9x (lbbench, pairs run back to back, with the first
// version of the spare poller; docs/benchmarks.md, issue 14, 16.).
func setupEngines() {
	engines.once.Do(func() {
		engines.off = os.Getenv("LBCTL_TCP_ENGINE") == "goroutines"
		engines.goDial = os.Getenv("LBCTL_TCP_DIAL") == "goroutines"
		engines.parkEpoll = os.Getenv("LBCTL_TCP_PARK") == "epoll"
		n := max(1, runtime.GOMAXPROCS(0)/2)
		if v, err := strconv.Atoi(os.Getenv("LBCTL_TCP_ENGINES")); err == nil && v > 0 {
			n = v
		}
		engines.list = make([]atomic.Pointer[engine], n)
	})
}

// pickEngine returns the loop for a new connection, in turn, nil when there
// is none (turned off, or it cannot be made: the connection then runs on
// the goroutine path).
func pickEngine() *engine {
	setupEngines()
	if engines.off {
		return nil
	}
	e, _ := engineAt(int(engines.next.Add(1)) % len(engines.list))
	return e
}

// engineAt returns loop i, making and starting it if it is not yet.
func engineAt(i int) (*engine, error) {
	if e := engines.list[i].Load(); e != nil {
		return e, nil
	}
	engines.mu.Lock()
	defer engines.mu.Unlock()
	if e := engines.list[i].Load(); e != nil {
		return e, nil
	}
	e, err := newEngine()
	if err != nil {
		return nil, err // out of descriptors, probably: tried again next time
	}
	engines.list[i].Store(e)
	go e.run()
	time.AfterFunc(watchdogEvery, e.watchdogTick)
	return e, nil
}

func newEngine() (*engine, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	// Edge-triggered like the sockets: a level-triggered member would make
	// the set look ready again right after the loop took its events.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: wakeSlot}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, err
	}
	if engines.parkEpoll {
		// Not in Go's poller: its thread would be woken for every
		// event of the set, for nothing.
		e := &engine{epfd: epfd, evfd: evfd, buf: make([]byte, smallBufSize)}
		return e, nil
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, err
	}
	ep := os.NewFile(uintptr(epfd), "tcpproxy-epoll")
	rc, err := ep.SyscallConn()
	if err != nil {
		ep.Close()
		unix.Close(evfd)
		return nil, err
	}
	e := &engine{epfd: epfd, ep: ep, eprc: rc, evfd: evfd, buf: make([]byte, smallBufSize)}
	e.serveFn = func(uintptr) bool { return e.serve() }
	return e, nil
}

// add hands a started connection (timers armed) to the loop.
func (e *engine) add(c *conn) {
	c.eng, c.slot = e, slotJoining
	c.inLoop.Store(true)
	e.post(op{kind: opAdd, c: c})
}

// post queues o for the loop, waking it if it sleeps.
func (e *engine) post(o op) {
	e.mu.Lock()
	e.ops = append(e.ops, o)
	wake := e.sleeping
	e.sleeping = false
	e.mu.Unlock()
	if wake {
		var one = [8]byte{1}
		rawsys.Write(e.evfd, one[:]) // EAGAIN: the counter is full, a wake-up is pending anyway
	}
}

// end asks the loop to close c, whose reason is set (conn.end).
func (e *engine) end(c *conn) { e.post(op{kind: opEnd, c: c}) }

// promoteWait moves c to the goroutine path, if the loop still serves it,
// and returns once that is done.
func (e *engine) promoteWait(c *conn) {
	done := make(chan struct{})
	e.post(op{kind: opPromote, c: c, done: done})
	<-done
}

// run is the loop's goroutine. It never returns: loops live as long as
// the process.
//
// The whole loop runs inside one RawConn.Read of the epoll descriptor:
// serve is its callback, and returning false parks the loop in Go's poller
// until the descriptor is ready again. Read forgets a readiness only when
// it starts (Go's pollReset), not between two calls of the callback.
//
// The loop parks only after a poll that found nothing. Parking right after
// a batch (every socket and the eventfd are edge-triggered, so what becomes
// ready later wakes the descriptor again) saved that poll, but make
// test-stress then saw, about once in ten rounds, a connection whose
// client socket the loop never read again (TestLoopStalledWriters: busy
// 0/0, the client blocked after 275,000 bytes): a readiness that reached
// neither the loop's poll nor Go's poller. The cause was not found; the
// look before parking closes the window it needs, for one epoll_pwait per
// wake-up (docs/benchmarks.md, issue 14, 6.).
func (e *engine) run() {
	if engines.parkEpoll {
		e.runInEpoll()
		return
	}
	for {
		if err := e.eprc.Read(e.serveFn); err != nil {
			e.sp.Resume(nanotime()) // not parked any more
			// The epoll descriptor is never closed: nothing to do but retry.
			zap.L().Error("tcp event loop: wait failed", zap.Error(err))
		}
	}
}

// The watchdog. A parked loop is woken by Go's poller when its epoll
// descriptor becomes ready; make test-stress once saw a loop that stayed
// parked with a socket ready (see run), cause not found. Once a second the
// watchdog looks at every loop: one that is parked, whose set has events
// ready (poll(2) on the epoll descriptor, which takes none of them), and
// that was so at the look before with no turn since, has missed a
// readiness. It is woken through its eventfd, which gives its descriptor a
// new readiness, and the miss is logged (at most once a minute per loop)
// and counted (MissedWakeups). A loop that misses one then stalls for 1 to
// 2 s instead of for good, and the log says it happened.
const watchdogEvery = time.Second

type watchdog struct {
	turns   uint64
	suspect bool // parked and ready at the last look
	logged  time.Time
}

// missedWakeups counts the loops' wake-ups made by the watchdog.
var missedWakeups atomic.Int64

// MissedWakeups is the number of times a watchdog found an event loop
// parked with its set ready and woke it: 0 unless a wake-up was lost.
func MissedWakeups() int64 { return missedWakeups.Load() }

// watchdogLook is the watchdog's look at e (watchdogTick).
func (e *engine) watchdogLook() {
	e.mu.Lock()
	asleep := e.sleeping
	e.mu.Unlock()
	turns := e.turns.Load()
	ready := asleep && epollReady(e.epfd)
	if ready && e.wd.suspect && turns == e.wd.turns {
		missedWakeups.Add(1)
		var one = [8]byte{1}
		rawsys.Write(e.evfd, one[:])
		if now := time.Now(); now.Sub(e.wd.logged) >= time.Minute {
			e.wd.logged = now
			zap.L().Warn("tcp event loop: parked with sockets ready for a second; woken by its watchdog",
				zap.Int64("missed_wakeups", missedWakeups.Load()))
		}
		ready = false
	}
	e.wd.suspect, e.wd.turns = ready, turns
}

// watchdogTick looks at e and arms the next look (each comes after the
// last one is over).
func (e *engine) watchdogTick() {
	e.watchdogLook()
	time.AfterFunc(watchdogEvery, e.watchdogTick)
}

// epollReady reports whether the epoll set epfd has events ready, without
// taking them.
func epollReady(epfd int) bool {
	fds := [1]unix.PollFd{{Fd: int32(epfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds[:], 0)
	return err == nil && n > 0 && fds[0].Revents&unix.POLLIN != 0
}

// serve handles what is ready and what was posted, and returns false to
// park once there is nothing left. It never returns true. While it is
// busy, it looks at the parked loops, and wakes a runtime thread to wait in
// Go's poller for one that is ready (package sparepoll).
func (e *engine) serve() bool {
	e.sp.Resume(nanotime())
	e.serveWith(-1, true)
	e.sp.Park(e.epfd)
	return false
}

// serveWith handles the n events in e.events (n < 0: none taken yet, it
// polls first) and what was posted, then polls for more, until nothing is
// left; it returns with sleeping set. With recheck it polls once more
// after every batch, and returns only after a poll that found nothing.
func (e *engine) serveWith(n int, recheck bool) {
	e.turns.Add(1)
	e.mu.Lock()
	e.sleeping = false
	e.mu.Unlock()
	for {
		if n < 0 {
			n = e.poll()
		}
		if n > 0 {
			e.now = nanotime()
			e.sp.Busy(e.now)
		}
		for i := 0; i < n; i++ {
			ev := &e.events[i]
			if ev.Fd == wakeSlot {
				var b [8]byte
				rawsys.Read(e.evfd, b[:])
				continue
			}
			if ev.Fd < wakeSlot {
				e.listenEvent(ev.Fd) // accept_linux.go
				continue
			}
			e.handle(ev)
		}
		e.runOps()
		if n > 0 && recheck {
			n = -1
			continue // look again before parking (see run)
		}
		n = -1
		e.mu.Lock()
		if len(e.ops) > 0 {
			e.mu.Unlock()
			continue
		}
		e.sleeping = true
		e.mu.Unlock()
		return
	}
}

// runInEpoll is run for a loop that waits in epoll_pwait itself
// (LBCTL_TCP_PARK=epoll), as HAProxy's threads do, instead of in Go's
// poller: one epoll_pwait per wake-up, which is also the look for more
// after a batch, and the loop's thread is woken by the kernel directly.
// While it waits the thread leaves its P to the scheduler (a blocking
// system call), and takes one again when it returns.
func (e *engine) runInEpoll() {
	n := -1
	for {
		e.serveWith(n, false)
		var errno unix.Errno
		n, errno = rawsys.EpollWait(e.epfd, e.events[:], -1)
		if errno != 0 {
			n = -1 // EINTR: poll again
		}
	}
}

// poll returns the number of events ready now (in e.events), without
// waiting.
func (e *engine) poll() int {
	for {
		n, err := rawsys.EpollPoll(e.epfd, e.events[:])
		if err == unix.EINTR {
			continue
		}
		if err != 0 {
			return 0
		}
		return n
	}
}

// runOps carries out what was posted.
func (e *engine) runOps() {
	e.mu.Lock()
	ops := e.ops
	e.ops, e.spare = e.spare[:0], nil
	e.mu.Unlock()
	for i := range ops {
		o := &ops[i]
		switch o.kind {
		case opAdd:
			e.join(o.c)
		case opEnd:
			if e.serves(o.c) {
				e.close(o.c)
			} else if o.c.slot == slotPromoted {
				// Moved to the goroutine path after the end was posted:
				// close it as that path does.
				o.c.closeSockets(o.c.resets(End(o.c.reason.Load())))
			}
		case opPromote:
			if e.serves(o.c) {
				e.promote(o.c, nil)
			}
			close(o.done)
		case opConnect:
			e.startDial(o.c)
		case opDialTimeout:
			e.dialTimeout(o.c)
		case opInspect:
			e.startHello(o.c)
		case opHelloTimeout:
			e.helloTimeout(o.c)
		case opReadOn:
			if e.serves(o.c) {
				if rd, _ := o.c.rolesOf(int(o.side)); !rd.eof && rd.buf == nil {
					e.read(o.c, rd, true)
				}
			}
		default:
			e.listenOp(o) // accept_linux.go
		}
		*o = op{}
	}
	e.mu.Lock()
	if e.spare == nil {
		e.spare = ops[:0]
	}
	e.mu.Unlock()
}

// serves reports whether c is in the loop's table.
func (e *engine) serves(c *conn) bool {
	return c.slot >= 0 && int(c.slot) < len(e.conns) && e.conns[c.slot] == c
}

// join registers c's sockets.
func (e *engine) join(c *conn) {
	e.takeSlot(c)
	c.in.sfd, c.in.dfd = sockFD(c.in.srcRaw), sockFD(c.in.dstRaw)
	c.out.sfd, c.out.dfd = c.in.dfd, c.in.sfd
	if c.reason.Load() != 0 { // ended before it joined
		e.close(c)
		return
	}
	for side := 0; side < 2; side++ {
		ev := unix.EpollEvent{Events: sockEvents, Fd: c.slot, Pad: int32(c.gen<<1) | int32(side)}
		if rawsys.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, c.fdOf(side), &ev) != 0 {
			// The set is full (max_user_watches): serve it the other way.
			e.promote(c, nil)
			return
		}
		c.added |= 1 << side
	}
}

// takeSlot puts c in the loop's table, with a new generation.
func (e *engine) takeSlot(c *conn) {
	var slot int32
	if n := len(e.free); n > 0 {
		slot = e.free[n-1]
		e.free = e.free[:n-1]
	} else {
		slot = int32(len(e.conns))
		e.conns = append(e.conns, nil)
		e.gens = append(e.gens, 0)
	}
	e.conns[slot] = c
	e.gens[slot] = (e.gens[slot] + 1) & genMask
	c.slot, c.gen = slot, e.gens[slot]
}

// sockFD returns the descriptor of a socket's raw conn.
func sockFD(raw syscall.RawConn) int {
	fd := -1
	raw.Control(func(s uintptr) { fd = int(s) })
	return fd
}

// fdOf returns the descriptor of side (0 client, 1 backend).
func (c *conn) fdOf(side int) int {
	if side == 0 {
		return c.in.sfd
	}
	return c.out.sfd
}

// rolesOf returns the direction that reads side's socket and the one that
// writes to it.
func (c *conn) rolesOf(side int) (rd, wr *direction) {
	if side == 0 {
		return &c.in, &c.out
	}
	return &c.out, &c.in
}

func sideFailed(side int) End {
	if side == 0 {
		return EndClientError
	}
	return EndBackendError
}

// handle serves one ready socket. Registration is edge-triggered: an
// event says something changed, and what is ready is found by trying.
func (e *engine) handle(ev *unix.EpollEvent) {
	slot := int(ev.Fd)
	if slot >= len(e.conns) {
		return
	}
	c := e.conns[slot]
	side := int(ev.Pad & 1)
	if c == nil || c.gen != uint32(ev.Pad)>>1 {
		return // an event for a connection that left the slot
	}
	if c.reason.Load() != 0 {
		e.close(c) // ended elsewhere; its op may still be on its way
		return
	}
	if c.dial != nil {
		if side == 1 {
			e.dialEvent(c, ev.Events) // dial_linux.go
		}
		return
	}
	if c.hello != nil {
		e.helloEvent(c, ev.Events) // hello_linux.go
		return
	}
	e.serveSide(c, side, ev.Events)
}

// serveSide serves the events flags of side's socket.
func (e *engine) serveSide(c *conn, side int, flags uint32) {
	slot := int(c.slot)
	rd, wr := c.rolesOf(side)
	if flags&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 && wr.buf != nil {
		e.flush(c, wr)
		if e.conns[slot] != c {
			return // ended or promoted
		}
	}
	switch {
	case flags&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) != 0 && !rd.eof && rd.buf == nil:
		// With the peer's FIN (or an error) already there, a short
		// read is not the end: the next one returns the EOF, and no
		// new event would come for it.
		e.read(c, rd, flags&(unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) != 0)
	case flags&(unix.EPOLLERR|unix.EPOLLHUP) != 0 && wr.buf == nil:
		e.hangup(c, side)
	}
}

// read moves what d's source has. One read that returns less than the
// buffer emptied the socket of data (a TCP read takes all that is queued,
// up to the buffer's size): what arrives later brings a new event. But a
// FIN queued behind the data is returned by the next read only: with
// toEnd (the event said the peer shut down, or the socket's events went
// unread), read goes on until the socket says EAGAIN or EOF. A read that
// fills the buffer means a bulk transfer, which leaves the loop.
func (e *engine) read(c *conn, d *direction, toEnd bool) {
	for full := 0; ; {
		n, err := rawsys.Read(d.sfd, e.buf)
		switch err {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return
		default:
			e.endNow(c, d.srcFailed())
			return
		}
		if n == 0 {
			e.eof(c, d)
			return
		}
		if !e.forward(c, d, e.buf[:n]) || d.buf != nil {
			return // ended, or the destination is full: flush reads on
		}
		if n < len(e.buf) {
			if toEnd {
				continue
			}
			return
		}
		if !loopKeepsBulk.Load() && e.now >= c.promoteAfter {
			if e.promote(c, d) || !e.serves(c) {
				return // bulk: it splices now
			}
		}
		// A bulk transfer the loop keeps (no descriptor to leave it)
		// yields after maxFullReads: the rest is read after the loop's
		// other events (opReadOn), since no new edge would say it is
		// there.
		if full++; full == maxFullReads {
			e.post(op{kind: opReadOn, c: c, side: int8(d.srcSide())})
			return
		}
	}
}

// maxFullReads is how many full buffers one direction reads in a row
// before the loop serves its other connections.
const maxFullReads = 64

// forward writes b to d's destination; what it does not take waits in a
// buffer of d, and d's source is not read until it is written (flush). It
// reports false when the connection ended.
func (e *engine) forward(c *conn, d *direction, b []byte) bool {
	off, ok := e.write(c, d, b)
	if !ok {
		return false
	}
	if off < len(b) {
		p := bufPool.Get().(*[]byte)
		d.n = copy(*p, b[off:])
		d.buf, d.off = p, 0
		d.busy.Add(1) // holds bytes: odd
	}
	return true
}

// flush writes what d holds, once its destination said it is writable.
// When all is written, d's source is read again: it was not read while
// its events came, so what it has is found by reading.
func (e *engine) flush(c *conn, d *direction) {
	n, ok := e.write(c, d, (*d.buf)[d.off:d.n])
	if !ok {
		return
	}
	if d.off += n; d.off < d.n {
		return
	}
	bufPool.Put(d.buf)
	d.buf, d.n, d.off = nil, 0, 0
	d.busy.Add(1) // even: nothing held
	e.read(c, d, true)
}

// write writes b to d's destination until it is all written or the socket
// would block, counting each chunk accepted, and returns how much was
// written; ok is false when the write failed (the connection has ended).
func (e *engine) write(c *conn, d *direction, b []byte) (n int, ok bool) {
	for n < len(b) {
		m, err := rawsys.Write(d.dfd, b[n:])
		switch err {
		case 0:
			n += m
			d.bytes += int64(m)
			d.m.AddBytes(d.dir, m)
			c.last.Store(e.now)
		case unix.EINTR:
		case unix.EAGAIN:
			return n, true
		default:
			e.endNow(c, d.dstFailed())
			return n, false
		}
	}
	return n, true
}

// eof: d's source finished sending. As on the goroutine path, the
// destination's write side is shut and the other direction goes on, for at
// most HalfCloseTimeout; when it is over too the connection is done.
func (e *engine) eof(c *conn, d *direction) {
	d.eof = true
	if c.eofs.Add(1) == 2 {
		e.endNow(c, EndDone)
		return
	}
	// If the peer is already gone this fails; the other direction then
	// sees the failure itself and ends the connection.
	rawsys.Shutdown(d.dfd, unix.SHUT_WR)
	if c.halfClose > 0 {
		c.armHalfClose(c.halfClose)
	}
}

// hangup handles an error or hang-up on a socket that no direction is
// using at the moment (nothing to read from it, nothing to write to it): a
// pending error ends the connection as the failure of that side. A
// hang-up without one (both ways shut) changes nothing: the directions see
// it when they next use the socket.
func (e *engine) hangup(c *conn, side int) {
	if soerr, errno := rawsys.GetsockoptInt(c.fdOf(side), unix.SOL_SOCKET, unix.SO_ERROR); errno != 0 || soerr != 0 {
		e.endNow(c, sideFailed(side))
	}
}

// endNow ends c from the loop: the first reason wins, and the loop closes
// it at once.
func (e *engine) endNow(c *conn, why End) {
	c.reason.CompareAndSwap(0, int32(why))
	if e.serves(c) {
		e.close(c)
	}
}

// close closes a connection the loop serves, whose reason is set, and runs
// its end.
func (e *engine) close(c *conn) {
	if c.dial != nil {
		e.abortDial(c) // dial_linux.go
		return
	}
	if c.hello != nil {
		e.helloEnded(c, nil) // hello_linux.go; a shutdown's, counted
		return
	}
	reset := c.resets(End(c.reason.Load())) // before the buffers go: they count as unsent
	for _, d := range [2]*direction{&c.in, &c.out} {
		if d.buf != nil {
			bufPool.Put(d.buf)
			d.buf, d.n, d.off = nil, 0, 0
			d.busy.Add(1)
		}
	}
	e.leave(c)
	c.inLoop.Store(false)
	c.slot = slotClosed
	c.closeSockets(reset) // closing the last descriptor takes them out of the set
	c.finished()
}

// leave frees c's slot.
func (e *engine) leave(c *conn) {
	e.conns[c.slot] = nil
	e.free = append(e.free, c.slot)
	c.slot = slotPromoted // close overwrites it
}

// promote moves c to the goroutine path (copy_linux.go): for a bulk
// transfer in d (nil for a detach), which then splices at once. What a
// direction holds is written first by its goroutine. It reports whether c
// left the loop.
//
// A socket the loop accepted or connected becomes a *net.TCPConn first,
// while it is still in the loop's set: that needs spare descriptors for
// a moment. Out of them, c stays in the loop, which goes on serving it
// (a bulk transfer is copied, not spliced, and tries again after
// promoteRetry); only a connection that the loop cannot watch (its set is
// full) ends then.
func (e *engine) promote(c *conn, bulk *direction) bool {
	var ctc, btc *net.TCPConn
	var err error
	if c.client == nil {
		if ctc, err = c.clientConn(); err != nil {
			return e.promoteFailed(c, err)
		}
	}
	if c.backend == nil {
		if btc, err = c.backendConn(); err != nil {
			if ctc != nil {
				ctc.Close() // a duplicate: the socket stays open
			}
			return e.promoteFailed(c, err)
		}
	}
	for side := 0; side < 2; side++ {
		if c.added&(1<<side) != 0 {
			rawsys.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, c.fdOf(side), nil)
		}
	}
	c.useConns(ctc, btc)
	e.leave(c)
	if bulk != nil {
		bulk.burstFirst = true
	}
	c.inLoop.Store(false)
	c.runDirections()
	if c.reason.Load() != 0 {
		// Ended before inLoop was cleared: its op may be handled before
		// or after this; closing twice does no harm.
		c.closeSockets(c.resets(End(c.reason.Load())))
	}
	return true
}

// promoteFailures counts the times a connection could not leave a loop
// for want of descriptors.
var promoteFailures atomic.Int64

// PromoteFailures is the number of times a connection could not leave an
// event loop for want of descriptors: for a bulk transfer's splice or a
// detach (it stayed in the loop, or ended if the loop could not watch
// it), or for the goroutine path after its accept or its ClientHello (a
// PROXY header to read, a hello too long for the loop: it was reset).
func PromoteFailures() int64 { return promoteFailures.Load() }

// promoteRetry is how long a connection that could not leave the loop
// for want of descriptors stays in it before a bulk read tries again.
const promoteRetry = time.Second

// promoteFailed is promote's way out when a socket could not become a
// *net.TCPConn (out of descriptors): c stays in the loop when both its
// sockets are in the set, and ends (EndLocalResource, both sides reset) otherwise.
func (e *engine) promoteFailed(c *conn, err error) bool {
	if c.added == 3 {
		leaveFailed(err, "stays in the loop")
		c.promoteAfter = nanotime() + int64(promoteRetry)
		return false
	}
	leaveFailed(err, "ended")
	c.reason.CompareAndSwap(0, int32(EndLocalResource))
	e.close(c)
	return false
}

// leaveLogEvery is how often at most leaveFailed logs.
const leaveLogEvery = 10 * time.Second

// leaveLogged is when leaveFailed last logged (nanotime; 0: never).
var leaveLogged atomic.Int64

// leaveFailed counts a connection that could not leave its loop for want
// of descriptors (err), and logs it with then, what became of it: the
// first time, then at most once every leaveLogEvery, with the count so
// far (promote failures).
func leaveFailed(err error, then string) {
	n := promoteFailures.Add(1)
	now, last := nanotime(), leaveLogged.Load()
	if (last == 0 || now-last >= int64(leaveLogEvery)) && leaveLogged.CompareAndSwap(last, now) {
		zap.L().Warn("tcp event loop: a connection could not leave the loop for want of file descriptors",
			zap.String("connection", then), zap.Error(err), zap.Int64("promote_failures", n))
	}
}

// srcSide is the side (0 client, 1 backend) d reads from.
func (d *direction) srcSide() int {
	if d == &d.c.in {
		return 0
	}
	return 1
}

func (d *direction) srcFailed() End { return sideFailed(d.srcSide()) }
func (d *direction) dstFailed() End { return sideFailed(1 - d.srcSide()) }
