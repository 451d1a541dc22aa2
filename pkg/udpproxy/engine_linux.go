package udpproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/lbctl/lbctl/pkg/rawsys"
	"github.com/lbctl/lbctl/pkg/sparepoll"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The Linux engine moves datagrams in batches with one goroutine per
// listener, the loop, whatever the number of sessions. The loop waits on
// one epoll set that holds the listener socket, every session's connected
// backend socket and an eventfd, and each time it wakes it serves whatever
// is ready:
//
//   - replies: one from each ready backend socket, all sent to their
//     clients with one sendmmsg(2) on the listener socket;
//   - client datagrams: up to batchSize per recvmmsg(2) from the listener
//     socket, each written into its session's backend socket (one write(2)
//     each: they are different sockets);
//   - the eventfd: sessions ended by another goroutine (Registry.Kill, a
//     drain timeout), a hold or release of the reader (handover.go), a
//     Detach.
//
// It asks the set again (epoll_wait without a timeout) until nothing is
// ready, then parks in Go's poller (the epoll descriptor is itself
// pollable). So a busy listener costs one goroutine wake-up per batch, for
// both directions: a request and the reply that comes back while the loop
// is still at work are served by the same wake-up, with no hand-off between
// goroutines or threads. An idle session costs a descriptor and a few
// hundred bytes: no goroutine, no buffer. (An earlier engine had a reader
// goroutine parked on the listener socket and a replier parked on the
// backend sockets: two wake-ups per round trip, see docs/benchmarks.md,
// Issue 14.)
//
// The loop also expires idle and unreplied sessions, in a sweep every
// idle_timeout/8 or unreplied_timeout/8, whichever is shorter (5ms to 1s).
//
// Closing. The caller closes Conn to end the listener, and Go's poller
// tells only a goroutine parked on Conn itself. So while the listener has
// no session the loop parks on Conn (waitConn): an idle listener has no
// timer, and sees the close at once. With sessions it parks on its epoll
// set, learns of the close from its next use of the socket (every read and
// send goes through Conn's RawConn, which fails once it is closed), and
// checks at least every closeCheck while it waits.
//
// Descriptor safety: a session's descriptor is closed by the loop, and by
// no other goroutine; sock.ref still guards it against a write in flight.

// batchSize is the most datagrams one recvmmsg or sendmmsg moves. Each
// direction has batchSize buffers of MaxDatagram bytes, allocated once per
// listener (2 MiB each way), so no datagram is ever truncated.
const batchSize = 32

// closeCheck is how long the loop may wait before it checks whether Conn
// has been closed: the longest Serve takes to notice a close.
const closeCheck = 100 * time.Millisecond

type engine struct {
	family int             // the listener socket's address family
	lrc    syscall.RawConn // the listener socket; all its syscalls go through here
	lfd    int             // the listener socket's descriptor: its key in the epoll set
	epfd   int
	ep     *os.File        // epfd in Go's poller
	eprc   syscall.RawConn // ep's raw conn
	nextID atomic.Uint32   // session ids (the loop's, and Adopt's); never 0

	// Owned by the loop.
	sp        sparepoll.Loop // keeps a thread in Go's poller while the loop is busy
	listening bool           // the listener socket is in the epoll set: not held
	closed    bool           // Conn is closed: the loop ends

	onConn atomic.Bool // the loop waits on Conn (no session): wake kicks Conn too

	evmu sync.Mutex
	evfd int  // eventfd in the epoll set: wakes the loop; guarded by evmu (the loop reads it freely)
	evOK bool // evfd is open; guarded by evmu

	// Guarded by l.mu.
	byFD    []*session   // open backend sockets by descriptor
	retired []*session   // sessions ended elsewhere, for the loop to close
	handReq *handRequest // a Detach for the loop to carry out
	gone    bool         // the loop has ended its sessions: Adopt adds none
}

// handRequest is a Detach for the loop, which owns the sessions' reply
// counters and closes their sockets.
type handRequest struct {
	out  []Handoff
	err  error
	done chan struct{} // closed once out and err are set
}

type sock struct {
	closed  bool // closed and accounted for; loop-owned
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
	l.setUp()
	l.loop()
	l.sp.Close() // before the descriptors it parked on are closed
	l.ep.Close()
	l.evmu.Lock()
	l.evOK = false
	unix.Close(l.evfd)
	l.evmu.Unlock()
}

