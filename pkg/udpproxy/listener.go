package udpproxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/localerr"
	"github.com/lbctl/lbctl/pkg/metrics"
	"go.uber.org/zap"
)

// Listener serves one bound UDP socket: it reads every client datagram,
// keeps the session table and opens sessions with the Proxy generation in
// force. Set the exported fields, then call Serve once.
type Listener struct {
	// Conn is the bound listener socket. Serve reads from it until it is
	// closed; replies are written to it. The caller closes it.
	Conn *net.UDPConn
	// Proxy returns the generation that new sessions use; open sessions
	// keep the one they started with. It is called once per new session.
	Proxy func() *Proxy
	// Sessions, when not nil, is kept equal to the number of open sessions
	// (a listener's "active" count in status).
	Sessions *atomic.Int64
	// Admit, when not nil, decides whether a new session from client may
	// open (a limit on sessions, access lists, per-client limits): it
	// returns the function to call once that session has ended, or nil to
	// refuse it, having counted the refusal. When its table of clients is
	// full, Admit may call evict to make room: evict ends the session least
	// worth keeping (see the package comment), calls that session's release
	// before it returns, and reports whether there was one. The reader
	// goroutine calls Admit once per new session, never per datagram, after
	// the listener's own checks (draining, the descriptor reserve), so a
	// session refused by those never takes the client's admission. A
	// session that replaces one whose backend failed takes over that one's
	// admission instead of asking again.
	Admit func(client netip.Addr, evict func() bool) (release func())
	// Hold makes Serve start without reading from Conn until Release: the
	// new process of an upgrade, whose listener shares its socket with the
	// old process until the old one's sessions have moved here (Adopt).
	// Replies of adopted sessions leave through Conn meanwhile.
	Hold bool

	ctl readerCtl // holds and releases the reader (handover.go)

	mu       sync.Mutex
	table    map[netip.AddrPort]*session // open sessions by client; guarded by mu
	live     int                         // sessions opened and not yet finished; guarded by mu
	draining bool                        // Drain was called; guarded by mu
	drained  chan struct{}               // closed once draining and live == 0; guarded by mu
	shut     bool                        // drained is closed; guarded by mu

	// Owned by the reader goroutine.
	pktinfo int         // family whose packet info is enabled (wildcard bind), 0 = off
	starved bool        // new sessions refused for lack of descriptors
	refused int64       // sessions refused in the current starvation episode
	evictFn func() bool // l.evict, made once for Admit

	engine // how datagrams move: engine_linux.go, engine_other.go
}

// epoch anchors the monotonic clock used for idle tracking.
var epoch = time.Now()

func nanotime() int64 { return int64(time.Since(epoch)) }

// Serve reads client datagrams until Conn is closed, then ends every open
// session and returns once all of them are accounted for. Transient read
// errors are retried after a short back-off.
func (l *Listener) Serve() {
	l.mu.Lock()
	l.table = make(map[netip.AddrPort]*session)
	l.mu.Unlock()
	l.evictFn = l.evict
	l.startCtl()
	defer l.endCtl()
	if la, ok := l.Conn.LocalAddr().(*net.UDPAddr); ok && la.IP.IsUnspecified() {
		// A wildcard bind: replies must leave from the address each client
		// sent to, not whatever the routing table prefers.
		fam, err := enablePktinfo(l.Conn)
		if err != nil {
			l.log().Warn("udp: no packet info on wildcard listener; replies take the routed source address",
				zap.Stringer("bind", la), zap.Error(err))
		}
		l.pktinfo = fam
	}
	l.run()
}

func (l *Listener) log() *zap.Logger {
	if p := l.Proxy(); p != nil {
		return p.cfg.Log
	}
	return zap.NewNop()
}

// backoff sleeps after a failed read so that a persistent error does not
// spin the reader; it returns the next back-off.
func (l *Listener) backoff(d time.Duration, err error) time.Duration {
	if d == 0 {
		l.log().Debug("udp: read failed", zap.Error(err))
	}
	d = min(max(2*d, time.Millisecond), 100*time.Millisecond)
	time.Sleep(d)
	return d
}

