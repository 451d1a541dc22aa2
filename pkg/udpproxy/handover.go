package udpproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lbctl/lbctl/balancer"
)

// Sessions move between processes (lbctl upgrade) in three steps. Both
// processes hold the same listener socket (the new one a duplicate):
//
//  1. The new process serves its Listener with Hold set: its reader does
//     not read the socket (on Linux, the loop takes the listener socket
//     out of its epoll set), its replies go out.
//  2. The old process calls Detach: its reader stops before its next read
//     (datagrams wait in the shared socket's queue) and Detach waits until
//     it has; then its loop takes every open session out of its epoll
//     set and its table, without a read or a close of the backend socket,
//     and Detach returns each as a Handoff: the client, the address it sent
//     to, the backend and a duplicate of the connected backend socket, and
//     the session's counters and times. Replies that reach a backend socket
//     meanwhile wait in that socket's queue.
//  3. The new process calls Adopt with the handoffs (their sockets passed
//     over SCM_RIGHTS): each session joins its table, its epoll set and
//     its accounting (metrics, the backend's active count, the client's
//     admission) on the backend it had, and its queued replies go out at
//     once; then Release, and its reader takes the datagrams that queued up
//     in the listener socket.
//
// Nothing is lost on the way: no process reads a socket the other has not
// stopped reading, and every queue is read by the next owner. The old
// Listener stays held, with no session, until its socket is closed (or
// Release, should the handover fail: it then serves again, but the
// sessions it detached are gone from it).

// endMoved is the end of a session that Detach passed on: it is neither
// logged nor observed here, but in the process that adopts it.
const endMoved End = "moved"

// Handoff is one session on its way to another process: what Detach
// returns and Adopt takes.
type Handoff struct {
	// Client is the client's address and port, as read from the listener
	// socket (maybe IPv4-mapped on a dual-stack socket).
	Client netip.AddrPort
	// Dst is the address the client sent to, which replies leave from, on
	// a wildcard bind with packet info; else the zero Addr.
	Dst netip.Addr
	// Backend is the backend's name (balancer.Backend.Address), and
	// BackendAddr the address its socket is connected to.
	Backend     string
	BackendAddr netip.AddrPort
	// File is a duplicate of the session's connected backend socket. Adopt
	// closes it; the caller of Detach closes it once it is passed on.
	File *os.File

	Start    time.Time // when the session opened
	Last     time.Time // its last datagram either way
	Heard    bool      // its backend has replied at least once
	Attempts int       // backends tried when it opened
	// Requests and Replies count toward Config.Responses.
	Requests, Replies int64
	// Counters for the access line.
	BytesIn, BytesOut, DatagramsIn, DatagramsOut int64
}

// readerCtl holds and releases a Listener's reader goroutine.
type readerCtl struct {
	mu     sync.Mutex
	init   bool          // held has been set, by Serve or Release
	held   atomic.Bool   // the reader must not read; set under mu, loaded before every read
	parked chan struct{} // closed once the reader has stopped for the current hold (or returned)
	parkOK bool          // parked is closed
	ready  chan struct{} // closed once Serve has set up (Adopt waits for it)
	up     bool          // ready is closed
	over   bool          // Serve's reader has returned
}

// readyChan returns the channel closed once Serve has set up the
// listener. Called with ctl.mu held.
func (c *readerCtl) readyChan() chan struct{} {
	if c.ready == nil {
		c.ready = make(chan struct{})
	}
	return c.ready
}

// startCtl sets the reader held or not as Hold says, unless Release came
// first.
func (l *Listener) startCtl() {
	c := &l.ctl
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.init {
		c.init = true
		c.held.Store(l.Hold)
		if l.Hold {
			c.parked = make(chan struct{})
		}
	}
}

// setUp wakes the Adopt calls waiting for Serve to set up.
func (l *Listener) setUp() {
	c := &l.ctl
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.up {
		c.up = true
		close(c.readyChan())
	}
}

// endCtl records that the reader has returned, waking whoever waits for
// it to stop.
func (l *Listener) endCtl() {
	l.setUp()
	c := &l.ctl
	c.mu.Lock()
	defer c.mu.Unlock()
	c.over = true
	if c.parked != nil && !c.parkOK {
		c.parkOK = true
		close(c.parked)
	}
}

// holding reports whether the reader must stop reading. The reader checks
// it before every read.
func (l *Listener) holding() bool { return l.ctl.held.Load() }

// hold makes the reader stop before its next read and returns the channel
// closed once it has.
func (l *Listener) hold() <-chan struct{} {
	c := &l.ctl
	c.mu.Lock()
	if !c.held.Load() || c.parked == nil {
		c.init = true
		c.held.Store(true)
		c.parked, c.parkOK = make(chan struct{}), false
		if c.over {
			c.parkOK = true
			close(c.parked)
		}
	}
	ch := c.parked
	c.mu.Unlock()
	l.kick()
	return ch
}

// Release makes a held reader read again: the Listener served with Hold
// once its sessions have been adopted (or the handover failed), or the old
// Listener after a handover failed. It may come before Serve.
func (l *Listener) Release() {
	c := &l.ctl
	c.mu.Lock()
	c.init = true
	c.held.Store(false)
	c.mu.Unlock()
	l.kick()
}

// stopped reports that the reader has stopped for the current hold:
// Detach goes on.
func (l *Listener) stopped() {
	c := &l.ctl
	c.mu.Lock()
	if c.parked != nil && !c.parkOK {
		c.parkOK = true
		close(c.parked)
	}
	c.mu.Unlock()
}

