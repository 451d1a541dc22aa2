package udpproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The Linux engine moves datagrams in batches with two goroutines per
// listener, whatever the number of sessions:
//
//   - the reader takes up to batchSize client datagrams per recvmmsg(2)
//     from the listener socket and writes each into its session's backend
//     socket (one write(2) each: they are different sockets);
//   - the replier waits on an epoll set holding every backend socket, reads
//     one reply from each ready socket and sends them all to their clients
//     with one sendmmsg(2) on the listener socket. It also expires idle
//     and unreplied sessions, in a sweep every idle_timeout/8 or
//     unreplied_timeout/8, whichever is shorter (5ms to 1s).
//
// Both goroutines park in Go's poller like any other (the epoll descriptor
// is itself pollable), so a busy listener costs one wake-up per batch, not
// per datagram, and an idle session costs a descriptor and a few hundred
// bytes: no goroutine, no buffer.
//
// Descriptor safety: the replier closes backend sockets, while the reader
// may be writing to one. A session's descriptor is closed only once the
// reader holds no reference to it (sock.ref), so a number that the kernel
// hands out again is never written to by mistake.

// batchSize is the most datagrams one recvmmsg or sendmmsg moves. Each
// direction has batchSize buffers of MaxDatagram bytes, allocated once per
// listener (2 MiB each way), so no datagram is ever truncated.
const batchSize = 32

type engine struct {
	family int             // the listener socket's address family
	lrc    syscall.RawConn // the listener socket; all its syscalls go through here
	epfd   int
	ep     *os.File        // epfd in Go's poller
	eprc   syscall.RawConn // ep's raw conn
	evfd   int             // eventfd in the epoll set: wakes the replier
	stop   atomic.Bool     // set by the reader when the listener socket closed
	done   chan struct{}   // closed when the replier has returned
	nextID atomic.Uint32   // session ids (the reader's, and Adopt's)

	// Guarded by l.mu.
	byFD    []*session   // open backend sockets by descriptor
	retired []*session   // sessions the reader ended, for the replier to close
	handReq *handRequest // a Detach for the replier to carry out
	gone    bool         // the replier has ended its sessions: Adopt adds none
}

// handRequest is a Detach for the replier, which owns the sessions' reply
// counters and closes their sockets.
type handRequest struct {
	out  []Handoff
	err  error
	done chan struct{} // closed once out and err are set
}

type sock struct {
	closed  bool // closed and accounted for; replier-owned
	fd      int
	id      uint32
	ref     fdRef
	name    [unix.SizeofSockaddrInet6]byte // the client, as a sockaddr of the listener's family
	namelen uint32
	iov     [2]unix.Iovec // header and payload, for sessions with a header
}

// run serves the listener until its socket is closed.
func (l *Listener) run() {
	if err := l.initEngine(); err != nil {
		if !errors.Is(err, net.ErrClosed) { // else closed before it served
			l.log().Error("udp: listener cannot serve", zap.Error(err))
		}
		l.mu.Lock()
		l.gone = true // no epoll set to adopt sessions into
		l.mu.Unlock()
		l.setUp()
		l.drainUntilClosed()
		return
	}
	go l.replier()
	l.setUp()
	l.reader()
	l.stop.Store(true)
	l.wake()
	<-l.done
	l.ep.Close()
	unix.Close(l.evfd)
}

