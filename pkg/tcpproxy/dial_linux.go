package tcpproxy

// Connects made by an event loop (Proxy.StartInLoop).
//
// On the goroutine path a connection passes from the accept loop to a
// goroutine that dials (Go's net package: the socket joins Go's poller,
// the goroutine parks until the connect is made and is woken, then
// getsockname and getpeername are asked), and from there to an event loop.
// Here the accept loop posts the client to a loop, and the loop connects
// the way HAProxy and nginx do: socket(2), connect(2) returning
// EINPROGRESS, the socket in the loop's own epoll set, SO_ERROR when it
// says it is writable. The connection then joins that loop where it is,
// with the backend as a bare descriptor; it becomes a *net.TCPConn only if
// the connection leaves the loop (bulk or detach: promote).
//
// Retries, the connect timeout, the PROXY header, metrics, passive health
// and the access log are those of Proxy.dial.

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
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/rawsys"
	"golang.org/x/sys/unix"
)

// loopDial is a connection's state while its loop connects it.
type loopDial struct {
	done  func(End)
	pre   *Prelude // the bytes the listener read (a ClientHello), written first; nil = none
	tried balancer.Tried
	att   attempts
	b     *balancer.Backend // acquired, being connected to
	t     *Target
	fd    int // the socket being connected, -1 between attempts
	since time.Time
	timer *time.Timer // the connect timeout; posts opDialTimeout
}

// loopSock is a backend socket a loop connected, seen by the rest of the
// connection's code (queued, kernelProgress, the goroutine path) as a
// syscall.RawConn. While the loop owns it, it is the bare descriptor
// (Control only); once promote made it a *net.TCPConn, every call goes to
// that conn's RawConn. The directions hold it from the start, so no field
// they share with timers changes when the connection leaves the loop.
type loopSock struct {
	// mu is held by Control while f uses the descriptor, and by its
	// close and its hand-over to a *net.TCPConn: a timer's look at the
	// socket (conn.unsent) never uses a descriptor number after it was
	// closed, when it may be another socket's.
	mu sync.Mutex
	fd atomic.Int32                    // -1 once closed or handed to nc
	rc atomic.Pointer[syscall.RawConn] // nc's, once made
}

// newLoopSock is the loop's socket fd.
func newLoopSock(fd int) *loopSock {
	s := &loopSock{}
	s.fd.Store(int32(fd))
	return s
}

var errNotPolled = errors.New("tcpproxy: socket not in Go's poller")

func (s *loopSock) Control(f func(fd uintptr)) error {
	if rc := s.rc.Load(); rc != nil {
		return (*rc).Control(f)
	}
	s.mu.Lock()
	if rc := s.rc.Load(); rc != nil { // made meanwhile
		s.mu.Unlock()
		return (*rc).Control(f)
	}
	fd := s.fd.Load()
	if fd < 0 {
		s.mu.Unlock()
		return net.ErrClosed
	}
	f(uintptr(fd))
	s.mu.Unlock()
	return nil
}

func (s *loopSock) Read(f func(fd uintptr) bool) error {
	if rc := s.rc.Load(); rc != nil {
		return (*rc).Read(f)
	}
	return errNotPolled
}

func (s *loopSock) Write(f func(fd uintptr) bool) error {
	if rc := s.rc.Load(); rc != nil {
		return (*rc).Write(f)
	}
	return errNotPolled
}

// pickDialEngine is pickEngine for StartInLoop: nil also when
// LBCTL_TCP_DIAL=goroutines asks for connects on the goroutine path.
func pickDialEngine() *engine {
	setupEngines()
	if engines.goDial {
		return nil
	}
	return pickEngine()
}

// loopsConnect reports whether event loops connect to backends (not
// turned off by LBCTL_TCP_ENGINE or LBCTL_TCP_DIAL).
func loopsConnect() bool {
	setupEngines()
	return !engines.off && !engines.goDial
}

// localAddr is the client socket's local address (a PROXY header's
// destination).
func (c *conn) localAddr() netip.AddrPort {
	if c.client != nil {
		return localAddr(c.client)
	}
	var ap netip.AddrPort
	c.csock.Control(func(fd uintptr) {
		var sa unix.RawSockaddrAny
		if rawsys.Getsockname(int(fd), &sa) == 0 {
			ap = addrPortOf(&sa)
		}
	})
	return ap
}

// connect hands the loop a client whose backend it is to connect to, and
// the first bytes the listener read from it (pre, nil = none); done is
// called once the connection has ended, or reached no backend.
func (e *engine) connect(c *conn, ctx context.Context, pre *Prelude, done func(End)) {
	c.eng, c.slot = e, slotJoining
	c.dial = &loopDial{done: done, pre: pre, fd: -1}
	c.inLoop.Store(true)
	// An end from here on (this callback, at the end of a shutdown
	// drain) is posted to the loop, which aborts the connect.
	c.stopCtx = context.AfterFunc(ctx, func() { c.end(EndShutdown) })
	e.post(op{kind: opConnect, c: c})
}

