package tcpproxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbctl/lbctl/pkg/metrics"
)

// smallBufSize is the read buffer of the copy loop. On Linux a read that
// fills it switches the direction to splicing (copy_linux.go).
const smallBufSize = 16 << 10

var bufPool = sync.Pool{New: func() any {
	b := make([]byte, smallBufSize)
	return &b
}}

// progressTick is how long a direction waits for a stalled destination
// before it tries again: a slow reader drains the socket's queue without
// the kernel saying it is writable (it wakes writers only once a third of
// the send buffer is free, megabytes on a fast path), so counters and the
// idle clock would otherwise stand still for many seconds.
const progressTick = time.Second

// loopKeepsBulk keeps bulk transfers in the event loop (engine_linux.go) instead of promoting
// them (tests: so that a loop's own handling of stalled writers can be
// driven with any amount of data).
var loopKeepsBulk atomic.Bool

// epoch anchors the monotonic clock used for idle tracking.
var epoch = time.Now()

func nanotime() int64 { return int64(time.Since(epoch)) }

// conn is one client connection joined to one backend connection.
type conn struct {
	client, backend *net.TCPConn
	in, out         direction // in: client to backend; out: backend to client
	idleTimeout     time.Duration
	halfClose       time.Duration
	last            atomic.Int64 // nanotime of the last byte moved either way
	idle            *time.Timer
	probing         bool   // idle timer only: a TCP_INFO look is under way
	seen            uint64 // idle timer only: kernel progress at the look's start
	halfTimer       *time.Timer
	reason          atomic.Int32 // an End, set once by end: the first reason wins
	running         atomic.Int32 // directions still copying
	eofs            atomic.Int32 // directions that ended with a clean EOF
	stopCtx         func() bool  // unregisters the shutdown callback
	onEnd           func(End)
	halfAt          int64 // nanotime the half-close timer fires at (set with halfTimer)
	// What a detach carries over besides the directions' state (State).
	p        *Proxy
	t        *Target
	peer     netip.AddrPort // the client as lbctl sees it
	pre      *Prelude       // nil when no hello was routed on
	attempts int            // connects tried
	started  int64          // nanotime the connection was accepted (or before the dial)
	// Detach (detach.go): detaching is true while a detach asks the
	// directions to stop at their next clean point; the rest is guarded
	// by dmu.
	detaching atomic.Bool
	dmu       sync.Mutex
	dr        *detachRun // the detach under way, nil when none
	// The backend's Registry and this connection's links in it; guarded
	// by reg.mu.
	reg        *Registry
	prev, next *conn
	// The event loop (engine_linux.go): eng serves the connection while
	// inLoop is set; the rest is owned by the loop's goroutine.
	eng    *engine
	inLoop atomic.Bool
	slot   int32  // index in eng's table, -1 when not in it
	gen    uint32 // generation of slot, in each epoll event's data
	added  uint8  // bit 0: the client socket is in the loop's set; bit 1: the backend's
	// promoteAfter is the loop's time (nanotime) before which a bulk
	// read does not try to leave the loop again: the last try found no
	// spare descriptor (promoteFailed).
	promoteAfter int64
	// A connection whose loop connected it (Proxy.StartInLoop,
	// dial_linux.go): dial is its state until the connect is made; then
	// backend stays nil and bsock is the backend socket, owned by the
	// loop, until the connection leaves the loop (promote makes it a
	// *net.TCPConn) or closes.
	dial  *loopDial
	bsock *loopSock
	// A connection a loop accepted (ListenInLoop, accept_linux.go):
	// client stays nil and csock is the client socket, owned by the loop
	// in the same way as bsock.
	csock *loopSock
	// A connection whose loop reads its TLS ClientHello before it
	// routes it (hello_linux.go): hello is that state, p is nil until
	// then.
	hello *loopHello
}