func (l *Listener) initEngine() error {
	rc, err := l.Conn.SyscallConn()
	if err != nil {
		return err
	}
	l.lrc = rc
	var serr error
	err = rc.Control(func(fd uintptr) {
		l.family, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("socket family: %w", err)
	}
	l.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll: %w", err)
	}
	l.evfd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(l.epfd)
		return fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(l.evfd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, l.evfd, &ev); err != nil {
		unix.Close(l.epfd)
		unix.Close(l.evfd)
		return fmt.Errorf("epoll add: %w", err)
	}
	if err := unix.SetNonblock(l.epfd, true); err != nil {
		unix.Close(l.epfd)
		unix.Close(l.evfd)
		return fmt.Errorf("epoll nonblock: %w", err)
	}
	l.ep = os.NewFile(uintptr(l.epfd), "udp-epoll")
	if l.eprc, err = l.ep.SyscallConn(); err == nil {
		// Deadlines work only on a descriptor in Go's poller.
		err = l.ep.SetReadDeadline(time.Time{})
	}
	if err != nil {
		l.ep.Close()
		unix.Close(l.evfd)
		return fmt.Errorf("epoll in the poller: %w", err)
	}
	l.done = make(chan struct{})
	return nil
}

// drainUntilClosed reads and drops datagrams until the socket is closed:
// the fate of a listener whose engine could not start.
func (l *Listener) drainUntilClosed() {
	buf := make([]byte, MaxDatagram)
	var backoff time.Duration
	for {
		_, _, err := l.Conn.ReadFromUDPAddrPort(buf)
		switch {
		case errors.Is(err, net.ErrClosed):
			return
		case err != nil:
			backoff = l.backoff(backoff, err)
		}
	}
}

// wake makes the replier look at l.retired and l.stop.
func (l *Listener) wake() {
	var one = [8]byte{1}
	unix.Write(l.evfd, one[:])
}

// batch is the buffers and headers of one recvmmsg or sendmmsg.
type batch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	bufs  []byte // len(hdrs) * MaxDatagram
	names []byte // len(hdrs) * SizeofSockaddrInet6 (reader)
	oob   []byte // len(hdrs) * oobSize (reader, with packet info)
}

func newBatch(n int, names bool, oob int) *batch {
	b := &batch{hdrs: make([]unix.Mmsghdr, n), iovs: make([]unix.Iovec, n), bufs: make([]byte, n*MaxDatagram)}
	if names {
		b.names = make([]byte, n*unix.SizeofSockaddrInet6)
	}
	if oob > 0 {
		b.oob = make([]byte, n*oob)
	}
	for i := range b.hdrs {
		b.iovs[i].Base = &b.bufs[i*MaxDatagram]
		b.iovs[i].SetLen(MaxDatagram)
		h := &b.hdrs[i].Hdr
		h.Iov = &b.iovs[i]
		h.SetIovlen(1)
	}
	return b
}

func (b *batch) buf(i int) []byte { return b.bufs[i*MaxDatagram : (i+1)*MaxDatagram] }

// resetRecv restores the lengths the kernel overwrote in the last recvmmsg.
func (b *batch) resetRecv(oob int) {
	for i := range b.hdrs {
		h := &b.hdrs[i].Hdr
		h.Name = &b.names[i*unix.SizeofSockaddrInet6]
		h.Namelen = unix.SizeofSockaddrInet6
		if oob > 0 {
			h.Control = &b.oob[i*oob]
			h.SetControllen(oob)
		}
		h.Flags = 0
	}
}

// reader is the reader goroutine: client datagrams to backend sockets.
func (l *Listener) reader() {
	oob := 0
	if l.pktinfo != 0 {
		oob = oobSize
	}
	rx := newBatch(batchSize, true, oob)
	var (
		n    int
		rerr error
	)
	held := false
	recv := func(fd uintptr) bool {
		if l.holding() {
			held = true
			return true
		}
		rx.resetRecv(oob)
		for {
			r, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&rx.hdrs[0])),
				uintptr(len(rx.hdrs)), unix.MSG_DONTWAIT, 0, 0)
			switch errno {
			case 0:
				n, rerr = int(r), nil
				return true
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false // wait until readable
			}
			n, rerr = 0, errno
			return true
		}
	}
	var backoff time.Duration
	for {
		if err := l.lrc.Read(recv); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				l.unkick() // a kick (handover.go): look at the hold
				continue
			}
			return // closed
		}
		if held {
			held = false
			if !l.park() {
				return // closed while held
			}
			continue
		}
		if rerr != nil {
			backoff = l.backoff(backoff, rerr)
			continue
		}
		backoff = 0
		now := nanotime()
		for i := range n {
			h := &rx.hdrs[i]
			from := sockaddrAddrPort(rx.names[i*unix.SizeofSockaddrInet6:])
			var dst netip.Addr
			if oob > 0 {
				dst = parseDst(rx.oob[i*oob : i*oob+int(h.Hdr.Controllen)])
			}
			l.forward(rx.buf(i)[:h.Len], from, dst, now)
		}
	}
}