func (l *Listener) initEngine() error {
	rc, err := l.Conn.SyscallConn()
	if err != nil {
		return err
	}
	l.lrc = rc
	var serr error
	err = rc.Control(func(fd uintptr) {
		l.lfd = int(fd)
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
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(l.epfd)
		return fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(l.epfd)
		unix.Close(evfd)
		return fmt.Errorf("epoll add: %w", err)
	}
	if err := unix.SetNonblock(l.epfd, true); err != nil {
		unix.Close(l.epfd)
		unix.Close(evfd)
		return fmt.Errorf("epoll nonblock: %w", err)
	}
	l.ep = os.NewFile(uintptr(l.epfd), "udp-epoll")
	if l.eprc, err = l.ep.SyscallConn(); err == nil {
		// Deadlines work only on a descriptor in Go's poller.
		err = l.ep.SetReadDeadline(time.Time{})
	}
	if err != nil {
		l.ep.Close()
		unix.Close(evfd)
		return fmt.Errorf("epoll in the poller: %w", err)
	}
	l.evmu.Lock()
	l.evfd, l.evOK = evfd, true
	l.evmu.Unlock()
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

// wake makes the loop look at l.retired, l.handReq, the hold and new
// sessions (join). It does nothing before the loop has started or after
// it has ended.
func (l *Listener) wake() {
	var one = [8]byte{1}
	l.evmu.Lock()
	if l.evOK {
		unix.Write(l.evfd, one[:])
	}
	l.evmu.Unlock()
	// After the eventfd: a loop that set onConn after this load sees the
	// eventfd in waitConn's last look at the epoll set.
	if l.onConn.Load() {
		l.Conn.SetReadDeadline(time.Unix(1, 0))
	}
}

// idle reports whether the listener has no session, open or ending, and
// nothing asked of the loop.
func (l *Listener) idle() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.live == 0 && len(l.retired) == 0 && l.handReq == nil
}

// waitConn parks the loop on Conn itself while the listener has no
// session: then only a client datagram, a wake or the close can give it
// work, and Go's poller reports all three. probe is scratch space. It
// returns when there may be work, having set l.closed if Conn is closed.
func (l *Listener) waitConn(probe []unix.EpollEvent, first *bool, f func(uintptr) bool) {
	l.onConn.Store(true)
	defer l.onConn.Store(false)
	// A wake before the store above is in the epoll set (every descriptor
	// in it is level-triggered, so this look takes nothing away).
	if n, _ := rawsys.EpollPoll(l.epfd, probe); n > 0 {
		return
	}
	*first = true
	err := l.lrc.Read(f)
	switch {
	case err == nil:
	case errors.Is(err, os.ErrDeadlineExceeded):
		l.Conn.SetReadDeadline(time.Time{}) // a wake's kick: it is in the epoll set
	default:
		l.closed = true
	}
}

// kick makes the loop look at the hold (handover.go).
func (l *Listener) kick() { l.wake() }

// newID returns a session id: never 0, the listener socket's.
func (l *Listener) newID() uint32 {
	for {
		if id := l.nextID.Add(1); id != 0 {
			return id
		}
	}
}

// alive reports whether Conn is still open.
func (l *Listener) alive() bool { return l.lrc.Control(func(uintptr) {}) == nil }

// listen puts the listener socket into the epoll set (on) or takes it out,
// through Conn's RawConn so that the descriptor is Conn's. A closed Conn
// sets l.closed.
func (l *Listener) listen(on bool) {
	if l.listening == on {
		return
	}
	var cerr error
	err := l.lrc.Control(func(fd uintptr) {
		if on {
			ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)} // Pad 0: the listener
			cerr = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		} else {
			unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
		}
	})
	switch {
	case err != nil:
		l.closed = true
	case cerr != nil:
		// Not expected (the set and the socket are valid); the next
		// look at the hold tries again.
		l.log().Error("udp: listener socket not in the epoll set: client datagrams wait", zap.Error(cerr))
	default:
		l.listening = on
	}
}

// control applies the hold (handover.go): a held loop takes the listener
// socket out of its epoll set, so that it reads no client datagram, and
// reports that it has stopped; a released one puts it back.
func (l *Listener) control() {
	if l.holding() {
		l.listen(false)
		if !l.listening {
			l.stopped()
		}
		return
	}
	l.listen(true)
}

// batch is the buffers and headers of one recvmmsg or sendmmsg.
type batch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	bufs  []byte // len(hdrs) * MaxDatagram
	names []byte // len(hdrs) * SizeofSockaddrInet6 (reading)
	oob   []byte // len(hdrs) * oobSize (reading, with packet info)
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