// startDial takes a slot for c and makes its first connect.
func (e *engine) startDial(c *conn) {
	e.takeSlot(c)
	if c.reason.Load() != 0 { // shut down before the loop saw it
		e.dialEnded(c, End(c.reason.Load()))
		return
	}
	e.dialNext(c)
}

// dialNext connects to the next backend the pool picks, until one connect
// is under way; it ends the connection when none is left.
func (e *engine) dialNext(c *conn) {
	ld, p := c.dial, c.p
	for ld.att.n <= p.cfg.Retries {
		if c.reason.Load() != 0 {
			break // shut down meanwhile: its end is on its way (abortDial)
		}
		b := p.cfg.Pool.Pick(c.peer, &ld.tried)
		if b == nil {
			break
		}
		b.Acquire()
		ld.tried.Add(b)
		ld.att.n++
		t := p.cfg.Targets[b]
		ld.b, ld.t, ld.since = b, t, time.Now()
		// A new generation for each attempt: an event of the last
		// attempt's socket, still in this batch, is not this one's.
		e.gens[c.slot] = (e.gens[c.slot] + 1) & genMask
		c.gen = e.gens[c.slot]
		if err := e.connectTo(c, p.addrs[t]); err != nil {
			p.connectFailed(b, t, dialError(p.addrs[t], err), false, &ld.att)
			continue
		}
		if d := p.cfg.ConnectTimeout; d > 0 {
			if ld.timer == nil {
				ld.timer = time.AfterFunc(d, func() { e.post(op{kind: opDialTimeout, c: c}) })
			} else {
				ld.timer.Reset(d)
			}
		}
		return
	}
	end := EndBackendUnavailable
	if ld.tried.Len() == 0 {
		end = EndNoBackend
	}
	e.dialEnded(c, end) // or the shutdown's reason, set first
}

// connectTo starts a non-blocking connect to ap and puts the socket in the
// loop's set; its first event says how the connect went (dialEvent).
func (e *engine) connectTo(c *conn, ap netip.AddrPort) error {
	family := unix.AF_INET6
	if ap.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, errno := rawsys.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if errno != 0 {
		return os.NewSyscallError("socket", errno)
	}
	// As Go's net package does on every TCP socket.
	rawsys.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if errno := rawsys.Connect(fd, ap); errno != 0 && errno != unix.EINPROGRESS {
		rawsys.Close(fd)
		return os.NewSyscallError("connect", errno)
	}
	ev := unix.EpollEvent{Events: sockEvents, Fd: c.slot, Pad: int32(c.gen<<1) | 1}
	if errno := rawsys.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, fd, &ev); errno != 0 {
		rawsys.Close(fd)
		return os.NewSyscallError("epoll_ctl", errno)
	}
	c.dial.fd = fd
	return nil
}

// dialError is err as Go's net.Dial reports it ("dial tcp ADDR: connect:
// connection refused"; "i/o timeout" for the connect timeout), which is
// what the logs and passive health checks show.
func dialError(ap netip.AddrPort, err error) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: err}
}

// dialEvent handles an event of the socket being connected: writable, or
// an error, means the connect is over; SO_ERROR says how.
func (e *engine) dialEvent(c *conn, flags uint32) {
	if flags&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		return
	}
	ld := c.dial
	soerr, errno := rawsys.GetsockoptInt(ld.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	err := rawsys.Errno(errno)
	if err == nil && soerr != 0 {
		err = syscall.Errno(soerr)
	}
	if err == nil && flags&(unix.EPOLLERR|unix.EPOLLHUP) != 0 && flags&unix.EPOLLOUT == 0 {
		err = syscall.ECONNREFUSED // hung up without saying why
	}
	if err != nil {
		err = dialError(c.p.addrs[ld.t], os.NewSyscallError("connect", err))
	} else if err = e.dialed(c); err == nil {
		if e.serves(c) {
			e.serveSide(c, 1, flags) // what the backend sent already
		}
		return
	}
	e.attemptFailed(c, err)
	e.dialNext(c)
}

// attemptFailed closes the socket of a failed connect and records it.
func (e *engine) attemptFailed(c *conn, err error) {
	ld := c.dial
	if ld.fd >= 0 {
		rawsys.Close(ld.fd) // leaves the set with it
		ld.fd = -1
	}
	// A failure after the end of a shutdown drain was posted is not held
	// against the backend, as on the goroutine path.
	c.p.connectFailed(ld.b, ld.t, err, c.reason.Load() != 0, &ld.att)
	ld.b, ld.t = nil, nil
}

