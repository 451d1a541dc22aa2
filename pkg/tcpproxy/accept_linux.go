package tcpproxy

// Accepts made by an event loop (ListenInLoop).
//
// A listener served by Go's net package costs, per connection, a wake-up
// of its accept goroutine by Go's poller, accept4, getsockname, Go's
// epoll_ctl add (and its delete at close) for a socket an event loop
// serves, and a post to that loop, whose eventfd wakes it: the loop has
// usually parked between two short connections. Here the listening socket
// is in one loop's own epoll set, as in HAProxy and nginx: the loop accepts
// with a raw accept4 when it says it is readable, the client stays a bare
// descriptor like the backend socket the loop connects (dial_linux.go), and
// the connect starts in the same batch. The client becomes a *net.TCPConn
// only if the connection leaves the loop (promote), or if the listener's
// owner takes it elsewhere (Handoff).
//
// The listener is owned by its owner (pkg/server): pause, resume and stop
// are posted to the loop and return once it has carried them out, so the
// owner never closes a descriptor the loop may still accept on.

import (
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lbctl/lbctl/pkg/rawsys"
	"golang.org/x/sys/unix"
)

// Accept back-off bounds, as the accept goroutines of pkg/server.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// acceptBatch is the most connections a loop accepts from one listener
// before it serves its other events: a burst of connections waits a turn
// instead of holding up every established one.
const acceptBatch = 64

// Listener is a listening socket whose connections an event loop accepts.
type Listener struct {
	rc syscall.RawConn // the listening socket's; every use of its descriptor is inside rc.Control
	e  *engine
	h  ListenerHooks
	id int32 // index in e.lns

	// rc.Control's callbacks, bound once.
	acceptFn, watchFn, unwatchFn func(uintptr)
	watchErr                     error // of watchFn's EPOLL_CTL_ADD

	// Owned by the loop's goroutine.
	in       bool // in the loop's set
	paused   bool
	backoff  time.Duration // not 0 from a failed accept until one succeeds
	failures int
	timer    *time.Timer // the back-off's, while the socket is out of the set; posts opAcceptTimer
}

// ListenInLoop makes an event loop accept ln's connections, until Stop.
// It returns nil when there is no event loop (turned off, or it cannot be
// made) or loops do not connect to backends (LBCTL_TCP_DIAL=goroutines):
// the caller then accepts with its own goroutine.
func ListenInLoop(ln *net.TCPListener, h ListenerHooks) *Listener {
	e := pickDialEngine()
	if e == nil || os.Getenv("LBCTL_TCP_ACCEPT") == "goroutines" {
		return nil
	}
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil
	}
	l := &Listener{rc: rc, e: e, h: h}
	l.acceptFn = func(fd uintptr) { e.acceptFD(l, int(fd)) }
	l.watchFn = func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: listenSlot(l.id)}
		if f := watchFault.Load(); f != nil {
			if l.watchErr = (*f)(); l.watchErr != nil {
				l.in = false
				return
			}
		}
		l.watchErr = rawsys.Errno(rawsys.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev))
		l.in = l.watchErr == nil
	}
	l.unwatchFn = func(fd uintptr) { rawsys.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) }
	e.callWait(op{kind: opListen, l: l})
	if !l.in {
		return nil // the set is full (max_user_watches)
	}
	return l
}

// Pause makes the loop stop accepting, without closing the socket:
// connections that arrive wait in its queue. The channel it returns is
// closed once the loop accepts no more.
func (l *Listener) Pause() <-chan struct{} {
	done := make(chan struct{})
	l.e.post(op{kind: opPause, l: l, done: done})
	return done
}

// Resume undoes Pause.
func (l *Listener) Resume() { l.e.callWait(op{kind: opResume, l: l}) }

// Err is net.ErrClosed once the listening socket is closed (by its owner
// after Stop, or behind the loop's back), nil while it serves.
func (l *Listener) Err() error { return l.rc.Control(func(uintptr) {}) }

// Stop takes the listener out of its loop for good and returns once the
// loop no longer uses its descriptor: the owner then closes it.
func (l *Listener) Stop() { l.e.callWait(op{kind: opUnlisten, l: l}) }

// callWait posts o and waits until the loop has carried it out.
func (e *engine) callWait(o op) {
	o.done = make(chan struct{})
	e.post(o)
	<-o.done
}