// forward sends one client datagram to the client's session, opening one
// if needed. It never waits for a session: the write goes straight into the
// session's backend socket.
func (l *Listener) forward(data []byte, from netip.AddrPort, dst netip.Addr, now int64) {
	l.mu.Lock()
	s := l.table[from]
	if s != nil {
		// Under mu, so that a session deciding to end (responses, idle)
		// sees this datagram coming and stays.
		s.requests.Add(1)
		s.last.Store(now)
	}
	l.mu.Unlock()
	var (
		avoid    *balancer.Backend
		admitted func() // the admission a failed-over session handed on
	)
	for range 2 {
		if s == nil {
			s = l.open(from, dst, now, avoid, admitted)
			admitted = nil // the new session holds it, or open released it
			if s == nil {
				return
			}
		}
		err := s.send(data)
		switch {
		case err == nil:
			return
		case errors.Is(err, net.ErrClosed):
			// The session ended between the lookup and the write: the
			// datagram opens a new one.
		case isRefused(err):
			// An ICMP error from an earlier datagram: the backend is gone.
			// Open a session on another one for this datagram; it takes
			// over the client's admission, which must not be counted twice
			// (nil if the replier has already released it: then the new
			// session is admitted afresh).
			admitted = l.handOver(s)
			l.retire(s, EndBackendError)
			avoid = s.b
		default:
			s.p.cfg.Log.Debug("udp: datagram to backend dropped", zap.String("listener", s.p.cfg.Listener),
				zap.String("backend", s.b.Address()), zap.Error(err))
			return
		}
		s = nil
	}
	if admitted != nil {
		admitted() // the datagram is dropped, and no session holds it
	}
}

// isRefused reports the errors a connected UDP socket returns after an ICMP
// error from its peer.
func isRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTDOWN)
}

// open starts a session for a client's first datagram, or returns nil when
// the datagram is dropped (and counted as rejected).
func (l *Listener) open(from netip.AddrPort, dst netip.Addr, now int64, avoid *balancer.Backend, admitted func()) *session {
	p := l.Proxy()
	if p == nil {
		if admitted != nil {
			admitted()
		}
		return nil
	}
	cfg := &p.cfg
	// The listener's own checks first: a datagram refused here must not
	// spend the client's rate token (Admit).
	l.mu.Lock()
	draining := l.draining
	l.mu.Unlock()
	switch {
	case draining:
		// Open sessions finish, none starts. Not a rejection: the listener
		// is going away.
		if admitted != nil {
			admitted()
		}
		return nil
	case !takeFD():
		l.starve(cfg, nil)
		if admitted != nil {
			admitted()
		}
		return nil
	}
	release := admitted
	if release == nil && l.Admit != nil {
		if release = l.Admit(from.Addr().Unmap(), l.evictFn); release == nil {
			putFD()
			return nil
		}
	}
	s := &session{l: l, p: p, client: from, start: time.Now(), opened: now, release: release}
	l.address(s, dst)
	if !l.dial(s, avoid) {
		putFD()
		if release != nil {
			release()
		}
		return nil
	}
	if r := s.t.Sessions; r != nil {
		r.add(s)
	}
	s.last.Store(now)
	s.requests.Store(1)
	s.b.Acquire() // a UDP socket's connect is local and immediate: no connect in progress to count
	s.b.Established()
	s.t.Metrics.SessionOpened()
	if l.Sessions != nil {
		l.Sessions.Add(1)
	}
	l.mu.Lock()
	l.table[from] = s
	l.live++
	l.mu.Unlock()
	l.start(s)
	return s
}

// address sets what s needs of the address the client sent to, dst (the
// zero Addr unless the bind is a wildcard): the packet info of its replies
// and its header. s.p and s.client are set.
func (l *Listener) address(s *session, dst netip.Addr) {
	if l.pktinfo != 0 && dst.IsValid() {
		s.dst = dst
		s.oob = replyOOB(l.pktinfo, dst)
	}
	if h := s.p.cfg.Header; h != nil {
		local := l.Conn.LocalAddr().(*net.UDPAddr).AddrPort()
		if dst.IsValid() {
			local = netip.AddrPortFrom(dst, local.Port())
		}
		s.hdr = h(netip.AddrPortFrom(s.client.Addr().Unmap(), s.client.Port()),
			netip.AddrPortFrom(local.Addr().Unmap(), local.Port()))
	}
}

// dial picks a backend for s and opens the session's connected socket to
// it, trying the other backends when that fails. It reports false when the
// datagram must be dropped, having counted why.
func (l *Listener) dial(s *session, avoid *balancer.Backend) bool {
	cfg := &s.p.cfg
	var tried balancer.Tried
	tried.Add(avoid)
	for {
		b := cfg.Pool.Pick(s.client, &tried)
		if b == nil {
			if tried.Len() == 0 {
				cfg.Rejections.Inc(metrics.ReasonNoBackend)
			} else {
				cfg.Rejections.Inc(metrics.ReasonBackendUnavailable)
			}
			return false
		}
		tried.Add(b)
		t := s.p.targets[b]
		s.b, s.t = b, t
		if err := l.connect(s, t); err != nil {
			if localerr.Is(err) {
				l.starve(cfg, err)
				return false
			}
			t.Metrics.ConnectFailed()
			b.AddFailure()
			if cfg.Passive != nil {
				cfg.Passive.ConnectFailed(b, err)
			}
			cfg.Log.Debug("udp: backend socket failed", zap.String("pool", cfg.PoolName),
				zap.String("backend", b.Address()), zap.Error(err))
			continue
		}
		s.attempts = tried.Len()
		if l.starved {
			cfg.Log.Info("udp: new sessions accepted again", zap.String("listener", cfg.Listener),
				zap.Int64("refused", l.refused))
			l.starved, l.refused = false, 0
		}
		return true
	}
}

