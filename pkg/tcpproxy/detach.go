package tcpproxy

// Moving a running connection to another process (lbctl upgrade).
//
// A detach (Conn.Detach) brings the connection to a clean point, where
// lbctl holds none of its bytes: each direction stops before its next read
// with neither buffer nor pipe (busy even), so every byte is either
// written to its destination socket or still queued in its source socket,
// and both queues travel with the sockets. A direction waiting for input
// is woken out of the poller by a read deadline in the past on its source;
// a direction in the middle of a write finishes that write first; a bulk
// transfer stops between two bursts, with its pipe empty.
//
// A stopped direction can hold up the other one's write: an echoing
// backend stops reading once its replies fill the sockets that the
// stopped direction no longer reads, and the write toward it then never
// completes. So a direction whose write would block during a detach
// nudges the other, stopped one (nudgeOther): that one runs again as
// usual (free) until the first one stops, which then wakes it with a
// read deadline in the past so that it stops at its next turn. The peers
// keep draining each other while a write waits, and both directions come
// to rest together as soon as neither has a write pending. When every
// direction still running has stopped, the connection's state (State)
// and duplicates of both sockets are handed to the caller, and the
// connection ends here as EndMoved: its sockets are closed without
// shutdown(2) and without SO_LINGER (the duplicates keep them open), and
// the accounting runs as for any end (metrics, the backend's active count,
// the done callback, the registry) but no access log line is written and
// no duration observed: the connection has not ended, and the process that
// adopts it (Proxy.Adopt) writes the line when it does, with the byte
// counts and the duration of its whole life.
//
// If the clean point is not reached before the detach's context ends (a
// peer that stopped reading while lbctl holds bytes for it), the detach
// gives up: the deadlines are cleared, the stopped directions go on, and
// the connection continues in this process untouched.
//
// The copy loops pay one atomic load (conn.detaching) per read, and one
// per splice chunk of a burst (so that a detach need not wait for a long
// burst to end), and nothing else.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/lbctl/lbctl/balancer"
)

// errMoved is what a direction's run returns once its connection was
// detached.
var errMoved = errors.New("connection detached")

// aLongTimeAgo is a read deadline in the past: it wakes a direction
// waiting for input.
var aLongTimeAgo = time.Unix(1, 0)

// State is what a connection carries from the process that detaches it to
// the one that adopts it.
type State struct {
	Listener string         `json:"listener"` // Config.Listener of its Proxy
	Pool     string         `json:"pool"`     // Config.PoolName of its Proxy
	Backend  string         `json:"backend"`  // the backend's "ip:port" (Target.Addr)
	Client   netip.AddrPort `json:"client"`   // the client as lbctl sees it (PROXY source)
	// SNI is the routed hello's server name; Routed says there was a
	// hello (the access log's sni field).
	SNI      string `json:"sni,omitempty"`
	Routed   bool   `json:"routed,omitempty"`
	Attempts int    `json:"attempts"`
	BytesIn  int64  `json:"bytes_in"`  // client to backend, so far
	BytesOut int64  `json:"bytes_out"` // backend to client, so far
	// InEOF: the client finished sending and the backend's write side is
	// shut (CloseWrite); OutEOF the other way round.
	InEOF  bool `json:"in_eof,omitempty"`
	OutEOF bool `json:"out_eof,omitempty"`
	// HalfCloseLeft is the time left on the half-close timer, when
	// HalfCloseArmed.
	HalfCloseArmed bool          `json:"half_close_armed,omitempty"`
	HalfCloseLeft  time.Duration `json:"half_close_left,omitempty"`
	Idle           time.Duration `json:"idle"` // since the last byte moved either way
	Age            time.Duration `json:"age"`  // since the connection was accepted
}

// Detached is a connection taken out of this process: its state and
// duplicates of its two sockets, which the caller owns.
type Detached struct {
	State           State
	Client, Backend *os.File
}

// Conn is a handle on a running connection, for Detach. Registry.Conns
// lists them. The zero Conn is none.
type Conn struct{ c *conn }