// listenSlot is the epoll data (Fd field) of listener id: below wakeSlot,
// so that it is told apart from the eventfd and the connections.
func listenSlot(id int32) int32 { return wakeSlot - 1 - id }

// listenerOf returns the listener of an event's slot, nil if it left.
func (e *engine) listenerOf(slot int32) *Listener {
	id := int(wakeSlot - 1 - slot)
	if id >= len(e.lns) {
		return nil
	}
	return e.lns[id]
}

// listenOp carries out a listener's op on the loop.
func (e *engine) listenOp(o *op) {
	l := o.l
	switch o.kind {
	case opListen:
		l.id = int32(len(e.lns))
		for i, x := range e.lns {
			if x == nil {
				l.id = int32(i)
				break
			}
		}
		if int(l.id) == len(e.lns) {
			e.lns = append(e.lns, nil)
		}
		e.lns[l.id] = l
		if !e.watch(l) {
			e.lns[l.id] = nil
		}
	case opPause:
		l.paused = true
		e.unwatch(l)
		if l.timer != nil {
			l.timer.Stop() // a retry already posted finds it paused
			l.timer = nil
		}
	case opResume:
		if l.paused && e.lns[l.id] == l { // not stopped
			l.paused = false
			e.watch(l)
			// Connections queued meanwhile brought their events while
			// the socket was out of the set, and a back-off's timer
			// was stopped: look now.
			e.post(op{kind: opAcceptRetry, l: l})
		}
	case opUnlisten:
		e.unwatch(l)
		if l.timer != nil {
			l.timer.Stop()
			l.timer = nil
		}
		l.paused = true       // a retry already posted finds it so
		if e.lns[l.id] == l { // else dropped already (accept)
			e.lns[l.id] = nil
		}
	case opAcceptTimer:
		if e.lns[l.id] == l && !l.paused && l.timer != nil { // else stopped meanwhile
			l.timer = nil
			e.retryAccept(l)
		}
	case opAcceptRetry:
		if e.lns[l.id] == l && !l.paused && l.timer == nil {
			e.retryAccept(l)
		}
	}
	if o.done != nil {
		close(o.done)
	}
}

// listenEvent: l's socket says connections wait.
func (e *engine) listenEvent(slot int32) {
	if l := e.listenerOf(slot); l != nil && !l.paused && l.timer == nil {
		e.accept(l)
	}
}

// retryAccept accepts what waits, and puts the socket (back) in the set
// unless that failed again (a new back-off). If the set does not take it
// (out of memory, max_user_watches), that is a failure too: a timer tries
// again, rather than a listener left out of the set for good.
func (e *engine) retryAccept(l *Listener) {
	e.accept(l)
	if l.timer == nil && e.lns[l.id] == l && !e.watch(l) {
		e.acceptFailed(l, os.NewSyscallError("epoll_ctl", l.watchErr))
	}
}

// watch puts l's socket in the loop's set, edge-triggered. The socket
// is used inside its RawConn's Control only, so that its descriptor
// number is never used once the socket is closed (it may be another
// socket's by then); a socket closed leaves the set by itself.
func (e *engine) watch(l *Listener) bool {
	if !l.in {
		l.rc.Control(l.watchFn)
	}
	return l.in
}

func (e *engine) unwatch(l *Listener) {
	if l.in {
		l.rc.Control(l.unwatchFn)
		l.in = false
	}
}

// accept takes what l's queue holds, acceptBatch at most (the rest on the
// loop's next turn), and starts each connection. A socket closed behind
// the loop's back is dropped (its owner sees it with Err).
func (e *engine) accept(l *Listener) {
	if l.rc.Control(l.acceptFn) != nil {
		l.in, l.paused = false, true
		e.lns[l.id] = nil
	}
}

func (e *engine) acceptFD(l *Listener, lfd int) {
	for i := 0; i < acceptBatch; i++ {
		fd, peer, err := accept4(lfd)
		switch err {
		case nil:
		case unix.EAGAIN:
			return
		case unix.EINTR, unix.ECONNABORTED:
			continue // as Go's accept: the next one
		default:
			e.acceptFailed(l, os.NewSyscallError("accept4", err))
			return
		}
		if l.backoff != 0 {
			if l.h.Recovered != nil {
				l.h.Recovered(l.failures)
			}
			l.backoff, l.failures = 0, 0
		}
		e.accepted(l, fd, peer)
	}
	e.post(op{kind: opAcceptRetry, l: l}) // more may wait: after the others' events
}

