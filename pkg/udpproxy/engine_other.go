//go:build !linux

package udpproxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// The portable engine: the reader goroutine reads one datagram at a time
// and each session has a goroutine blocked reading its backend socket, with
// a pooled buffer, and a read deadline for idle expiry. Linux has a faster
// one (engine_linux.go).

type engine struct {
	wg   sync.WaitGroup // one per session goroutine
	gone bool           // shutdown has ended the sessions: Adopt adds none; guarded by l.mu
}

type sock struct {
	conn *net.UDPConn
	// moved receives the session's Handoff once Detach has taken it:
	// its goroutine describes it; set with l.mu held before it is marked.
	moved chan<- Handoff
}

func enablePktinfo(*net.UDPConn) (int, error) {
	return 0, errors.New("packet info is supported on Linux only")
}

func replyOOB(int, netip.Addr) []byte { return nil }

func (l *Listener) run() {
	l.setUp()
	buf := make([]byte, MaxDatagram)
	var backoff time.Duration
	for {
		if l.holding() {
			if !l.park() {
				break // closed while held
			}
			continue
		}
		n, from, err := l.Conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				break
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				l.unkick() // a kick (handover.go): look at the hold
				continue
			}
			backoff = l.backoff(backoff, err)
			continue
		}
		backoff = 0
		l.forward(buf[:n], from, netip.Addr{}, nanotime())
	}
	l.shutdown()
}

func (l *Listener) connect(s *session, t *target) error {
	conn, err := net.DialUDP("udp", nil, t.udpAddr)
	if err != nil {
		return err
	}
	s.conn = conn
	return nil
}

func (l *Listener) start(s *session) {
	l.wg.Add(1)
	go s.run()
}

func (s *session) send(data []byte) error {
	s.sending(len(data))
	out := data
	if len(s.hdr) > 0 {
		out = append(append(make([]byte, 0, len(s.hdr)+len(data)), s.hdr...), data...)
	}
	if _, err := s.conn.Write(out); err != nil {
		s.unsent(len(data))
		return err
	}
	s.sent(len(data))
	return nil
}

// retire ends s from the reader goroutine (or Registry.Kill); the session
// goroutine then finishes it. It reports whether this call ended s.
func (l *Listener) retire(s *session, end End) bool {
	l.mu.Lock()
	ended := l.endLocked(s, end)
	l.mu.Unlock()
	s.conn.Close()
	return ended
}

func (l *Listener) shutdown() {
	l.mu.Lock()
	l.gone = true
	dying := make([]*session, 0, len(l.table))
	for _, s := range l.table {
		dying = append(dying, s)
	}
	for _, s := range dying {
		l.endLocked(s, EndShutdown)
	}
	l.mu.Unlock()
	for _, s := range dying {
		s.conn.Close()
	}
	l.wg.Wait()
}

// run is the session goroutine: it moves replies until the session ends.
func (s *session) run() {
	defer s.l.wg.Done()
	end := s.serve()
	if end == endMoved {
		h := s.handoff(nil)
		if f, err := s.conn.File(); err == nil {
			h.File = f
		}
		s.moved <- h // buffered for every session Detach took
	}
	s.conn.Close()
	s.finish(end)
}

func (s *session) serve() End {
	if _, d := s.expired(nanotime()); d > 0 {
		s.conn.SetReadDeadline(time.Now().Add(d))
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	for {
		n, err := s.conn.Read(*bp)
		switch {
		case err == nil:
			if _, err := s.l.Conn.WriteToUDPAddrPort((*bp)[:n], s.client); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return s.stop(EndShutdown)
				}
				continue // the client is unreachable: the reply is lost
			}
			if s.replied(n, nanotime()) {
				return EndResponses
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
			s.l.mu.Lock()
			if s.dead { // Detach took it (or it ended otherwise)
				end := s.end
				s.l.mu.Unlock()
				return end
			}
			end, d := s.expired(nanotime())
			if end != "" {
				s.l.endLocked(s, end)
			}
			s.l.mu.Unlock()
			if end != "" {
				return s.stop(end)
			}
			s.conn.SetReadDeadline(time.Now().Add(d))
		case isRefused(err):
			s.rerr = err
			return s.stop(EndBackendError)
		default:
			return s.stop(EndShutdown) // closed by someone else, who recorded why
		}
	}
}

// detach is Detach's work once the reader has stopped: each session's
// goroutine, woken by a read deadline in the past, describes it, and
// duplicates and closes its socket (replies it read before are sent).
func (l *Listener) detach() ([]Handoff, error) {
	l.mu.Lock()
	if l.gone {
		l.mu.Unlock()
		return nil, net.ErrClosed
	}
	moved := make(chan Handoff, len(l.table))
	var moving []*session
	for _, s := range l.table {
		s.moved = moved
		l.endLocked(s, endMoved)
		moving = append(moving, s)
	}
	l.mu.Unlock()
	for _, s := range moving {
		s.conn.SetReadDeadline(time.Unix(1, 0))
	}
	out := make([]Handoff, 0, len(moving))
	var errs []error
	for range moving {
		h := <-moved
		if h.File == nil {
			errs = append(errs, fmt.Errorf("session %s: no duplicate of its socket", h.Client))
			continue
		}
		out = append(out, h)
	}
	return out, errors.Join(errs...)
}

// join serves an adopted session on a duplicate of f's socket.
func (l *Listener) join(s *session, f *os.File) error {
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return err
	}
	conn, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return errors.New("not a UDP socket")
	}
	s.conn = conn
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.gone:
		conn.Close()
		return net.ErrClosed
	case l.table[s.client] != nil:
		conn.Close()
		return errors.New("the client has a session here already")
	}
	l.table[s.client] = s
	l.live++
	l.start(s)
	return nil
}

// kick wakes the reader wherever it waits on the socket, so that it looks
// at ctl again: a read deadline in the past. The reader clears the
// deadline before it looks, so a kick is never missed.
func (l *Listener) kick() {
	l.Conn.SetReadDeadline(time.Unix(1, 0))
}

// unkick clears a kick's deadline; the reader calls it on a deadline error
// before it looks at ctl.
func (l *Listener) unkick() {
	l.Conn.SetReadDeadline(time.Time{})
}

// park is where the reader waits while it is held: it reports that it has
// stopped, then waits without reading until Release (true) or until the
// socket is closed (false). It is woken by the datagrams that arrive
// meanwhile, and by kicks, and reads none.
func (l *Listener) park() bool {
	l.stopped()
	rc, err := l.Conn.SyscallConn()
	if err != nil {
		return false
	}
	for {
		err := rc.Read(func(uintptr) bool { return !l.holding() })
		switch {
		case err == nil:
			return true
		case errors.Is(err, os.ErrDeadlineExceeded):
			l.unkick()
		default:
			return false // closed
		}
	}
}