// Conns appends a handle on every connection of the registry to dst.
func (r *Registry) Conns(dst []Conn) []Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := r.head; c != nil; c = c.next {
		dst = append(dst, Conn{c})
	}
	return dst
}

// detachRun is one detach of a connection, guarded by conn.dmu.
type detachRun struct {
	parked  int           // directions stopped at a clean point
	ready   chan struct{} // closed once no direction runs any more
	readied bool
	release chan struct{} // closed when the detach is over: moved or given up
	moved   bool          // set before release is closed
	gone    chan struct{} // moved: closed once the connection's end ran
	// nudge[i] asks direction i (0: in, 1: out), stopped, to run again
	// (nudgeOther); stopped[i] says it is stopped, free[i] that it runs
	// again, until the other stops.
	nudge   [2]chan struct{}
	stopped [2]bool
	free    [2]bool
}

// dir returns direction i (0: in, 1: out).
func (c *conn) dir(i int) *direction {
	if i == 0 {
		return &c.in
	}
	return &c.out
}

// stopOtherLocked ends the free run of the direction other than i, if it
// has one: woken by a read deadline in the past, it stops at its next
// turn. Called with c.dmu held.
func (c *conn) stopOtherLocked(r *detachRun, i int) {
	if o := 1 - i; r.free[o] {
		r.free[o] = false
		c.dir(o).src.SetReadDeadline(aLongTimeAgo)
	}
}

// index is 0 for the client-to-backend direction, 1 for the other.
func (d *direction) index() int {
	if d == &d.c.in {
		return 0
	}
	return 1
}

// nudgeOther asks the other direction, if it is stopped for a detach, to
// run again until d stops: d's write would block, and may wait for what
// the other direction would read.
func (d *direction) nudgeOther() {
	c := d.c
	other := 1 - d.index()
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if r := c.dr; r != nil && r.stopped[other] && !r.readied {
		select {
		case r.nudge[other] <- struct{}{}:
		default: // one is pending already
		}
	}
}

// checkLocked closes r.ready once every direction has parked or exited.
func (c *conn) checkLocked(r *detachRun) {
	if !r.readied && r.parked+c.exitedLocked() == 2 {
		r.readied = true
		close(r.ready)
	}
}

// exitedLocked counts the directions whose goroutine is over (or never
// ran). Called with c.dmu held.
func (c *conn) exitedLocked() int {
	n := 0
	if c.in.exited {
		n++
	}
	if c.out.exited {
		n++
	}
	return n
}

// park stops the direction at a clean point while a detach runs, and
// reports whether the connection was moved (the direction must then
// return errMoved at once). It returns false at once when the detach is
// already over.
//
// A direction running free (nudged) does not stop: it returns false. Nudged
// while stopped (nudgeOther) before the other direction has stopped too,
// it returns false and runs free, reading as usual, until the other one
// stops.
func (d *direction) park() bool {
	c := d.c
	i := d.index()
	c.dmu.Lock()
	r := c.dr
	if r == nil || r.free[i] {
		c.dmu.Unlock()
		return false
	}
	r.parked++
	r.stopped[i] = true
	c.stopOtherLocked(r, i)
	c.checkLocked(r)
	c.dmu.Unlock()
	select {
	case <-r.release:
		return r.moved
	case <-r.nudge[i]:
	}
	c.dmu.Lock()
	if r.readied { // both stopped meanwhile: the detach decides
		c.dmu.Unlock()
		<-r.release
		return r.moved
	}
	r.parked--
	r.stopped[i], r.free[i] = false, true
	// Under dmu, so that the other direction's stop, which sets a deadline
	// in the past again, comes after this.
	d.src.SetReadDeadline(time.Time{})
	c.dmu.Unlock()
	return false
}

// woken handles a read that ended at its deadline: a detach woke the
// direction (run's next turn parks it), or gave up just after, in which
// case the expired deadline is cleared here.
func (d *direction) woken() {
	if !d.c.detaching.Load() {
		d.src.SetReadDeadline(time.Time{})
	}
}

// exit records that the direction's goroutine is over.
func (d *direction) exit() {
	c := d.c
	c.dmu.Lock()
	d.exited = true
	if r := c.dr; r != nil {
		c.stopOtherLocked(r, d.index())
		c.checkLocked(r)
	}
	c.dmu.Unlock()
}

