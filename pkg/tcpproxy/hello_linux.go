package tcpproxy

// ClientHellos read by an event loop (a Listener whose Admit gives a
// HelloRouter).
//
// A listener that routes on the TLS server name used to hand each
// connection to a starter goroutine, which waited in Go's poller for the
// hello, parsed it and chose a route, then posted the client to a loop to
// connect: a goroutine hand-off and a wake-up per connection, and a parked
// goroutine per client that has not sent its hello yet. Here the loop that
// accepted the client puts it in its set at once and reads the hello as it
// arrives, into a buffer of the connection, asking the connection's
// tlshello.Parser after each read whether the hello is complete (HAProxy's
// tcp-request inspect-delay works the same way); the Parser looks at each
// byte once, so a hello cut into thousands of one-byte records costs the
// loop no more than its size. Then the router picks the proxy and the loop
// connects as for a plain listener, the hello written first (dialed). A
// client that is slow to send its hello costs its conn and the bytes it
// sent, nothing else, until tls_inspect_timeout closes it.

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/lbctl/lbctl/pkg/rawsys"
	"github.com/lbctl/lbctl/tlshello"
	"golang.org/x/sys/unix"
)

// loopHello is a connection's state while its loop reads the hello.
type loopHello struct {
	r     HelloRouter
	ctx   context.Context
	done  func(End)
	buf   []byte // what the client sent so far
	p     tlshello.Parser
	timer *time.Timer // the inspect timeout; posts opHelloTimeout
}

// inspect hands the loop a client whose hello it is to read before it
// routes and connects it; done is called once the connection has ended,
// or was refused.
func (e *engine) inspect(c *conn, ctx context.Context, r HelloRouter, done func(End)) {
	c.eng, c.slot = e, slotJoining
	c.hello = &loopHello{r: r, ctx: ctx, done: done}
	c.inLoop.Store(true)
	c.stopCtx = context.AfterFunc(ctx, func() { c.end(EndShutdown) })
	e.post(op{kind: opInspect, c: c})
}

// startHello takes a slot for c and puts its client in the set: the
// hello, if it is there already, brings the first event.
func (e *engine) startHello(c *conn) {
	e.takeSlot(c)
	h := c.hello
	if c.reason.Load() != 0 { // shut down before the loop saw it
		e.helloEnded(c, nil)
		return
	}
	ev := unix.EpollEvent{Events: sockEvents, Fd: c.slot, Pad: int32(c.gen << 1)}
	if rawsys.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, int(c.csock.fd.Load()), &ev) != 0 {
		// The set is full (max_user_watches): not counted against the
		// client, who sent nothing wrong.
		e.helloEnded(c, nil)
		return
	}
	c.added = 1
	d := h.r.InspectTimeout()
	h.timer = time.AfterFunc(d, func() { e.post(op{kind: opHelloTimeout, c: c}) })
}

// helloEvent reads what the client sent, when the event says there is
// something, until the hello is complete or the socket has nothing more.
// As read does, a read that returns less than the loop's buffer emptied
// the socket, unless the event said the peer shut down: then it reads on
// to the EOF.
func (e *engine) helloEvent(c *conn, flags uint32) {
	if flags&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		return // writable only (the first event of a new socket): nothing to read
	}
	h := c.hello
	fd := int(c.csock.fd.Load())
	toEnd := flags&(unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) != 0
	for {
		n, errno := rawsys.Read(fd, e.buf)
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return
		default:
			e.helloEnded(c, fmt.Errorf("read ClientHello after %d bytes: %w", len(h.buf), os.NewSyscallError("read", errno)))
			return
		}
		if n == 0 {
			e.helloEnded(c, truncated(len(h.buf)))
			return
		}
		// Bytes after the hello are the client's too: they go to the
		// backend with it, in order.
		h.buf = append(h.buf, e.buf[:n]...)
		hello, _, err := h.p.Next(h.buf) // looks at the new bytes only
		switch {
		case err != nil:
			e.helloEnded(c, err)
			return
		case hello != nil:
			e.routed(c, hello)
			return
		case n < len(e.buf) && !toEnd:
			return // the rest brings a new event
		}
	}
}