// loop is the listener's goroutine: client datagrams to backend sockets,
// replies to clients, expiry, hold and Detach; it returns once Conn is
// closed, having ended every session.
func (l *Listener) loop() {
	oob := 0
	if l.pktinfo != 0 {
		oob = oobSize
	}
	rx := newBatch(batchSize, true, oob)
	tx := newBatch(batchSize, false, 0)
	out := newSender(tx)
	events := make([]unix.EpollEvent, batchSize)
	ready := make([]*session, 0, batchSize)
	var ended, retired []*session
	var hand *handRequest

	var (
		got     int // datagrams of the last recvmmsg
		rerr    error
		backoff time.Duration
		passAt  int64 // nanotime of the last pass, read once for its events
	)
	recv := func(fd uintptr) {
		rx.resetRecv(oob)
		for {
			r, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&rx.hdrs[0])),
				uintptr(len(rx.hdrs)), unix.MSG_DONTWAIT, 0, 0)
			switch errno {
			case 0:
				got, rerr = int(r), nil
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				got, rerr = 0, nil // taken by another process sharing the socket
			default:
				got, rerr = 0, errno
			}
			return
		}
	}

	// One pass over what epoll_wait returned: replies first (one from each
	// ready session), then client datagrams.
	pass := func(n int) {
		ready = ready[:0]
		listener, kicked := false, false
		l.mu.Lock()
		for _, ev := range events[:n] {
			switch {
			case int(ev.Fd) == l.evfd:
				var b [8]byte
				rawsys.Read(l.evfd, b[:])
				retired = append(retired, l.retired...)
				clear(l.retired)
				l.retired = l.retired[:0]
				if l.handReq != nil {
					hand, l.handReq = l.handReq, nil
				}
				kicked = true
			case int(ev.Fd) == l.lfd && ev.Pad == 0:
				listener = true
			case int(ev.Fd) < len(l.byFD):
				if s := l.byFD[ev.Fd]; s != nil && s.id == uint32(ev.Pad) && !s.dead {
					ready = append(ready, s)
				}
			}
		}
		l.mu.Unlock()
		if kicked {
			l.control()
		}
		passAt = nanotime()
		now := passAt
		k := 0
		for _, s := range ready {
			m, err := rawsys.Read(s.fd, tx.buf(k))
			switch {
			case err == unix.EAGAIN || err == unix.EINTR:
				continue // level-triggered: asked again next pass
			case err != 0:
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
		if !l.sendBatch(out, k) {
			l.closed = true
			return
		}
		// The hold is looked at before every read, as it may have come
		// after this pass's events.
		if !listener || !l.listening || l.holding() {
			return
		}
		if err := l.lrc.Control(recv); err != nil {
			l.closed = true
			return
		}
		if rerr != nil {
			backoff = l.backoff(backoff, rerr)
			return
		}
		backoff = 0
		for i := range got {
			h := &rx.hdrs[i]
			from := sockaddrAddrPort(rx.names[i*unix.SizeofSockaddrInet6:])
			var dst netip.Addr
			if oob > 0 {
				dst = parseDst(rx.oob[i*oob : i*oob+int(h.Hdr.Controllen)])
			}
			l.forward(rx.buf(i)[:h.Len], from, dst, now)
		}
	}

	var idle, first bool
	// For waitConn: at first, true only if the epoll set (which holds the
	// listener socket, level-triggered) has something ready, so that
	// Read waits for Conn; true once woken. The first call must look:
	// Read drops a readiness Go's poller saw before it (pollReset), so a
	// datagram that came between waitConn's probe and Read would
	// otherwise wait for the next one (seen under make test-stress).
	onConn := func(uintptr) bool {
		if first {
			first = false
			n, err := rawsys.EpollPoll(l.epfd, events)
			return n > 0 || err != 0 && err != unix.EINTR
		}
		return true
	}
	wait := func(uintptr) bool {
		l.sp.Resume(nanotime())
		for range 64 { // then return, so that the timers get their turn
			n, err := rawsys.EpollPoll(l.epfd, events)
			if err == unix.EINTR {
				continue
			}
			if n == 0 || err != 0 {
				if l.listening && l.idle() {
					idle = true
					return true // park on Conn (waitConn)
				}
				l.sp.Park(l.epfd)
				return false // nothing ready: park until the epoll set is
			}
			pass(n)
			l.sp.Busy(passAt)
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
			if l.closed {
				return true
			}
		}
		return true
	}

	l.control()
	now := time.Now()
	sweepAt, checkAt, next := now, now, now // next: the read deadline, the earlier of the two
	var perr time.Duration
	for !l.closed {
		// Once next has passed, every read of ep fails at once until the
		// deadline moves: it moves here, whichever of the two is due.
		if now := time.Now(); !now.Before(next) {
			if !now.Before(checkAt) {
				if !l.alive() {
					break
				}
				l.control() // in case a kick was lost to a failed epoll_ctl
				checkAt = now.Add(closeCheck)
			}
			if !now.Before(sweepAt) {
				sweepAt = now.Add(l.sweep())
			}
			next = checkAt
			if sweepAt.Before(next) {
				next = sweepAt
			}
			l.ep.SetReadDeadline(next)
		}
		err := l.eprc.Read(wait)
		l.sp.Resume(nanotime()) // it runs, also when a deadline or an error ended the wait
		if idle {
			idle = false
			l.sp.Park(l.lfd)
			l.waitConn(events, &first, onConn)
			l.sp.Resume(nanotime())
			continue
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			// Not expected (the epoll descriptor closes after this
			// loop); keep serving rather than strand the sessions.
			perr = l.backoff(perr, err)
			continue
		}
		perr = 0
	}
	if hand != nil {
		hand.err = net.ErrClosed
		close(hand.done)
	}
	l.shutdown()
}

// connect opens s's backend socket, connected to t, in the epoll set.
func (l *Listener) connect(s *session, t *target) error {
	// Raw calls (pkg/rawsys): a session opens per new client, and
	// through Syscall each open could wake the runtime's sysmon.
	ap := t.udpAddr.AddrPort()
	fam := unix.AF_INET6
	if ap.Addr().Is4() {
		fam = unix.AF_INET
	}
	fd, errno := rawsys.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if errno != 0 {
		return fmt.Errorf("socket: %w", errno)
	}
	if errno := rawsys.Connect(fd, ap); errno != 0 {
		rawsys.Close(fd)
		return fmt.Errorf("connect %s: %w", ap, errno)
	}
	s.fd, s.id = fd, l.newID()
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
	if errno := rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); errno != 0 {
		l.mu.Lock()
		l.byFD[fd] = nil
		l.mu.Unlock()
		rawsys.Close(fd)
		return fmt.Errorf("epoll add: %w", errno)
	}
	return nil
}

