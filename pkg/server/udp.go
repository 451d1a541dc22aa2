package server

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/udpproxy"
	"go.uber.org/zap"
)

// UDP listeners. The listener socket is read by one goroutine
// (udpproxy.Listener) that keeps the session table across reloads; each new
// session takes the udpproxy.Proxy of the listenerState in force, and open
// sessions keep theirs.
//
// Admission is the same gate as TCP's (admission.go), asked once per new
// session; when the listener's client table is full, it has udpproxy
// evict a session to make room for a new client.
//
// Shutdown, and a reload that removes the listener, drain a UDP listener:
// it stops opening sessions, but its socket stays open while the open
// sessions finish, since their replies leave through it. The socket closes
// once the last session has ended, or at the deadline, which ends the
// rest: the shutdown deadline, and for a removed listener also
// shutdown_timeout after the reload. A removed listener does not hold up
// the reload, nor its address: a listener a later reload binds to an
// address that overlaps it takes the address at once, ending the sessions
// still draining there (freeUDPAddr).

// udpSocketBuffer is the receive and send buffer asked for the listener
// socket, so bursts are not dropped; the kernel caps it (net.core.rmem_max).
const udpSocketBuffer = 4 << 20

func (s *Server) buildUDPProxy(lc *config.Listener, p *pool, st *listenerState, accessLog bool, tb *targetBuild) (*udpproxy.Proxy, error) {
	targets := make(map[*balancer.Backend]*udpproxy.Target, len(p.backends))
	for _, be := range p.backends {
		targets[be.b] = tb.udpTarget(s, be, lc.Name)
	}
	var access *zap.Logger
	if accessLog {
		access = s.log.Named("access")
	}
	u, err := udpproxy.New(udpproxy.Config{
		Listener:         lc.Name,
		PoolName:         p.name,
		Pool:             p.bal,
		Targets:          targets,
		IdleTimeout:      lc.IdleTimeout,
		UnrepliedTimeout: lc.UnrepliedTimeout,
		Responses:        lc.Responses,
		Header:           proxyHeaderFunc(p.cfg.ProxyProtocol, true),
		Rejections:       st.rej,
		Passive:          p,
		Log:              s.log,
		Access:           access,
		Durations:        s.m.ForDurations(lc.Name),
	})
	if err != nil {
		return nil, fmt.Errorf("udp proxy: %w", err)
	}
	return u, nil
}

func (s *Server) bindUDP(lc *config.Listener) (*net.UDPConn, error) {
	if inh, err := s.inheritedUDP(lc.Bind); err != nil || inh != nil {
		return inh, err
	}
	var lcfg net.ListenConfig
	pc, err := lcfg.ListenPacket(context.Background(), "udp", lc.Bind)
	if err != nil {
		return nil, err
	}
	uc := pc.(*net.UDPConn)
	// Best effort: the kernel caps the sizes, and a smaller buffer works.
	_ = uc.SetReadBuffer(udpSocketBuffer)
	_ = uc.SetWriteBuffer(udpSocketBuffer)
	return uc, nil
}

// serveUDP reads the listener socket until it is closed: by drainUDP once
// the listener has drained, or by l.close(). It returns, and closes l.done,
// once every session of the listener has ended.
//
// With Options.HoldUDP (the new process of an upgrade), the listener does
// not read until ReleaseUDP (handover_udp.go).
func (s *Server) serveUDP(l *listener) {
	s.udpMu.Lock()
	ul := s.udpListenerFor(l) // made here, or by AdoptUDP just before
	s.udpMu.Unlock()
	defer func() {
		// Under s.udpMu, so that AdoptUDP makes no Listener for l
		// once this one is gone.
		s.udpMu.Lock()
		delete(s.udpLs, l)
		close(l.done)
		s.udpMu.Unlock()
	}()
	served := make(chan struct{})
	defer close(served)
	go s.drainUDP(l, ul, served)
	ul.Serve()
}

// drainUDP closes a UDP listener's socket once it has drained. When
// Shutdown begins (s.udpDrain) or a reload removes the listener
// (l.removed), the listener stops opening sessions; its socket closes once
// the last open session has ended, or at the shutdown deadline
// (s.killCtx), or, for a removed listener, l.drainFor after the reload,
// whichever comes first. It returns without closing anything once served
// is closed (the socket was closed otherwise).
func (s *Server) drainUDP(l *listener, ul *udpproxy.Listener, served <-chan struct{}) {
	var deadline <-chan time.Time
	select {
	case <-s.udpDrain:
	case <-l.removed:
		t := time.NewTimer(l.drainFor)
		defer t.Stop()
		deadline = t.C
	case <-served:
		return
	}
	select {
	case <-ul.Drain():
	case <-s.killCtx.Done():
	case <-deadline:
		s.log.Info("udp listener removed by a reload: shutdown_timeout reached, ending its sessions",
			zap.String("listener", l.state.Load().name), zap.Int64("sessions", l.active.Load()))
	case <-served:
		return
	}
	l.udp.Close()
}

// removeUDP takes a UDP listener that a reload removed out of service
// without ending its sessions (drainUDP): they may run on for drain at
// most. It does not wait. Called with s.mu held.
func (s *Server) removeUDP(l *listener, drain time.Duration) {
	s.forgetDrained()
	l.drainFor = drain
	close(l.removed)
	s.removed[l] = struct{}{}
}

// freeUDPAddr closes the removed UDP listeners still draining on an
// address that bind overlaps, ending their sessions, so that a listener can
// bind there. Called with s.mu held.
func (s *Server) freeUDPAddr(bind string) {
	s.forgetDrained()
	want, err := netip.ParseAddrPort(bind)
	if err != nil {
		return // not an IP:port: config.Parse renders every bind to one
	}
	for l := range s.removed {
		if overlaps(l.udp.LocalAddr().(*net.UDPAddr).AddrPort(), want) {
			l.close()
			delete(s.removed, l)
		}
	}
}

// forgetDrained drops the removed UDP listeners that have drained from
// s.removed. Called with s.mu held.
func (s *Server) forgetDrained() {
	for l := range s.removed {
		select {
		case <-l.done:
			delete(s.removed, l)
		default:
		}
	}
}

// overlaps reports whether two UDP sockets bound to a and b would take
// each other's address: the same port (not 0), and the same IP or a
// wildcard that covers the other.
func overlaps(a, b netip.AddrPort) bool {
	if a.Port() != b.Port() || a.Port() == 0 {
		return false
	}
	x, y := a.Addr().Unmap(), b.Addr().Unmap()
	covers := func(w, o netip.Addr) bool { return w.IsUnspecified() && (w.Is6() || o.Is4()) }
	return x == y || covers(x, y) || covers(y, x)
}