// direction is one half of a connection: bytes from src to dst.
type direction struct {
	c        *conn
	src, dst *net.TCPConn
	bytes    int64 // moved so far; owned by the direction's goroutine until it ends
	m        *metrics.TCP
	dir      metrics.Direction
	// busy is odd while the direction may hold bytes that are in no socket
	// (read, not yet all written): from just before each read attempt until
	// they are all written or the attempt found nothing. Every change adds
	// one, so a reader that sees the same even value twice knows nothing
	// was held in between (see conn.unsent).
	busy atomic.Uint32
	// exited: the direction's goroutine is over, or was never started
	// (adopted after its EOF); guarded by c.dmu.
	exited bool
	bursts int // bulk bursts (splices) so far; owned by the direction's goroutine (tests)
	// The source and destination descriptors, for an event loop
	// (engine_linux.go), which owns them.
	sfd, dfd int
	// eof: src reached its end and dst's write side was shut, before the
	// direction got a goroutine (in a loop, or in another process before
	// an upgrade): runDirections starts none for it.
	eof bool
	platformCopier
}

func newConn(p *Proxy, client, backend *net.TCPConn, t *Target) *conn {
	c := &conn{client: client, backend: backend, idleTimeout: p.cfg.IdleTimeout, halfClose: p.cfg.HalfCloseTimeout,
		p: p, t: t}
	c.in = direction{c: c, src: client, dst: backend, m: t.Metrics, dir: metrics.In}
	c.out = direction{c: c, src: backend, dst: client, m: t.Metrics, dir: metrics.Out}
	return c
}

// account counts n bytes accepted by the destination socket.
func (d *direction) account(n int) {
	d.bytes += int64(n)
	d.m.AddBytes(d.dir, n)
	d.c.last.Store(nanotime())
}

// start runs both directions: in an event loop (engine_linux.go) when
// there is one, else each on a goroutine of its own; the last one to stop
// reports the end.
func (c *conn) start(ctx context.Context) {
	if !c.init() {
		return
	}
	c.last.Store(nanotime())
	if c.idleTimeout > 0 {
		c.idle = time.AfterFunc(c.idleTimeout, c.checkIdle)
	}
	c.stopCtx = context.AfterFunc(ctx, func() { c.end(EndShutdown) })
	if e := pickEngine(); e != nil {
		e.add(c)
		return
	}
	c.runDirections()
}

// runDirections runs a goroutine for each direction whose source has not
// finished (eof), and counts the others as exited.
func (c *conn) runDirections() {
	n := int32(0)
	c.dmu.Lock()
	for _, d := range [2]*direction{&c.in, &c.out} {
		if d.eof {
			d.exited = true
		} else {
			n++
		}
	}
	c.dmu.Unlock()
	c.running.Store(n)
	if !c.in.eof {
		go c.in.copy(EndClientError, EndBackendError)
	}
	if !c.out.eof {
		go c.out.copy(EndBackendError, EndClientError)
	}
}

// init prepares both directions' platform copiers. On failure it ends the
// connection (onEnd runs) and reports false.
func (c *conn) init() bool {
	why := End(0)
	if err := c.in.initPlatform(); err != nil {
		why = EndClientError
	} else if err := c.out.initPlatform(); err != nil {
		why = EndBackendError
	}
	if why == 0 {
		return true
	}
	c.end(why)
	c.dmu.Lock()
	c.in.exited, c.out.exited = true, true
	c.dmu.Unlock()
	c.finished()
	return false
}

// copy is one direction's goroutine.
func (d *direction) copy(srcFailed, dstFailed End) {
	if err := d.run(); err != errMoved {
		d.finish(err, srcFailed, dstFailed)
	}
	d.exit()
	if d.c.running.Add(-1) == 0 {
		d.c.finished()
	}
}

// finish ends one direction. After a clean EOF the peer's write side is shut
// (half-close) and the other direction goes on, for at most
// HalfCloseTimeout. After an error the connection ends, so the other
// direction stops waiting at once.
func (d *direction) finish(err error, srcFailed, dstFailed End) {
	if err == nil {
		if d.c.eofs.Add(1) == 2 {
			return // the other direction is over too: the end follows at once
		}
		// If the peer is already gone this fails; the other direction then
		// sees the failure itself and ends the connection.
		d.dst.CloseWrite()
		if d.c.halfClose > 0 {
			d.c.armHalfClose(d.c.halfClose)
		}
		return
	}
	var we writeError
	if errors.As(err, &we) || errors.Is(err, net.ErrClosed) {
		// dst failed, or a socket was closed under the direction: by end
		// (a timeout, shutdown or the other direction's failure), which
		// recorded why first, so this changes nothing.
		d.c.end(dstFailed)
		return
	}
	d.c.end(srcFailed)
}