// connect opens s's backend socket, connected to t, in the epoll set.
func (l *Listener) connect(s *session, t *target) error {
	ap := t.udpAddr.AddrPort()
	var (
		fam int
		sa  unix.Sockaddr
	)
	if ap.Addr().Is4() {
		fam, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		fam, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return fmt.Errorf("connect %s: %w", ap, err)
	}
	s.fd, s.id = fd, l.nextID.Add(1)
	s.namelen = clientSockaddr(l.family, s.client, &s.name)
	l.mu.Lock()
	if fd >= len(l.byFD) {
		grown := make([]*session, max(fd+1, 2*len(l.byFD)))
		copy(grown, l.byFD)
		l.byFD = grown
	}
	l.byFD[fd] = s
	l.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd), Pad: int32(s.id)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.mu.Lock()
		l.byFD[fd] = nil
		l.mu.Unlock()
		unix.Close(fd)
		return fmt.Errorf("epoll add: %w", err)
	}
	return nil
}

// write sends one datagram: data, after the session's header if it has one
// (one writev, so header and payload stay one datagram, without a copy).
func (s *session) write(data []byte) error {
	if len(s.hdr) == 0 {
		_, err := unix.Write(s.fd, data)
		return err
	}
	s.iov[0].Base = &s.hdr[0]
	s.iov[0].SetLen(len(s.hdr))
	n := 1
	if len(data) > 0 {
		s.iov[1].Base = &data[0]
		s.iov[1].SetLen(len(data))
		n = 2
	}
	_, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(s.fd), uintptr(unsafe.Pointer(&s.iov[0])), uintptr(n))
	if errno != 0 {
		return errno
	}
	return nil
}

// start is a no-op: the session is in the epoll set since connect.
func (l *Listener) start(*session) {}

// send writes one client datagram to the backend. Called by the reader.
func (s *session) send(data []byte) error {
	if !s.ref.acquire() {
		return net.ErrClosed
	}
	s.sending(len(data))
	err := s.write(data)
	for err == unix.EINTR {
		err = s.write(data)
	}
	if s.ref.release() {
		unix.Close(s.fd)
	}
	if err != nil {
		s.unsent(len(data))
		if err == unix.EAGAIN {
			return nil // the socket buffer is full: dropped, as on the wire
		}
		return err
	}
	s.sent(len(data))
	return nil
}

// retire ends s from the reader goroutine (or Registry.Kill) and hands it
// to the replier, which closes and accounts for it. It reports whether
// this call ended s.
func (l *Listener) retire(s *session, end End) bool {
	l.mu.Lock()
	ended := l.endLocked(s, end)
	l.retired = append(l.retired, s)
	l.mu.Unlock()
	l.wake()
	return ended
}