// acceptFailed backs off after a failed accept: the socket leaves the
// set (it stays readable, and connections that arrive would bring event
// after event) and a timer tries again.
func (e *engine) acceptFailed(l *Listener, err error) {
	if l.backoff == 0 {
		l.backoff = acceptBackoffMin
		if l.h.Failing != nil {
			l.h.Failing(err)
		}
	} else if l.backoff *= 2; l.backoff > acceptBackoffMax {
		l.backoff = acceptBackoffMax
	}
	l.failures++
	e.unwatch(l)
	l.timer = time.AfterFunc(l.backoff, func() { e.post(op{kind: opAcceptTimer, l: l}) })
}

// accepted starts a connection the loop accepted.
func (e *engine) accepted(l *Listener, fd int, peer netip.AddrPort) {
	// As Go's net package does on every TCP socket; keep-alive is
	// inherited from the listening socket.
	rawsys.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	a := l.h.Admit(peer)
	p, done := a.Proxy, a.Done
	switch {
	case a.Router != nil:
		c := &conn{csock: newLoopSock(fd), peer: peer, started: nanotime()}
		e.next().inspect(c, l.h.Ctx, a.Router, done) // hello_linux.go
	case p != nil && p.addrs == nil:
		// Not for a loop after all (Admit should have said handoff):
		// served on the goroutine path.
		tc, err := fileConn(fd, "client", true)
		if err != nil {
			leaveFailed(err, "reset")
			done(EndLocalResource)
			return
		}
		go p.StartWith(l.h.Ctx, tc, peer, nil, done)
	case p != nil:
		c := &conn{csock: newLoopSock(fd), p: p, peer: peer, started: nanotime(),
			idleTimeout: p.cfg.IdleTimeout, halfClose: p.cfg.HalfCloseTimeout}
		e.next().connect(c, l.h.Ctx, nil, done)
	case a.Handoff:
		tc, err := fileConn(fd, "client", true)
		if err != nil {
			leaveFailed(err, "reset") // closed, with a reset (fileConn)
			return
		}
		l.h.Handoff(tc, peer)
	default:
		rawsys.Close(fd)
	}
}

// next is the loop for a connection e accepted: the connections spread
// over the loops in turn, as those of an accept goroutine do (one for e
// itself is only queued); e when no other can be made.
func (e *engine) next() *engine {
	if ee := pickEngine(); ee != nil {
		return ee
	}
	return e
}

// acceptFault, when set (tests), is asked before each accept4: an error
// it returns is the accept's.
var acceptFault atomic.Pointer[func() error]

// watchFault is acceptFault for the EPOLL_CTL_ADD of a listening socket.
var watchFault atomic.Pointer[func() error]

// accept4 accepts a connection of the listening socket lfd, and returns
// its peer as Go's net package gives it (addrPortOf). It is a raw system
// call (rawsys.Accept4): nothing allocated, no other system call.
func accept4(lfd int) (int, netip.AddrPort, error) {
	if f := acceptFault.Load(); f != nil {
		if err := (*f)(); err != nil {
			return -1, netip.AddrPort{}, err
		}
	}
	var sa unix.RawSockaddrAny
	fd, errno := rawsys.Accept4(lfd, &sa, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if errno != 0 {
		return -1, netip.AddrPort{}, errno
	}
	return fd, addrPortOf(&sa), nil
}

// addrPortOf is a socket address as Go's net package gives it (an IPv4
// client of an IPv6 socket stays IPv4-mapped; an IPv6 scope is the
// interface's name).
func addrPortOf(sa *unix.RawSockaddrAny) netip.AddrPort {
	ap, zone, _ := rawsys.AddrOf(sa)
	if zone != 0 {
		ap = netip.AddrPortFrom(ap.Addr().WithZone(zoneName(zone)), ap.Port())
	}
	return ap
}

// zoneName is the interface name of an IPv6 zone index, as Go's net package
// names it (the index itself when no interface has it).
func zoneName(id uint32) string {
	zoneMu.Lock()
	defer zoneMu.Unlock()
	if z, ok := zones[id]; ok {
		return z
	}
	z := ""
	if ifi, err := net.InterfaceByIndex(int(id)); err == nil {
		z = ifi.Name
	} else {
		z = strconv.Itoa(int(id))
	}
	if zones == nil {
		zones = map[uint32]string{}
	}
	zones[id] = z
	return z
}

var (
	zoneMu sync.Mutex
	zones  map[uint32]string
)
