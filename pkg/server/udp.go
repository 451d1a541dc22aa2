package server

import (
	"context"
	"fmt"
	"net"
	"net/netip"

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
// Shutdown drains a UDP listener: it stops opening sessions, but its socket
// stays open while the open sessions finish, since their replies leave
// through it; the socket closes once the last session has ended, or at the
// shutdown deadline, which ends the rest.

// udpSocketBuffer is the receive and send buffer asked for the listener
// socket, so bursts are not dropped; the kernel caps it (net.core.rmem_max).
const udpSocketBuffer = 4 << 20

func (s *Server) buildUDPProxy(lc *config.Listener, p *pool, st *listenerState, accessLog bool) (*udpproxy.Proxy, error) {
	targets := make(map[*balancer.Backend]*udpproxy.Target, len(p.backends))
	for i, be := range p.backends {
		targets[be.b] = &udpproxy.Target{Addr: p.addrs[i], Metrics: s.m.ForUDP(lc.Name, p.name, be.b.Address())}
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

// serveUDP reads the listener socket until it is closed: by l.close() (a
// reload removed the listener), or by drainUDP at shutdown. It returns, and
// closes l.done, once every session of the listener has ended.
func (s *Server) serveUDP(l *listener) {
	defer close(l.done)
	ul := &udpproxy.Listener{
		Conn: l.udp,
		Proxy: func() *udpproxy.Proxy {
			if st := l.state.Load(); st != nil {
				return st.udp
			}
			return nil
		},
		Sessions: &l.active,
		// Once per new session, with the generation in force.
		Admit: func(client netip.Addr, evict func() bool) func() {
			return l.state.Load().gate.admitUDP(l, client, evict)
		},
	}
	served := make(chan struct{})
	defer close(served)
	go s.drainUDP(l, ul, served)
	ul.Serve()
}

// drainUDP closes a UDP listener's socket at shutdown: once its last
// session has ended, or at the shutdown deadline (s.killCtx), whichever
// comes first. Until then new sessions are refused and open ones carry on.
// It returns without closing anything once served is closed (the socket
// was closed otherwise).
func (s *Server) drainUDP(l *listener, ul *udpproxy.Listener, served <-chan struct{}) {
	select {
	case <-s.udpDrain:
	case <-served:
		return
	}
	select {
	case <-ul.Drain():
	case <-s.killCtx.Done():
	case <-served:
		return
	}
	l.udp.Close()
}