// dialTimeout: a connect timer fired. The attempt it was armed for may be
// over (the timer was then re-armed, or stopped too late): only an
// attempt as old as the timeout fails.
func (e *engine) dialTimeout(c *conn) {
	ld := c.dial
	if !e.serves(c) || ld == nil || ld.fd < 0 || time.Since(ld.since) < c.p.cfg.ConnectTimeout {
		return
	}
	e.attemptFailed(c, dialError(c.p.addrs[ld.t], os.ErrDeadlineExceeded))
	e.dialNext(c)
}

// dialed: the connect to ld.b succeeded. The PROXY header and the
// prelude go first, then the connection joins the loop as any other; an
// error fails the attempt, and the next backend gets the same bytes.
func (e *engine) dialed(c *conn) error {
	ld, p := c.dial, c.p
	if p.cfg.HeaderFunc != nil || ld.pre != nil {
		// A header and a hello are a few KiB at most (maxLoopPrelude)
		// into a socket that has sent nothing yet: written whole, or
		// the attempt fails.
		hdr := p.first(c.localAddr, c.peer, ld.pre)
		n, errno := rawsys.Write(ld.fd, hdr)
		if errno != 0 {
			return fmt.Errorf("write PROXY header or first bytes: %w", errno)
		}
		if n < len(hdr) {
			return errors.New("PROXY header or first bytes written in part")
		}
	}
	var crc syscall.RawConn = c.csock // accepted by a loop (accept_linux.go)
	if c.client != nil {
		rc, err := c.client.SyscallConn()
		if err != nil {
			return err
		}
		crc = rc
	}
	if ld.timer != nil {
		ld.timer.Stop()
	}
	ld.t.Metrics.ConnectSucceeded(time.Since(ld.since))
	ld.b.Established()
	s := newLoopSock(ld.fd)
	c.bsock = s
	t := ld.t
	c.t = t
	c.in = direction{c: c, src: c.client, m: t.Metrics, dir: metrics.In}
	c.out = direction{c: c, dst: c.client, m: t.Metrics, dir: metrics.Out}
	c.in.srcRaw, c.in.dstRaw = crc, s
	c.out.srcRaw, c.out.dstRaw = s, crc
	c.in.sfd, c.in.dfd = sockFD(crc), ld.fd
	c.out.sfd, c.out.dfd = ld.fd, c.in.sfd
	// A client whose hello the loop read is in the set already
	// (hello_linux.go): its entry takes this attempt's generation.
	ctl := unix.EPOLL_CTL_ADD
	if c.added&1 != 0 {
		ctl = unix.EPOLL_CTL_MOD
	}
	c.added = 2
	c.dial = nil
	if ld.pre != nil {
		c.in.account(len(ld.pre.Data)) // written above
	}
	c.p.established(c, ld.b, t, c.peer, ld.pre, ld.att, c.started, ld.done)
	c.last.Store(nanotime())
	if c.idleTimeout > 0 {
		c.idle = time.AfterFunc(c.idleTimeout, c.checkIdle)
	}
	ev := unix.EpollEvent{Events: sockEvents, Fd: c.slot, Pad: int32(c.gen << 1)}
	if rawsys.EpollCtl(e.epfd, ctl, c.in.sfd, &ev) != 0 {
		// The set is full (max_user_watches): serve it the other way.
		if ctl == unix.EPOLL_CTL_MOD {
			rawsys.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, c.in.sfd, nil)
		}
		e.promote(c, nil)
		return nil
	}
	c.added |= 1
	return nil
}

// dialEnded ends a connection that reached no backend (end says why, or
// the reason already set: a shutdown).
func (e *engine) dialEnded(c *conn, end End) {
	ld := c.dial
	if ld.timer != nil {
		ld.timer.Stop()
	}
	if !c.reason.CompareAndSwap(0, int32(end)) {
		end = End(c.reason.Load())
	}
	if c.slot >= 0 {
		e.leave(c)
	}
	c.slot = slotClosed
	c.inLoop.Store(false)
	c.stopCtx()
	closeLoopSock(c.csock, false)
	c.p.refused(c.client, c.peer, ld.pre, c.started, end, ld.att, ld.done)
}

// abortDial ends a connection whose connect is under way (a shutdown):
// the attempt is dropped without counting against the backend.
func (e *engine) abortDial(c *conn) {
	ld := c.dial
	if ld.fd >= 0 {
		// As Go's dialer reports a dial whose context was canceled.
		e.attemptFailed(c, dialError(c.p.addrs[ld.t], errCanceled))
	}
	e.dialEnded(c, End(c.reason.Load()))
}

