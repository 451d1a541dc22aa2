package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"github.com/lbctl/lbctl/pkg/udpproxy"
	"go.uber.org/zap"
)

// listener is one bound socket. Its behaviour (pool, limits) is the
// listenerState in force, swapped atomically by a reload.
type listener struct {
	protocol string
	tcp      *net.TCPListener
	udp      *net.UDPConn // protocol "udp"; served by serveUDP (udp.go)
	state    atomic.Pointer[listenerState]
	active   atomic.Int64 // open connections or sessions, across generations
	clients  clientTable  // per-client limits (clienttable.go); survive reloads
	closing  chan struct{}
	once     sync.Once
	served   bool          // serve was called (under Server.mu)
	done     chan struct{} // closed when the accept loop has returned
	// UDP: closed when a reload removed the listener; drainUDP then lets
	// its sessions run on for drainFor at most (set before).
	removed  chan struct{}
	drainFor time.Duration
	// pause: StopAccepting (upgrade.go). While paused is not nil the
	// accept loop waits for it to close instead of accepting, and closes
	// parked once it waits.
	pauseMu sync.Mutex
	paused  chan struct{}
	parked  chan struct{}
	// TCP: connection starters (startTCP) waiting for the next accepted
	// connection, and how many wait. Only the accept loop sends, and it
	// closes starts when it returns.
	starts  chan tcpStart
	waiting atomic.Int32
	// loop: an event loop accepts the listener's connections
	// (tcpproxy.ListenInLoop) instead of acceptLoop; nil otherwise.
	loop *tcpproxy.Listener
}

// listenerState is one generation of a listener's configuration.
type listenerState struct {
	name  string
	cfg   *config.Listener
	pool  *pool // nil when routes alone serve the listener
	gate  *gate // admission (admission.go)
	rej   *metrics.Rejections
	proxy *tcpproxy.Proxy // protocol "tcp"
	udp   *udpproxy.Proxy // protocol "udp"
	// routes: a tcp listener with routes reads each ClientHello and picks
	// a route's proxy, else proxy (tlsroute.go); nil without routes.
	routes *routeTable
	// router reads routes for an event loop that read a ClientHello
	// (tlsroute.go); nil without routes.
	router *helloRouter
}

// gens gives the generation of each pool the listener's routes name.
func (s *Server) buildListenerState(lc *config.Listener, p *pool, gens func(string) *pool, accessLog bool, tb *targetBuild) (*listenerState, error) {
	if p == nil && lc.Pool != "" {
		return nil, errors.New("unknown pool " + lc.Pool)
	}
	st := &listenerState{
		name: lc.Name,
		cfg:  lc,
		rej:  s.m.ForListener(lc.Protocol, lc.Name),
	}
	st.gate = newGate(lc, st.rej, s.log)
	if err := s.buildProxy(st, p, accessLog, tb); err != nil {
		return nil, err
	}
	if err := s.buildRoutes(st, gens, accessLog, tb); err != nil {
		return nil, err
	}
	st.setRouter(s)
	return st, nil
}

// rebuildListenerState is st over generation p of one of its pools (its
// own, or a route's): the same admission gate and limits, proxies over p's
// members where st used p's pool, the others as they were.
func (s *Server) rebuildListenerState(st *listenerState, p *pool, accessLog bool, tb *targetBuild) (*listenerState, error) {
	ns := &listenerState{name: st.name, cfg: st.cfg, gate: st.gate, rej: st.rej, pool: st.pool, proxy: st.proxy, udp: st.udp}
	if st.pool != nil && st.pool.live == p.live {
		if err := s.buildProxy(ns, p, accessLog, tb); err != nil {
			return nil, err
		}
	}
	rt, err := s.rebuildRoutes(ns, st.routes, p, accessLog, tb)
	if err != nil {
		return nil, err
	}
	ns.routes = rt
	ns.setRouter(s)
	return ns, nil
}

// buildProxy sets st's pool to p and builds the proxy over p's members;
// a nil p (a listener that only routes) leaves both nil.
func (s *Server) buildProxy(st *listenerState, p *pool, accessLog bool, tb *targetBuild) error {
	lc := st.cfg
	st.pool = p
	if p == nil {
		return nil
	}
	switch lc.Protocol {
	case "tcp":
		tm := make(map[*balancer.Backend]*tcpproxy.Target, len(p.backends))
		for _, be := range p.backends {
			tm[be.b] = tb.tcpTarget(s, be, lc.Name)
		}
		var access *zap.Logger
		if accessLog {
			access = s.log.Named("access")
		}
		st.proxy = tcpproxy.New(tcpproxy.Config{
			Listener:         lc.Name,
			PoolName:         p.name,
			Pool:             p.bal,
			Targets:          tm,
			ConnectTimeout:   p.cfg.ConnectTimeout,
			Retries:          p.cfg.Retries,
			IdleTimeout:      lc.IdleTimeout,
			HalfCloseTimeout: lc.HalfCloseTimeout,
			Rejections:       st.rej,
			Passive:          p,
			HeaderFunc:       proxyHeaderFunc(p.cfg.ProxyProtocol, false),
			AuthorityTLV:     p.cfg.ProxyProtocol == "v2",
			Log:              s.log,
			Access:           access,
			Durations:        s.m.ForDurations(lc.Name),
		})
	case "udp":
		u, err := s.buildUDPProxy(lc, p, st, accessLog, tb)
		if err != nil {
			return err
		}
		st.udp = u
	default:
		return errors.New("unknown protocol " + lc.Protocol)
	}
	return nil
}