// ErrNotDetached is Detach's error when the connection cannot be moved:
// it ended, a detach of it is already under way, or ctx ended before it
// reached a clean point (it then goes on here, untouched).
var ErrNotDetached = errors.New("connection not detached")

// Detach brings the connection to a clean point and takes it out of this
// process (see the top of this file): it returns its state and duplicates
// of both sockets, once the connection has ended here as EndMoved (its
// done callback has run). On error (ErrNotDetached, wrapped) the
// connection is untouched.
func (h Conn) Detach(ctx context.Context) (*Detached, error) {
	c := h.c
	if c.inLoop.Load() {
		// Served by an event loop (engine_linux.go): move it to the
		// goroutine path first, whose directions know how to stop at a
		// clean point. Between two events the loop holds no byte but
		// those a destination did not take, which the goroutines write
		// first.
		c.eng.promoteWait(c)
		if c.inLoop.Load() && c.reason.Load() == 0 {
			// Out of descriptors for its sockets' *net.TCPConns: it
			// stays in the loop, untouched.
			return nil, fmt.Errorf("%w: no spare descriptor to take it out of its event loop", ErrNotDetached)
		}
	}
	r := &detachRun{ready: make(chan struct{}), release: make(chan struct{}), gone: make(chan struct{}),
		nudge: [2]chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}}
	c.dmu.Lock()
	if c.dr != nil || c.reason.Load() != 0 {
		c.dmu.Unlock()
		return nil, fmt.Errorf("%w: ended or already detaching", ErrNotDetached)
	}
	c.dr = r
	c.detaching.Store(true)
	c.checkLocked(r)
	c.dmu.Unlock()
	// Wake the directions waiting for input. One that reads at this
	// moment finishes its write and parks at its next turn.
	c.client.SetReadDeadline(aLongTimeAgo)
	c.backend.SetReadDeadline(aLongTimeAgo)

	var err error
	select {
	case <-r.ready:
	case <-ctx.Done():
		err = fmt.Errorf("%w: no clean point: %w", ErrNotDetached, ctx.Err())
	}
	var d *Detached
	if err == nil {
		d, err = c.take(r)
	}
	if err != nil {
		c.resume(r)
		return nil, err
	}
	<-r.gone
	return d, nil
}

// take moves the connection once no direction runs: it duplicates both
// sockets, claims the connection's end (EndMoved) and closes its sockets
// here. It fails when the connection ended meanwhile, or both directions
// are over (it ends here at once), or a socket cannot be duplicated.
func (c *conn) take(r *detachRun) (*Detached, error) {
	c.dmu.Lock()
	eofIn, eofOut := c.in.exited, c.out.exited
	c.dmu.Unlock()
	if eofIn && eofOut || c.reason.Load() != 0 {
		return nil, fmt.Errorf("%w: ended", ErrNotDetached)
	}
	cf, err := dupSocket(c.client)
	if err != nil {
		return nil, fmt.Errorf("%w: client socket: %w", ErrNotDetached, err)
	}
	bf, err := dupSocket(c.backend)
	if err != nil {
		cf.Close()
		return nil, fmt.Errorf("%w: backend socket: %w", ErrNotDetached, err)
	}
	if !c.reason.CompareAndSwap(0, int32(EndMoved)) {
		cf.Close()
		bf.Close()
		return nil, fmt.Errorf("%w: ended", ErrNotDetached)
	}
	// From here on no other end closes the sockets (the first reason
	// wins). A direction that exited did so after a clean EOF: an error
	// would have ended the connection first.
	now := nanotime()
	st := State{Listener: c.p.cfg.Listener, Pool: c.p.cfg.PoolName, Backend: c.t.Addr, Client: c.peer, Attempts: c.attempts}
	if c.pre != nil {
		st.SNI, st.Routed = c.pre.SNI, true
	}
	st.BytesIn, st.BytesOut = c.in.bytes, c.out.bytes
	st.InEOF, st.OutEOF = eofIn, eofOut
	st.Idle = time.Duration(now - c.last.Load())
	st.Age = time.Duration(now - c.started)
	if (eofIn || eofOut) && c.halfTimer != nil {
		st.HalfCloseArmed, st.HalfCloseLeft = true, max(0, time.Duration(c.halfAt-now))
	}
	// Plain close(2): the duplicates keep the sockets open, so nothing
	// is sent to either peer.
	c.client.Close()
	c.backend.Close()
	c.dmu.Lock()
	r.moved = true // c.dr stays: no other detach starts, and finished closes r.gone
	c.dmu.Unlock()
	c.detaching.Store(false)
	close(r.release)
	return &Detached{State: st, Client: cf, Backend: bf}, nil
}