// waitStopped stops the reader and waits until it has (or ctx ends). It
// fails when Serve has returned.
func (l *Listener) waitStopped(ctx context.Context) error {
	parked := l.hold()
	select {
	case <-parked:
	case <-ctx.Done():
		l.Release()
		return fmt.Errorf("udp: reader did not stop: %w", ctx.Err())
	}
	c := &l.ctl
	c.mu.Lock()
	over := c.over
	c.mu.Unlock()
	if over {
		return net.ErrClosed
	}
	return nil
}

// waitUp waits until Serve has set up the listener, and fails when it has
// returned since.
func (l *Listener) waitUp() error {
	c := &l.ctl
	c.mu.Lock()
	ready := c.readyChan()
	c.mu.Unlock()
	<-ready
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.over {
		return net.ErrClosed
	}
	return nil
}

// Detach stops the reader, waits until it has stopped, and takes every
// open session out of the listener without closing its backend socket: it
// returns them, each with a duplicate of that socket, for Adopt in another
// process. The sessions are accounted for here as ended (no access line:
// the adopting process writes it). The reader stays stopped until Release
// or until the socket is closed; it is never closed by Detach. When ctx
// ends before the reader has stopped, nothing is detached.
func (l *Listener) Detach(ctx context.Context) ([]Handoff, error) {
	if err := l.waitStopped(ctx); err != nil {
		return nil, err
	}
	return l.detach()
}

// handoff describes s for Detach, with file its socket's duplicate. Called
// by the goroutine that owns s's reply counters.
func (s *session) handoff(file *os.File) Handoff {
	last := time.Now().Add(-time.Duration(nanotime() - s.last.Load()))
	return Handoff{
		Client:       s.client,
		Dst:          s.dst,
		Backend:      s.b.Address(),
		BackendAddr:  s.t.udpAddr.AddrPort(),
		File:         file,
		Start:        s.start,
		Last:         last,
		Heard:        s.heard.Load(),
		Attempts:     s.attempts,
		Requests:     s.requests.Load(),
		Replies:      s.replies,
		BytesIn:      s.bytesIn.Load(),
		BytesOut:     s.bytesOut,
		DatagramsIn:  s.dgIn.Load(),
		DatagramsOut: s.dgOut,
	}
}

// Adopt serves sessions that Detach took out of a Listener of another
// process (or of this one), pinned to the backends they had: a session
// whose backend the generation in force does not have is not adopted, nor
// one whose client already has a session here. It closes every Handoff's
// File. It waits until Serve has set up the listener; hold the listener
// (Hold) until the sessions are adopted, so that no datagram of theirs
// opens a new session first. It returns how many sessions it adopted, and
// an error naming those it did not.
func (l *Listener) Adopt(hs []Handoff) (int, error) {
	defer func() {
		for _, h := range hs {
			if h.File != nil {
				h.File.Close()
			}
		}
	}()
	if err := l.waitUp(); err != nil {
		return 0, err
	}
	p := l.Proxy()
	if p == nil {
		return 0, errors.New("udp: no configuration to adopt sessions with")
	}
	var errs []error
	n := 0
	for _, h := range hs {
		if err := l.adopt(p, h); err != nil {
			errs = append(errs, fmt.Errorf("session %s → %s: %w", h.Client, h.Backend, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// adopt serves one session of Adopt.
func (l *Listener) adopt(p *Proxy, h Handoff) error {
	if h.File == nil {
		return errors.New("no socket")
	}
	peer, err := peerAddr(h.File)
	if err != nil {
		return err
	}
	b, t := p.backendAt(h.Backend, peer)
	if b == nil {
		return fmt.Errorf("backend %s (%s) is not in pool %s", h.Backend, peer, p.cfg.PoolName)
	}
	now := nanotime()
	s := &session{l: l, p: p, b: b, t: t, client: h.Client, start: h.Start,
		opened: now - int64(time.Since(h.Start)), attempts: h.Attempts}
	l.address(s, h.Dst)
	s.last.Store(now - int64(max(time.Since(h.Last), 0)))
	s.heard.Store(h.Heard)
	s.requests.Store(h.Requests)
	s.bytesIn.Store(h.BytesIn)
	s.dgIn.Store(h.DatagramsIn)
	s.bytesOut, s.dgOut, s.replies = h.BytesOut, h.DatagramsOut, h.Replies
	if l.Admit != nil {
		// Counted against the client's limits; a session already open
		// is kept even when they would refuse it now.
		s.release = l.Admit(h.Client.Addr().Unmap(), nil)
	}
	heldFDs.Add(1) // its descriptor is open already: no refusal
	if r := t.Sessions; r != nil {
		r.add(s)
	}
	b.Acquire()
	t.Metrics.SessionOpened()
	if l.Sessions != nil {
		l.Sessions.Add(1)
	}
	if err := l.join(s, h.File); err != nil {
		s.unaccount()
		return err
	}
	return nil
}

// backendAt returns the backend of p named name whose target is addr, or
// else any whose target is addr; nil if none.
func (p *Proxy) backendAt(name string, addr netip.AddrPort) (*balancer.Backend, *target) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	var fb *balancer.Backend
	for b, t := range p.targets {
		if t.udpAddr.AddrPort() != addr {
			continue
		}
		if b.Address() == name {
			return b, t
		}
		fb = b
	}
	if fb == nil {
		return nil, nil
	}
	return fb, p.targets[fb]
}

// peerAddr returns the address a connected socket is connected to.
func peerAddr(f *os.File) (netip.AddrPort, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		sa   syscall.Sockaddr
		serr error
	)
	if err := rc.Control(func(fd uintptr) { sa, serr = syscall.Getpeername(int(fd)) }); err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("backend socket: %w", serr)
	}
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), nil
	case *syscall.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)), nil
	}
	return netip.AddrPort{}, errors.New("backend socket: not an IP socket")
}