// write sends one datagram: data, after the session's header if it has one
// (one writev, so header and payload stay one datagram, without a copy).
func (s *session) write(data []byte) error {
	if len(s.hdr) == 0 {
		if _, errno := rawsys.Write(s.fd, data); errno != 0 {
			return errno
		}
		return nil
	}
	s.iov[0].Base = &s.hdr[0]
	s.iov[0].SetLen(len(s.hdr))
	n := 1
	if len(data) > 0 {
		s.iov[1].Base = &data[0]
		s.iov[1].SetLen(len(data))
		n = 2
	}
	_, _, errno := unix.RawSyscall(unix.SYS_WRITEV, uintptr(s.fd), uintptr(unsafe.Pointer(&s.iov[0])), uintptr(n))
	if errno != 0 {
		return errno
	}
	return nil
}

// start is a no-op: the session is in the epoll set since connect.
func (l *Listener) start(*session) {}

// send writes one client datagram to the backend. Called by the loop.
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
		rawsys.Close(s.fd)
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

// retire ends s from the loop (or Registry.Kill) and hands it to the
// loop's next pass, which closes and accounts for it. It reports whether
// this call ended s.
func (l *Listener) retire(s *session, end End) bool {
	l.mu.Lock()
	ended := l.endLocked(s, end)
	l.retired = append(l.retired, s)
	l.mu.Unlock()
	l.wake()
	return ended
}

// close closes and accounts for sessions the loop found ended. A
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
		if s.closed { // listed twice (retired, and failed here too)
			continue
		}
		s.closed = true
		if s.ref.busy() {
			// A write is in flight and will likely close it: until
			// then, keep its replies from waking the loop. (The
			// descriptor is still this session's: nobody closes it before
			// s.ref.close below.)
			rawsys.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
		}
		if s.ref.close() {
			rawsys.Close(s.fd)
		}
		s.finish(s.end) // s.end is final once dead
	}
}

// sender sends a batch of replies on the listener socket. It is built
// once per loop, so that sending allocates nothing.
type sender struct {
	tx   *batch
	i, n int
	send func(fd uintptr) bool
}

func newSender(tx *batch) *sender {
	s := &sender{tx: tx}
	s.send = func(fd uintptr) bool {
		for s.i < s.n {
			r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&s.tx.hdrs[s.i])),
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
// socket, skipping any one the kernel refuses (an unreachable client). When
// the socket's buffer is full it waits until there is room. It reports
// false when Conn is closed: the replies are lost.
func (l *Listener) sendBatch(s *sender, n int) bool {
	if n == 0 {
		return true
	}
	s.i, s.n = 0, n
	return l.lrc.Write(s.send) == nil
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

// shutdown ends every session still open, once Conn is closed.
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

// fdRef counts the writes in flight on a session's descriptor, so that it
// is never closed under one: whoever is last after
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

// busy reports whether a write is using the descriptor now.
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

// detach is Detach's work once the reader has stopped: the loop takes
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
	<-req.done // the loop answers, or shutdown does
	return req.out, req.err
}

// detachAll takes every open session out of the table and the epoll set
// and returns it with a duplicate of its backend socket, whose queued
// replies stay unread; the session is then accounted for as ended (moved).
// Called by the loop, once it has stopped reading (so no session opens
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
		if s.ref.close() { // no write in flight: nobody holds it
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
	s.fd, s.id = fd, l.newID()
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
	l.wake() // a loop waiting on Conn (no session) now has one to serve
	return nil
}