// errCanceled is net's error for a dial cut short by its context.
var errCanceled = errors.New("operation was canceled")

// backendConn makes a duplicate of the loop's backend socket a
// *net.TCPConn, for the goroutine path (promote). The loop's descriptor
// is untouched: on failure (out of descriptors) the connection stays in
// the loop; on success promote takes the socket out of the loop's set,
// then hands it over (useConns), which closes the loop's descriptor.
func (c *conn) backendConn() (*net.TCPConn, error) { return c.bsock.dupConn("backend") }

// clientConn is backendConn for a client socket the loop accepted
// (accept_linux.go).
func (c *conn) clientConn() (*net.TCPConn, error) { return c.csock.dupConn("client") }

// useConns hands the loop's sockets over to ctc and btc (either nil when
// that side already is a *net.TCPConn), made by clientConn and
// backendConn, once they are out of the loop's set.
func (c *conn) useConns(ctc, btc *net.TCPConn) {
	if ctc != nil {
		c.csock.handOver(ctc)
		c.client = ctc
		c.in.src, c.out.dst = ctc, ctc
	}
	if btc != nil {
		c.bsock.handOver(btc)
		c.backend = btc
		c.in.dst, c.out.src = btc, btc
	}
}

// dupConn makes a duplicate of s's socket a *net.TCPConn; s is unchanged.
// It needs two free descriptors for a moment (the duplicate, and
// net.FileConn's own); out of them it fails with s intact.
func (s *loopSock) dupConn(name string) (*net.TCPConn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fd := int(s.fd.Load())
	if fd < 0 {
		return nil, net.ErrClosed
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	// No reset on failure: the duplicate shares the socket with fd.
	return fileConn(dup, name, false)
}

// convertFault, when set (tests), is asked by each fileConn (a loop's
// socket made a *net.TCPConn): an error fails it as a process out of
// descriptors would.
var convertFault atomic.Pointer[func() error]

// handOver makes tc, a duplicate from dupConn, s's socket: the RawConn
// that s passes calls to from then on. It closes s's descriptor.
func (s *loopSock) handOver(tc *net.TCPConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rc, err := tc.SyscallConn(); err == nil {
		s.rc.Store(&rc)
	}
	if fd := int(s.fd.Swap(-1)); fd >= 0 {
		unix.Close(fd)
	}
}

// fileConn makes the socket fd a *net.TCPConn in Go's poller (a duplicate)
// and closes fd. Its keep-alive settings are kept: net.FileConn turns
// Go's own on (lbctl keeps it off toward backends, and a client socket has
// its listener's). On failure (out of descriptors) fd is closed, with a
// reset when reset is set, so that the peer cannot take a cut stream for a
// complete one.
func fileConn(fd int, name string, reset bool) (*net.TCPConn, error) {
	ka := keepAliveOf(fd)
	f := os.NewFile(uintptr(fd), name)
	var nc net.Conn
	var err error
	if fault := convertFault.Load(); fault != nil {
		err = (*fault)()
	}
	if err == nil {
		nc, err = net.FileConn(f)
	}
	if err != nil {
		if reset {
			rawsys.SetLingerReset(fd)
		}
		f.Close()
		return nil, err
	}
	f.Close()
	tc := nc.(*net.TCPConn)
	if rc, err := tc.SyscallConn(); err == nil {
		rc.Control(func(s uintptr) { ka.set(int(s)) })
	}
	return tc, nil
}

// keepAlive is a socket's keep-alive settings.
type keepAlive struct{ on, idle, intvl, cnt int }

var keepAliveOpts = [...]struct{ level, opt int }{
	{unix.SOL_SOCKET, unix.SO_KEEPALIVE},
	{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
	{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL},
	{unix.IPPROTO_TCP, unix.TCP_KEEPCNT},
}

func keepAliveOf(fd int) keepAlive {
	var v [4]int
	for i, o := range keepAliveOpts {
		v[i], _ = unix.GetsockoptInt(fd, o.level, o.opt)
	}
	return keepAlive{v[0], v[1], v[2], v[3]}
}

func (k keepAlive) set(fd int) {
	v := [4]int{k.on, k.idle, k.intvl, k.cnt}
	for i, o := range keepAliveOpts {
		if v[i] > 0 || i == 0 {
			unix.SetsockoptInt(fd, o.level, o.opt, v[i])
		}
	}
}

// closeLoopSock closes a socket the loop accepted or connected, while
// it is a bare descriptor (conn.closeSockets).
func closeLoopSock(s *loopSock, reset bool) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fd := int(s.fd.Swap(-1))
	if fd < 0 {
		return
	}
	if reset {
		rawsys.SetLingerReset(fd)
	}
	rawsys.Close(fd)
}