func (s *Server) bind(lc *config.Listener) (*listener, error) {
	l := &listener{protocol: lc.Protocol, closing: make(chan struct{}), done: make(chan struct{}), removed: make(chan struct{}), starts: make(chan tcpStart)}
	switch lc.Protocol {
	case "tcp":
		if inh, err := s.inheritedTCP(lc.Bind); err != nil || inh != nil {
			if err == nil {
				if kerr := setKeepAlive(inh); kerr != nil {
					inh.Close()
					return nil, fmt.Errorf("inherited socket %s: keep-alive: %w", lc.Bind, kerr)
				}
			}
			l.tcp = inh
			return l, err
		}
		lcfg := tcpListenConfig()
		// Plain TCP, as HAProxy and nginx listen by default: Go has
		// made listeners MPTCP where the kernel has it since 1.24, and
		// every connection then crosses MPTCP's accept path even when
		// the client speaks plain TCP (docs/benchmarks.md, issue 14).
		lcfg.SetMultipathTCP(false)
		ln, err := lcfg.Listen(context.Background(), "tcp", lc.Bind)
		if err != nil {
			return nil, err
		}
		l.tcp = ln.(*net.TCPListener)
	case "udp":
		s.freeUDPAddr(lc.Bind) // a removed listener may still drain there
		uc, err := s.bindUDP(lc)
		if err != nil {
			return nil, err
		}
		l.udp = uc
	default:
		return nil, errors.New("unknown protocol " + lc.Protocol)
	}
	return l, nil
}

func (l *listener) addr() net.Addr {
	if l.udp != nil {
		return l.udp.LocalAddr()
	}
	return l.tcp.Addr()
}

// close closes the listener socket and waits until it is no longer served.
// Established TCP connections are not touched. A UDP listener's open
// sessions end with its socket, since their replies leave through it:
// Shutdown and a reload that removes the listener drain it first, and close
// it once its sessions have ended or at their deadline (drainUDP).
func (l *listener) close() {
	l.once.Do(func() {
		close(l.closing)
		switch {
		case l.udp != nil:
			l.udp.Close()
		case l.loop != nil:
			l.loop.Stop() // the loop no longer uses the socket
			l.tcp.Close()
			close(l.starts) // the waiting starters return
			close(l.done)
		default:
			l.tcp.Close()
		}
		if !l.served {
			close(l.done) // bound, but a later step failed before it served
		}
	})
	<-l.done
}

func (s *Server) serve(l *listener) {
	l.served = true
	if l.udp != nil {
		go s.serveUDP(l)
		return
	}
	if st := l.state.Load(); st.loopAdmits() {
		l.loop = tcpproxy.ListenInLoop(l.tcp, tcpproxy.ListenerHooks{
			Ctx:     s.killCtx,
			Admit:   func(peer netip.AddrPort) tcpproxy.Admission { return s.admitInLoop(l, peer) },
			Handoff: func(c *net.TCPConn, peer netip.AddrPort) { s.accepted(l, c, peer) },
			Failing: func(err error) { s.acceptFailing(l, err) },
			Recovered: func(failures int) {
				s.log.Info("accepting again", zap.String("listener", l.state.Load().name), zap.Int("failed_accepts", failures))
			},
		})
		if l.loop != nil {
			return
		}
	}
	go s.acceptLoop(l)
}

// plain reports whether the listener's connections can be served from an
// event loop from the accept on (tcpproxy.ListenInLoop): no PROXY header
// to read, no ClientHello to route on, targets an event loop connects to.
func (st *listenerState) plain() bool {
	return st.proxy != nil && st.routes == nil && !st.cfg.AcceptProxyProtocol && st.proxy.LoopConnects()
}

// loopAdmits reports whether an event loop can take the listener's
// connections from the accept on: plain, or routing on the ClientHello,
// which the loop reads (tcpproxy.HelloRouter), without a PROXY header.
// A route whose pool the loop cannot connect to is served from the
// goroutine path once its hello is read.
func (st *listenerState) loopAdmits() bool {
	if st.routes != nil {
		return !st.cfg.AcceptProxyProtocol && tcpproxy.LoopsConnect()
	}
	return st.plain()
}