// resume ends a detach that moved nothing: the directions go on.
func (c *conn) resume(r *detachRun) {
	c.client.SetReadDeadline(time.Time{})
	c.backend.SetReadDeadline(time.Time{})
	c.dmu.Lock()
	c.dr = nil
	c.detaching.Store(false)
	c.dmu.Unlock()
	close(r.release)
}

// Adopt serves a connection another process detached: client and backend
// are its sockets (the caller gives them up), b the backend it is joined
// to and st its state. The directions start from st: a direction that had
// finished stays finished, the half-close timer resumes with the time it
// had left (bounded by this Proxy's HalfCloseTimeout), the idle clock goes
// on from the last byte moved, and the byte counts and attempts continue
// into the access line. The connection counts in the backend's active
// connections and the metrics of this process as an established one; no
// connect is made. A b that is not a backend of this Proxy's pool (the new
// configuration dropped it) serves the connection all the same, without
// metrics or registry. done is called once, when the connection ends.
func (p *Proxy) Adopt(ctx context.Context, client, backend *net.TCPConn, b *balancer.Backend, st State, done func(End)) {
	t := p.cfg.Targets[b]
	if b == nil || t == nil {
		t = &Target{Addr: st.Backend}
		if b == nil {
			b = balancer.NewBackend(st.Backend)
		}
	}
	b.Acquire()
	b.Established()
	t.Metrics.ConnOpened()
	c := newConn(p, client, backend, t)
	c.in.bytes, c.out.bytes = st.BytesIn, st.BytesOut
	now := nanotime()
	c.peer, c.attempts, c.started = st.Client, st.Attempts, now-int64(st.Age)
	if st.Routed {
		c.pre = &Prelude{SNI: st.SNI}
	}
	pre, tries := c.pre, attempts{n: st.Attempts}
	c.onEnd = func(end End) {
		t.Metrics.ConnClosed()
		b.Release()
		if end != EndMoved {
			d := time.Duration(nanotime() - c.started)
			p.cfg.Durations.Observe(d)
			p.logAccess(pre, st.Client, b.Address(), c.in.bytes, c.out.bytes, d, end, tries)
		}
		done(end)
	}
	if t.Conns != nil {
		t.Conns.add(c)
	}
	if !c.init() {
		return
	}
	c.last.Store(now - int64(st.Idle))
	if c.idleTimeout > 0 {
		// At least a millisecond: checkIdle may re-arm c.idle, which must
		// be set by then.
		c.idle = time.AfterFunc(max(time.Millisecond, c.idleTimeout-st.Idle), c.checkIdle)
	}
	c.stopCtx = context.AfterFunc(ctx, func() { c.end(EndShutdown) })
	c.in.eof, c.out.eof = st.InEOF, st.OutEOF
	for _, eof := range [2]bool{st.InEOF, st.OutEOF} {
		if eof {
			c.eofs.Add(1)
		}
	}
	if (st.InEOF || st.OutEOF) && c.halfClose > 0 {
		left := c.halfClose
		if st.HalfCloseArmed && st.HalfCloseLeft < left {
			left = st.HalfCloseLeft
		}
		c.armHalfClose(left)
	}
	if st.InEOF && st.OutEOF { // both had finished: it ends here, complete
		c.runDirections() // none to run: marks both exited
		c.finished()
		return
	}
	if e := pickEngine(); e != nil {
		e.add(c)
		return
	}
	c.runDirections()
}