func truncated(got int) error {
	if got == 0 {
		return fmt.Errorf("%w: connection closed before any byte: %w", tlshello.ErrTruncated, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("%w after %d bytes: %w", tlshello.ErrTruncated, got, io.ErrUnexpectedEOF)
}

// helloTimeout: the inspect timer fired. A connection past its hello has
// stopped it; one whose stop came too late is not in that state any more.
func (e *engine) helloTimeout(c *conn) {
	if !e.serves(c) || c.hello == nil {
		return
	}
	got := len(c.hello.buf)
	e.helloEnded(c, fmt.Errorf("%w after %d bytes: %w", tlshello.ErrTimeout, got, os.ErrDeadlineExceeded))
}

// errHelloShutdown is a hello cut short by a shutdown's drain.
var errHelloShutdown = fmt.Errorf("shut down while reading the ClientHello: %w", context.Canceled)

// routed: the hello is complete. The router picks the proxy, and the loop
// connects to its backend as for a plain listener, with the hello (and
// what followed it) to write first. A proxy no loop connects for, or a
// prelude too long for the loop's one write (maxLoopPrelude), makes the
// client a *net.TCPConn for the goroutine path (StartWith).
func (e *engine) routed(c *conn, hello *tlshello.Hello) {
	h := c.hello
	h.timer.Stop()
	p := h.r.Route(hello, c.peer)
	if p == nil {
		c.hello = nil // refused, counted by Route
		e.helloClosed(c, h)
		return
	}
	pre := &Prelude{Data: hello.Raw, SNI: hello.ServerName}
	if p.addrs == nil || len(pre.Data) > maxLoopPrelude {
		e.helloLeaves(c, p, pre)
		return
	}
	c.hello = nil
	c.p = p
	c.idleTimeout, c.halfClose = p.cfg.IdleTimeout, p.cfg.HalfCloseTimeout
	// The client stays in the set (added): dialed gives its entry the
	// connection's last generation; its events until then are dropped as
	// an older generation's.
	c.dial = &loopDial{done: h.done, pre: pre, fd: -1}
	e.dialNext(c)
}

// helloLeaves hands a routed client to the goroutine path.
func (e *engine) helloLeaves(c *conn, p *Proxy, pre *Prelude) {
	h := c.hello
	c.hello = nil
	rawsys.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, int(c.csock.fd.Load()), nil)
	c.added = 0
	e.leave(c)
	c.inLoop.Store(false)
	c.stopCtx()
	tc, err := c.csock.takeConn("client")
	if err != nil {
		leaveFailed(err, "reset") // closed with a reset (fileConn)
		h.done(EndLocalResource)
		return
	}
	go p.StartWith(h.ctx, tc, c.peer, pre, h.done)
}

// helloEnded closes a connection whose hello was not read: err says why
// (nil: not the client's doing, not counted), or a shutdown.
func (e *engine) helloEnded(c *conn, err error) {
	h := c.hello
	c.hello = nil
	if h.timer != nil {
		h.timer.Stop()
	}
	if c.reason.Load() != 0 {
		err = errHelloShutdown
	}
	if err != nil {
		h.r.Refused(err, c.peer)
	}
	e.helloClosed(c, h)
}

// helloClosed closes the client of a connection refused before any
// proxy served it, and runs its done.
func (e *engine) helloClosed(c *conn, h *loopHello) {
	if c.slot >= 0 {
		e.leave(c)
	}
	c.slot = slotClosed
	c.inLoop.Store(false)
	c.stopCtx()
	closeLoopSock(c.csock, false) // leaves the set with it
	h.done(0)                     // no End: no proxy served it
}

// takeConn makes s's socket a *net.TCPConn and leaves s closed; on
// failure (out of descriptors) the socket is closed with a reset.
func (s *loopSock) takeConn(name string) (*net.TCPConn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fd := int(s.fd.Swap(-1))
	if fd < 0 {
		return nil, net.ErrClosed
	}
	return fileConn(fd, name, true)
}