// replier is the replier goroutine: replies from backend sockets to
// clients, and idle expiry.
func (l *Listener) replier() {
	defer close(l.done)
	tx := newBatch(batchSize, false, 0)
	out := newSender(tx)
	events := make([]unix.EpollEvent, batchSize)
	ready := make([]*session, 0, batchSize)
	var ended, retired []*session
	var hand *handRequest
	stopping := false

	// One pass: the sessions with a reply ready, one reply each.
	pass := func(n int) {
		ready = ready[:0]
		l.mu.Lock()
		for _, ev := range events[:n] {
			if int(ev.Fd) == l.evfd {
				var b [8]byte
				unix.Read(l.evfd, b[:])
				retired = append(retired, l.retired...)
				clear(l.retired)
				l.retired = l.retired[:0]
				stopping = stopping || l.stop.Load()
				if l.handReq != nil {
					hand, l.handReq = l.handReq, nil
				}
				continue
			}
			if int(ev.Fd) < len(l.byFD) {
				if s := l.byFD[ev.Fd]; s != nil && s.id == uint32(ev.Pad) && !s.dead {
					ready = append(ready, s)
				}
			}
		}
		l.mu.Unlock()
		now := nanotime()
		k := 0
		for _, s := range ready {
			m, err := unix.Read(s.fd, tx.buf(k))
			switch {
			case err == unix.EAGAIN || err == unix.EINTR:
				continue // level-triggered: asked again next pass
			case err != nil:
				s.rerr = err
				ended = append(ended, s)
				continue
			}
			h := &tx.hdrs[k].Hdr
			tx.iovs[k].SetLen(m)
			h.Name, h.Namelen = &s.name[0], s.namelen
			if s.oob != nil {
				h.Control = &s.oob[0]
				h.SetControllen(len(s.oob))
			} else {
				h.Control = nil
				h.SetControllen(0)
			}
			k++
			if s.replied(m, now) {
				ended = append(ended, s)
			}
		}
		l.sendBatch(out, k)
	}

	wait := func(uintptr) bool {
		for range 64 { // then return, so the sweep gets its turn
			n, err := unix.EpollWait(l.epfd, events, 0)
			if err == unix.EINTR {
				continue
			}
			if n <= 0 {
				return false // nothing ready: park until the epoll set is
			}
			pass(n)
			l.close(ended, EndBackendError)
			ended = ended[:0]
			l.close(retired, EndShutdown)
			retired = retired[:0]
			if hand != nil {
				// After the replies read in this pass went out: the ones
				// still queued in the backend sockets go to the adopter.
				hand.out, hand.err = l.detachAll()
				close(hand.done)
				hand = nil
			}
			if stopping {
				return true
			}
		}
		return true
	}

	next := time.Now()
	var backoff time.Duration
	for !stopping {
		if now := time.Now(); !now.Before(next) {
			next = now.Add(l.sweep())
			l.ep.SetReadDeadline(next)
		}
		err := l.eprc.Read(wait)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			// Not expected (the epoll descriptor closes after this
			// loop); keep serving rather than strand the sessions.
			backoff = l.backoff(backoff, err)
			continue
		}
		backoff = 0
	}
	if hand != nil {
		hand.err = net.ErrClosed
		close(hand.done)
	}
	l.shutdown()
}

// close closes and accounts for sessions the replier found ended. A
// session not yet marked ended gets reason why.
func (l *Listener) close(ss []*session, why End) {
	if len(ss) == 0 {
		return
	}
	l.mu.Lock()
	for _, s := range ss {
		l.endLocked(s, why)
		if l.byFD[s.fd] == s {
			l.byFD[s.fd] = nil
		}
	}
	l.mu.Unlock()
	for i, s := range ss {
		ss[i] = nil
		if s.closed { // listed twice (retired by the reader, failed here too)
			continue
		}
		s.closed = true
		if s.ref.busy() {
			// The reader is writing to it and will likely close it: until
			// then, keep its replies from waking this goroutine. (The
			// descriptor is still this session's: nobody closes it before
			// s.ref.close below.)
			unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
		}
		if s.ref.close() {
			unix.Close(s.fd)
		}
		s.finish(s.end) // s.end is final once dead
	}
}

// sender sends a batch of replies on the listener socket. It is built
// once per replier, so that sending allocates nothing.
type sender struct {
	tx   *batch
	i, n int
	send func(fd uintptr) bool
}