// armHalfClose ends the connection in d (EndHalfClose), once one side
// has finished sending.
func (c *conn) armHalfClose(d time.Duration) {
	c.halfAt = nanotime() + int64(d)
	c.halfTimer = time.AfterFunc(d, func() { c.end(EndHalfClose) })
}

// writeError is a failure of the destination: writing to it failed.
type writeError struct{ err error }

func (e writeError) Error() string { return "write: " + e.err.Error() }
func (e writeError) Unwrap() error { return e.err }

// end ends the connection because of why, unless it has ended already
// (it then reports false): the one way a connection is closed. It records why, then closes both
// sockets: with a reset when a side failed or bytes would be lost (see the
// package comment), else with FIN. The directions then stop, and the last
// one runs onEnd (finished).
//
// A connection in an event loop is closed by its loop only (so that no
// descriptor number is closed under it): end records why and asks the loop.
func (c *conn) end(why End) bool {
	if !c.reason.CompareAndSwap(0, int32(why)) {
		return false
	}
	if c.inLoop.Load() {
		c.eng.end(c)
		return true
	}
	c.closeSockets(c.resets(why))
	return true
}

// resets reports whether a connection ending for why gets a reset.
func (c *conn) resets(why End) bool {
	switch {
	case why == EndDone:
		return false
	case why.failure(), why == EndKilled, why == EndDrainTimeout, why == EndShutdown:
		return true
	}
	return c.unsent()
}

// closeSockets closes both sockets, with a reset when reset is set.
func (c *conn) closeSockets(reset bool) {
	if c.client == nil {
		closeLoopSock(c.csock, reset) // accepted by a loop
	} else {
		if reset {
			c.client.SetLinger(0)
		}
		c.client.Close()
	}
	if c.backend == nil {
		closeLoopSock(c.bsock, reset) // connected by a loop
		return
	}
	if reset {
		c.backend.SetLinger(0)
	}
	c.backend.Close()
}

// finished runs once, when both directions are over.
func (c *conn) finished() {
	if c.stopCtx != nil {
		c.stopCtx()
	}
	if c.idle != nil {
		c.idle.Stop()
	}
	if c.halfTimer != nil {
		c.halfTimer.Stop()
	}
	c.end(EndDone) // both sides finished, unless something ended it before
	if c.reg != nil {
		c.reg.remove(c)
	}
	c.onEnd(End(c.reason.Load()))
	c.dmu.Lock()
	r := c.dr
	c.dmu.Unlock()
	if r != nil && r.moved {
		close(r.gone) // Detach returns
	}
}

// unsent reports whether closing now would lose bytes: a direction holds
// some, or a socket queue has some (platform-specific, copy_*.go).
func (c *conn) unsent() bool {
	in, out := c.in.busy.Load(), c.out.busy.Load()
	if in&1 != 0 || out&1 != 0 {
		return true
	}
	if c.queued() {
		return true
	}
	// A read that started while the queues were looked at may have taken
	// their bytes: count it as holding them.
	return c.in.busy.Load() != in || c.out.busy.Load() != out
}

// checkIdle runs when the idle timer fires.
func (c *conn) checkIdle() {
	if c.reason.Load() != 0 {
		return // ended while this ran: do not re-arm
	}
	now := nanotime()
	if quiet := time.Duration(now - c.last.Load()); quiet < c.idleTimeout {
		c.probing = false
		c.idle.Reset(c.idleTimeout - quiet)
		return
	}
	// No byte went through lbctl for idleTimeout. With nothing pending
	// the connection is idle. With bytes pending, the kernel may still be
	// delivering them to a reader too slow to make its socket writable:
	// look at the sockets' own counters over one progressTick.
	if c.probing {
		c.probing = false
		if p, _ := c.kernelProgress(); p != c.seen {
			c.last.Store(now)
			c.idle.Reset(c.idleTimeout)
			return
		}
	} else if c.unsent() {
		if p, ok := c.kernelProgress(); ok {
			c.probing, c.seen = true, p
			c.idle.Reset(progressTick)
			return
		}
	}
	c.end(EndIdle)
}