// admitInLoop is the admission of a connection an event loop accepted
// (tcpproxy.ListenerHooks.Admit): the listener's current generation says
// whether the loop serves it (and reads its hello first), or hands it
// off (a reload made the listener read PROXY headers).
func (s *Server) admitInLoop(l *listener, peer netip.AddrPort) tcpproxy.Admission {
	st := l.state.Load()
	if !st.loopAdmits() {
		return tcpproxy.Admission{Handoff: true} // to accepted, on the goroutine path
	}
	release, reason := st.gate.admitTCP(l, peer) // admission.go
	if reason != 0 {
		return tcpproxy.Admission{}
	}
	l.active.Add(1)
	s.conns.Add(1)
	if st.routes != nil {
		return tcpproxy.Admission{Router: st.router, Done: s.tcpDone(l, release)}
	}
	return tcpproxy.Admission{Proxy: st.proxy, Done: s.tcpDone(l, release)}
}

// acceptFailing logs the first failed accept of an episode (not each).
func (s *Server) acceptFailing(l *listener, err error) {
	s.log.Warn("accept failed, backing off", zap.String("listener", l.state.Load().name), zap.Error(err),
		zap.Bool("temporary", isTemporaryAcceptErr(err)))
}

// Accept back-off bounds: a temporary error (out of descriptors) doubles the
// wait from min to max, so a starved process neither spins nor stalls long
// once descriptors free up.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// acceptLoop accepts a listener's connections, admits them (admission.go)
// and hands each to an event loop, which connects to the backend
// (tcpproxy.StartInLoop), or, when the listener reads a PROXY header or
// routes on the server name first, to a starter (startTCP), until the
// listener closes. A plain listener, and one that routes on the server
// name without PROXY headers, has none: an event loop accepts on it (serve,
// tcpproxy.ListenInLoop), and reads the hello itself.
//
// Accepting costs accept4, epoll_ctl (Go's poller), getsockname (Go records
// the local address) and setsockopt TCP_NODELAY per connection; keep-alive
// is inherited from the listening socket (tcpListenConfig). The
// getsockname cannot be saved while tcpproxy takes a *net.TCPConn: a
// listener's RawConn cannot wait to read (its Read returns EINVAL), and a
// socket accepted by hand becomes a *net.TCPConn only through net.FileConn,
// measured at 9 more syscalls per connection than AcceptTCP (three fcntl,
// one of them the dup, two getsockopt, a getpeername, two epoll_ctl and a
// close; the getsockname stays).
func (s *Server) acceptLoop(l *listener) {
	defer close(l.done)
	defer close(l.starts) // the waiting starters return
	var backoff time.Duration
	var failures int
	for {
		c, err := l.tcp.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if l.waitResume() {
				continue
			}
			if backoff == 0 {
				backoff = acceptBackoffMin
				s.acceptFailing(l, err) // once per episode, not per failed accept
			} else if backoff *= 2; backoff > acceptBackoffMax {
				backoff = acceptBackoffMax
			}
			failures++
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-l.closing:
				t.Stop()
				return
			}
			continue
		}
		if backoff != 0 {
			s.log.Info("accepting again", zap.String("listener", l.state.Load().name), zap.Int("failed_accepts", failures))
			backoff, failures = 0, 0
		}
		ra, _ := c.RemoteAddr().(*net.TCPAddr)
		if ra == nil {
			c.Close()
			continue
		}
		s.accepted(l, c, ra.AddrPort())
	}
}

// accepted admits a connection accepted on l (admission.go) and hands it
// to an event loop, which connects to the backend (tcpproxy.StartInLoop),
// or, when the listener reads a PROXY header or routes on the server name
// first, to a starter (startTCP). It runs on the accept loop, or on the
// event loop that accepted and handed the connection off.
func (s *Server) accepted(l *listener, c *net.TCPConn, peer netip.AddrPort) {
	st := l.state.Load()
	release, reason := st.gate.admitTCP(l, peer) // admission.go
	if reason != 0 {
		c.Close()
		return
	}
	l.active.Add(1)
	s.conns.Add(1)
	// A plain listener (no PROXY header to read, no ClientHello to
	// route on) hands the client to an event loop, which connects to
	// the backend without blocking (tcpproxy.StartInLoop): no goroutine
	// hand-off per connection.
	if st.routes == nil && release != nil && st.proxy.StartInLoop(s.killCtx, c, peer, s.tcpDone(l, release)) {
		return
	}
	s.startTCP(l, tcpStart{st, c, peer, release})
}

// tcpDone is what a TCP connection does when it ends: it releases its
// admission and counts it out of the listener and the server.
func (s *Server) tcpDone(l *listener, release func()) func(tcpproxy.End) {
	return func(tcpproxy.End) {
		release()
		l.active.Add(-1)
		s.conns.Done()
	}
}