func newSender(tx *batch) *sender {
	s := &sender{tx: tx}
	s.send = func(fd uintptr) bool {
		for s.i < s.n {
			r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&s.tx.hdrs[s.i])),
				uintptr(s.n-s.i), 0, 0, 0)
			switch errno {
			case 0:
				s.i += int(r)
			case unix.EINTR:
			case unix.EAGAIN:
				return false // the socket buffer is full: wait
			default:
				s.i++ // this client is unreachable: its reply is lost
			}
		}
		return true
	}
	return s
}

// sendBatch sends the first n messages of the batch on the listener
// socket, skipping any one the kernel refuses (an unreachable client).
func (l *Listener) sendBatch(s *sender, n int) {
	if n == 0 {
		return
	}
	s.i, s.n = 0, n
	l.lrc.Write(s.send) // fails only once the socket is closed: the replies are lost
}

// sweep ends the sessions that are idle or unreplied for too long, and
// returns when to sweep next.
func (l *Listener) sweep() time.Duration {
	every := time.Second
	if p := l.Proxy(); p != nil {
		for _, d := range []time.Duration{p.cfg.IdleTimeout, p.cfg.UnrepliedTimeout} {
			if d > 0 {
				every = min(every, max(d/8, 5*time.Millisecond))
			}
		}
	}
	now := nanotime()
	var expired []*session
	l.mu.Lock()
	for _, s := range l.table {
		if end, _ := s.expired(now); end != "" {
			l.endLocked(s, end) // deleting during range is allowed
			expired = append(expired, s)
		}
	}
	l.mu.Unlock()
	l.close(expired, EndIdle) // each keeps the end recorded above
	return every
}

// shutdown ends every session still open, once the reader has returned.
func (l *Listener) shutdown() {
	var all []*session
	l.mu.Lock()
	l.gone = true
	if r := l.handReq; r != nil {
		r.err = net.ErrClosed
		close(r.done)
		l.handReq = nil
	}
	for _, s := range l.byFD {
		if s != nil {
			all = append(all, s)
		}
	}
	l.retired = nil
	l.mu.Unlock()
	l.close(all, EndShutdown)
}

// fdRef counts the reader's use of a session's descriptor, so that the
// replier never closes it under a write in flight: whoever is last after
// close closes the descriptor.
type fdRef struct{ state atomic.Int64 } // closedBit | users

const closedBit = 1 << 62

// acquire takes a reference, unless the descriptor is closing.
func (r *fdRef) acquire() bool {
	for {
		s := r.state.Load()
		if s&closedBit != 0 {
			return false
		}
		if r.state.CompareAndSwap(s, s+1) {
			return true
		}
	}
}

// release drops a reference and reports whether the caller must close the
// descriptor (it was closed meanwhile, and this was the last use).
func (r *fdRef) release() bool { return r.state.Add(-1) == closedBit }

// busy reports whether the reader is using the descriptor now.
func (r *fdRef) busy() bool { return r.state.Load()&^closedBit != 0 }

// close marks the descriptor closing and reports whether the caller must
// close it now (nobody is using it).
func (r *fdRef) close() bool {
	for {
		s := r.state.Load()
		if s&closedBit != 0 {
			return false
		}
		if r.state.CompareAndSwap(s, s|closedBit) {
			return s == 0
		}
	}
}

// sockaddrAddrPort decodes a sockaddr_in or sockaddr_in6 written by the
// kernel. It does not allocate (but for link-local IPv6 zones).
func sockaddrAddrPort(b []byte) netip.AddrPort {
	fam := *(*uint16)(unsafe.Pointer(&b[0]))
	port := binary.BigEndian.Uint16(b[2:4])
	switch fam {
	case unix.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port)
	case unix.AF_INET6:
		a := netip.AddrFrom16([16]byte(b[8:24]))
		if zone := binary.NativeEndian.Uint32(b[24:28]); zone != 0 && a.IsLinkLocalUnicast() {
			a = a.WithZone(fmt.Sprint(zone))
		}
		return netip.AddrPortFrom(a, port)
	}
	return netip.AddrPort{}
}

