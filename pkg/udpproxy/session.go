package udpproxy

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/metrics"
	"go.uber.org/zap"
)

// session is one client address and port joined to one backend through a
// connected socket of its own.
type session struct {
	l      *Listener
	p      *Proxy // the generation that opened it
	b      *balancer.Backend
	t      *target
	client netip.AddrPort // as read from the listener socket (maybe IPv4-mapped)
	dst    netip.Addr     // the address the client sent to (wildcard bind with packet info), else zero
	oob    []byte         // packet info for replies (wildcard bind), else nil
	start  time.Time
	opened int64  // nanotime of start
	hdr    []byte // put in front of every datagram to the backend (Config.Header), or nil
	// attempts is the number of backends dial tried for it (more than 1
	// when a backend socket failed), for the access log.
	attempts int

	last     atomic.Int64 // nanotime of the last datagram either way
	heard    atomic.Bool  // the backend has replied at least once
	requests atomic.Int64 // client datagrams; written with l.mu held
	bytesIn  atomic.Int64 // written by the goroutine that reads the listener socket
	dgIn     atomic.Int64

	// Owned by the goroutine that moves replies.
	bytesOut, dgOut, replies int64
	rerr                     error // why the backend socket failed

	// Guarded by l.mu.
	dead bool
	end  End
	// release is the client's admission (Listener.Admit), nil when there
	// is none. One rule: it is read and cleared only under l.mu, by
	// takeRelease, so exactly one party gets it: finish once the session
	// is accounted for, evict at once, or handOver for the session that
	// replaces this one after a backend failure. Whoever takes it calls
	// it or hands it on.
	release func()

	// The backend's Registry and this session's links in it; guarded by
	// the registry's mu.
	reg              *Registry
	regPrev, regNext *session
	regLeft          bool // finished: never to be linked

	sock // the backend socket: engine_linux.go, engine_other.go
}

// bufPool holds reply buffers of the portable engine, borrowed only while
// datagrams are moving.
var bufPool = sync.Pool{New: func() any {
	b := make([]byte, MaxDatagram)
	return &b
}}

// sending counts one client datagram in the session before it is written
// to the backend (so the reply, which may come back at once, finds it
// counted); unsent takes it back when the write fails. Called by the reader
// goroutine.
func (s *session) sending(n int) {
	s.dgIn.Add(1)
	s.bytesIn.Add(int64(n))
}

func (s *session) unsent(n int) {
	s.dgIn.Add(-1)
	s.bytesIn.Add(-int64(n))
}

// sent counts a client datagram written to the backend in the metrics.
func (s *session) sent(n int) {
	s.t.Metrics.Datagram(metrics.In, n)
}

// replied accounts for one reply sent to the client at now, and reports
// whether it was the last one the session expects (responses): the session
// has then ended.
func (s *session) replied(n int, now int64) (ended bool) {
	s.last.Store(now)
	s.dgOut++
	if s.dgOut == 1 {
		s.heard.Store(true)
	}
	s.bytesOut += int64(n)
	s.t.Metrics.Datagram(metrics.Out, n)
	r := int64(s.p.cfg.Responses)
	if r == 0 {
		return false
	}
	s.replies++
	if s.replies < r*s.requests.Load() {
		return false
	}
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	// Checked again under mu: a datagram forwarded meanwhile raised
	// requests, and the session then stays.
	return s.replies >= r*s.requests.Load() && s.l.endLocked(s, EndResponses)
}

// stop ends the session with end unless it has ended already, and returns
// the reason that stands.
func (s *session) stop(end End) End {
	s.l.mu.Lock()
	s.l.endLocked(s, end)
	end = s.end
	s.l.mu.Unlock()
	return end
}

// expired reports why the session has expired at now: no reply within
// its unreplied timeout, or no datagram either way for its idle timeout;
// "" if neither, with how long until one of them might end it.
func (s *session) expired(now int64) (End, time.Duration) {
	cfg := &s.p.cfg
	wait := time.Hour
	if u := cfg.UnrepliedTimeout; u > 0 && !s.heard.Load() {
		age := time.Duration(now - s.opened)
		if age >= u {
			return EndUnreplied, 0
		}
		wait = u - age
	}
	if idle := cfg.IdleTimeout; idle > 0 {
		quiet := time.Duration(now - s.last.Load())
		if quiet >= idle {
			return EndIdle, 0
		}
		wait = min(wait, idle-quiet)
	}
	return "", wait
}

// takeRelease takes the session's admission away from it (see release);
// it returns nil when another party has taken it, or there is none.
// Called with l.mu held.
func (s *session) takeRelease() func() {
	rel := s.release
	s.release = nil
	return rel
}

// finish accounts for an ended session whose socket is closed.
func (s *session) finish(end End) {
	cfg := &s.p.cfg
	if end == EndBackendError {
		s.t.Metrics.ConnectFailed()
		s.b.AddFailure()
		if cfg.Passive != nil {
			cfg.Passive.ConnectFailed(s.b, s.rerr)
		}
		cfg.Log.Debug("udp: backend refused datagrams", zap.String("pool", cfg.PoolName),
			zap.String("backend", s.b.Address()), zap.Error(s.rerr))
	}
	if end != endMoved { // it goes on in the other process, which logs it
		d := time.Since(s.start) // one clock read for the histogram and the log
		cfg.Durations.Observe(d)
		s.p.logAccess(s, end, d)
	}
	s.unaccount()
	s.l.left()
}

// unaccount gives back what an open session holds (its admission, its
// place in the registry, its descriptor, its counts), but for its place in
// l.live.
func (s *session) unaccount() {
	s.l.mu.Lock()
	rel := s.takeRelease()
	s.l.mu.Unlock()
	if rel != nil {
		rel()
	}
	if r := s.t.Sessions; r != nil {
		r.remove(s)
	}
	putFD()
	s.b.Release()
	s.t.Metrics.SessionClosed()
	if s.l.Sessions != nil {
		s.l.Sessions.Add(-1)
	}
}

// clientLog is the client address for logs: IPv4 clients of a dual-stack
// socket are shown as IPv4.
func (s *session) clientLog() netip.AddrPort {
	return netip.AddrPortFrom(s.client.Addr().Unmap(), s.client.Port())
}