// tcpStart is an accepted connection handed from the accept loop to the
// goroutine that sets it up (handleTCP).
type tcpStart struct {
	st      *listenerState
	c       *net.TCPConn
	peer    netip.AddrPort
	release func()
}

// maxWaitingStarters bounds the starters a listener keeps waiting for work
// after a burst; the ones beyond it exit. Their stacks are the memory such
// a pool holds (the runtime shrinks the stack of one that waits through
// garbage collections).
const maxWaitingStarters = 16

// startTCP hands an accepted connection to a starter goroutine: one that
// waits for work if there is one, else a new one. The accept loop never
// dials itself, so a backend slow to answer a connect (up to
// connect_timeout) delays only its own connections, never accepts.
//
// A starter runs handleTCP for one connection after another. Its stack
// has grown to what the dial needs (Go's net package is a deep call chain)
// and stays grown, where a goroutine per connection started small, grew
// its stack by copying it during every dial and freed it at exit: about 4 %
// of lbctl's CPU on short connections. Handing the connection to a waiting
// starter costs the same wake-up as starting a goroutine.
func (s *Server) startTCP(l *listener, j tcpStart) {
	select {
	case l.starts <- j:
	default:
		go s.starter(l, j)
	}
}

// starter runs handleTCP for j, then for each connection startTCP hands
// it, until the accept loop returns or enough others wait.
func (s *Server) starter(l *listener, j tcpStart) {
	for {
		s.handleTCP(l, j.st, j.c, j.peer, j.release)
		j = tcpStart{} // hold nothing of the last connection while waiting
		if l.waiting.Add(1) > maxWaitingStarters {
			l.waiting.Add(-1)
			return
		}
		var ok bool
		j, ok = <-l.starts
		l.waiting.Add(-1)
		if !ok {
			return
		}
	}
}

// pause makes the accept loop stop accepting, without closing the socket:
// its deadline is put in the past, so a waiting Accept returns, and the
// loop then waits for resume (waitResume). It returns a channel closed
// once the loop waits, or has returned.
func (l *listener) pause() <-chan struct{} {
	if l.loop != nil {
		return l.loop.Pause() // closed once the loop accepts no more
	}
	l.pauseMu.Lock()
	if l.paused == nil {
		l.paused, l.parked = make(chan struct{}), make(chan struct{})
	}
	parked := l.parked
	l.pauseMu.Unlock()
	l.tcp.SetDeadline(time.Unix(1, 0))
	return parked
}

// resume undoes pause: the accept loop accepts again.
func (l *listener) resume() {
	if l.loop != nil {
		l.loop.Resume()
		return
	}
	l.tcp.SetDeadline(time.Time{})
	l.pauseMu.Lock()
	ch := l.paused
	l.paused = nil
	l.pauseMu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// waitResume is called by the accept loop after a failed Accept: when the
// listener is paused it reports that it waits (parked), waits until resume
// or close, and returns true; else it returns false at once.
func (l *listener) waitResume() bool {
	l.pauseMu.Lock()
	resume, parked := l.paused, l.parked
	if resume != nil {
		select {
		case <-parked:
		default:
			close(parked)
		}
	}
	l.pauseMu.Unlock()
	if resume == nil {
		return false
	}
	select {
	case <-resume:
	case <-l.closing:
	}
	return true
}

// handleTCP sets up one connection, on a starter goroutine (startTCP). It
// returns once an event loop took the connection, or the bytes are
// flowing (tcpproxy carries on), so the starter
// is free for the next connection and no stack grown for the dial is kept
// for the life of a connection.
//
// client is the peer; release is nil when the listener takes PROXY
// headers: the header is read first, and the client it names admitted
// (admitTCP).
func (s *Server) handleTCP(l *listener, st *listenerState, c *net.TCPConn, client netip.AddrPort, release func()) {
	if release == nil {
		if client, release = s.admitProxied(l, st, c, client); release == nil {
			c.Close()
			l.active.Add(-1)
			s.conns.Done()
			return
		}
	}
	done := s.tcpDone(l, release)
	proxy, pre := st.proxy, (*tcpproxy.Prelude)(nil)
	if st.routes != nil {
		if proxy, pre = s.inspect(st, c, client); proxy == nil { // tlsroute.go; counted
			c.Close()
			done(0) // no End: the connection never reached a proxy
			return
		}
	}
	// The header or hello read, an event loop connects as for a plain
	// listener, with the hello to write first (tcpproxy.StartInLoopWith);
	// the dial is made here when no loop can (or the hello is large).
	if !proxy.StartInLoopWith(s.killCtx, c, client, pre, done) {
		proxy.StartWith(s.killCtx, c, client, pre, done)
	}
}