// clientSockaddr encodes the client's address for a socket of family into
// b and returns its length.
func clientSockaddr(family int, ap netip.AddrPort, b *[unix.SizeofSockaddrInet6]byte) uint32 {
	*b = [unix.SizeofSockaddrInet6]byte{}
	if family == unix.AF_INET {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(b))
		sa.Family = unix.AF_INET
		binary.BigEndian.PutUint16(b[2:4], ap.Port())
		sa.Addr = ap.Addr().Unmap().As4()
		return unix.SizeofSockaddrInet4
	}
	sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(b))
	sa.Family = unix.AF_INET6
	binary.BigEndian.PutUint16(b[2:4], ap.Port())
	sa.Addr = ap.Addr().As16()
	if z := ap.Addr().Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.Scope_id = uint32(ifi.Index)
		} else {
			fmt.Sscan(z, &sa.Scope_id)
		}
	}
	return unix.SizeofSockaddrInet6
}

// detach is Detach's work once the reader has stopped: the replier takes
// the sessions out (detachAll).
func (l *Listener) detach() ([]Handoff, error) {
	req := &handRequest{done: make(chan struct{})}
	l.mu.Lock()
	if l.gone {
		l.mu.Unlock()
		return nil, net.ErrClosed
	}
	l.handReq = req
	l.mu.Unlock()
	l.wake()
	<-req.done // the replier answers, or shutdown does
	return req.out, req.err
}

// detachAll takes every open session out of the table and the epoll set
// and returns it with a duplicate of its backend socket, whose queued
// replies stay unread; the session is then accounted for as ended (moved).
// Called by the replier, once the reader has stopped (so no session opens
// and none is written to).
func (l *Listener) detachAll() ([]Handoff, error) {
	var moving []*session
	l.mu.Lock()
	for _, s := range l.table {
		l.endLocked(s, endMoved) // deleting during range is allowed
		if l.byFD[s.fd] == s {
			l.byFD[s.fd] = nil
		}
		moving = append(moving, s)
	}
	l.mu.Unlock()
	out := make([]Handoff, 0, len(moving))
	var errs []error
	for _, s := range moving {
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
		dup, err := unix.FcntlInt(uintptr(s.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			// Out of descriptors: this one ends here.
			errs = append(errs, fmt.Errorf("session %s: dup: %w", s.clientLog(), err))
			s.end = EndShutdown
		} else {
			name := fmt.Sprintf("udp-session %s→%s", s.clientLog(), s.t.udpAddr)
			out = append(out, s.handoff(os.NewFile(uintptr(dup), name)))
		}
		s.closed = true
		if s.ref.close() { // the reader is stopped: nobody holds it
			unix.Close(s.fd)
		}
		s.finish(s.end)
	}
	return out, errors.Join(errs...)
}

// join puts an adopted session's socket (a duplicate of f's) into the
// table and the epoll set: its queued replies are read at once.
func (l *Listener) join(s *session, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var (
		fd   int
		derr error
	)
	if err := rc.Control(func(u uintptr) { fd, derr = unix.FcntlInt(u, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return err
	}
	if derr != nil {
		return fmt.Errorf("dup: %w", derr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return fmt.Errorf("nonblock: %w", err)
	}
	s.fd, s.id = fd, l.nextID.Add(1)
	s.namelen = clientSockaddr(l.family, s.client, &s.name)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.gone:
		unix.Close(fd)
		return net.ErrClosed
	case l.table[s.client] != nil:
		unix.Close(fd)
		return errors.New("the client has a session here already")
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd), Pad: int32(s.id)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		return fmt.Errorf("epoll add: %w", err)
	}
	// Under mu with the epoll add, so that no sweep or close sees the
	// session before its descriptor is in the set.
	if fd >= len(l.byFD) {
		grown := make([]*session, max(fd+1, 2*len(l.byFD)))
		copy(grown, l.byFD)
		l.byFD = grown
	}
	l.byFD[fd] = s
	l.table[s.client] = s
	l.live++
	return nil
}