// starve counts a session refused because UDP sessions hold their share
// of descriptors (err nil: fdbudget.go), or because the process is out of
// descriptors or the system out of buffers or ports. Open sessions keep
// working; the first refusal of an episode is logged.
func (l *Listener) starve(cfg *Config, err error) {
	cfg.Rejections.Inc(metrics.ReasonMaxConnections)
	l.refused++
	if !l.starved {
		l.starved = true
		if err == nil {
			limit, _ := fdLimit()
			err = fmt.Errorf("UDP sessions hold %d descriptors, all that RLIMIT_NOFILE %d leaves them (a reserve of %d)",
				heldFDs.Load(), limit, DescriptorReserve(limit))
		}
		cfg.Log.Warn("udp: no descriptor for a new session, new sessions are refused until one frees up",
			zap.String("listener", cfg.Listener), zap.Error(err))
	}
}

// handOver takes s's admission away from it, for the session that replaces
// it after a backend failure; s then releases nothing when it ends. It
// returns nil when s has released it already.
func (l *Listener) handOver(s *session) func() {
	l.mu.Lock()
	defer l.mu.Unlock()
	return s.takeRelease()
}

// evictSample is how many open sessions evict compares: Go's map order
// starts at random, so they are a random sample, and the cost of making
// room stays the same whatever the table's size.
const evictSample = 16

// evict ends the session least worth keeping, to make room for a new
// client: of evictSample sessions, one whose backend has never replied if
// there is one, else the one quiet the longest. It releases that session's
// admission before it returns, and reports whether there was a session to
// end. It is Admit's evict, called by the reader goroutine.
func (l *Listener) evict() bool {
	l.mu.Lock()
	var victim *session
	n := 0
	for _, s := range l.table {
		if victim == nil || evictFirst(s, victim) {
			victim = s
		}
		if n++; n == evictSample {
			break
		}
	}
	if victim == nil {
		l.mu.Unlock()
		return false
	}
	l.endLocked(victim, EndEvicted)
	rel := victim.takeRelease()
	l.mu.Unlock()
	l.retire(victim, EndEvicted) // the socket closes, and the session is accounted for
	if rel != nil {
		rel()
	}
	return true
}

// evictFirst reports whether s is less worth keeping than o: it has never
// heard from its backend and o has, or both alike, it has been quiet
// longer, or as long (datagrams of one batch share a time) and is older.
func evictFirst(s, o *session) bool {
	if sh, oh := s.heard.Load(), o.heard.Load(); sh != oh {
		return !sh
	}
	if sl, ol := s.last.Load(), o.last.Load(); sl != ol {
		return sl < ol
	}
	return s.start.Before(o.start)
}

// Drain makes the listener stop opening sessions: from now on a datagram
// that would open one is dropped, and not counted as rejected (the
// listener is going away). Open sessions carry on both ways, their replies
// leaving through Conn, until they end by themselves. The channel returned
// is closed once no session is left; the caller then closes Conn, or closes
// it before (its deadline), which ends the sessions still open. Drain may
// be called more than once.
func (l *Listener) Drain() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.draining {
		l.draining = true
		l.drained = make(chan struct{})
		l.drainedLocked()
	}
	return l.drained
}

// left accounts for a session that has finished.
func (l *Listener) left() {
	l.mu.Lock()
	l.live--
	l.drainedLocked()
	l.mu.Unlock()
}

// drainedLocked closes l.drained once draining and no session is left.
func (l *Listener) drainedLocked() {
	if l.draining && l.live == 0 && !l.shut {
		l.shut = true
		close(l.drained)
	}
}

// endLocked records end as the reason s ends, unless it has already ended,
// and takes it out of the table. It reports whether this call ended it.
func (l *Listener) endLocked(s *session, end End) bool {
	if s.dead {
		return false
	}
	s.dead, s.end = true, end
	if l.table[s.client] == s {
		delete(l.table, s.client)
	}
	return true
}
