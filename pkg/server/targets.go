package server

// targets.go: the proxies' per-backend targets. A target holds a
// backend's address, its metric handles for one listener and its registry
// of live connections; it is made once per backend and listener and reused
// by every generation, so a refresh of a large pool resolves no metric
// series for the backends that stay.

import (
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"github.com/lbctl/lbctl/pkg/udpproxy"
)

// targetBuild collects the targets made while building a runtime: adopt
// keeps them once it is committed, forget deletes the series they created
// when the build is abandoned.
type targetBuild struct {
	tcp []pendingTarget[tcpproxy.Target]
	udp []pendingTarget[udpproxy.Target]
}

type pendingTarget[T any] struct {
	be       *backend
	listener string
	t        *T
}

// tcpTarget returns be's target for listener, made now if it has none.
func (tb *targetBuild) tcpTarget(s *Server, be *backend, listener string) *tcpproxy.Target {
	if t := be.tcpTargets[listener]; t != nil {
		return t
	}
	t := &tcpproxy.Target{Addr: be.addr, Metrics: s.m.ForTCP(listener, be.pool, be.b.Address()), Conns: &be.tcpConns}
	tb.tcp = append(tb.tcp, pendingTarget[tcpproxy.Target]{be, listener, t})
	return t
}

// udpTarget returns be's target for listener, made now if it has none.
func (tb *targetBuild) udpTarget(s *Server, be *backend, listener string) *udpproxy.Target {
	if t := be.udpTargets[listener]; t != nil {
		return t
	}
	t := &udpproxy.Target{Addr: be.addr, Metrics: s.m.ForUDP(listener, be.pool, be.b.Address()), Sessions: &be.udpConns}
	tb.udp = append(tb.udp, pendingTarget[udpproxy.Target]{be, listener, t})
	return t
}

// adopt keeps the targets made by the build. Called with s.mu held.
func (tb *targetBuild) adopt() {
	for _, p := range tb.tcp {
		if p.be.tcpTargets == nil {
			p.be.tcpTargets = map[string]*tcpproxy.Target{}
		}
		p.be.tcpTargets[p.listener] = p.t
	}
	for _, p := range tb.udp {
		if p.be.udpTargets == nil {
			p.be.udpTargets = map[string]*udpproxy.Target{}
		}
		p.be.udpTargets[p.listener] = p.t
	}
	tb.tcp, tb.udp = nil, nil
}

// forget deletes the series of the targets made by an abandoned build.
func (tb *targetBuild) forget(s *Server) {
	for _, p := range tb.tcp {
		s.m.ForgetBackend(p.listener, p.be.pool, p.be.b.Address())
	}
	for _, p := range tb.udp {
		s.m.ForgetBackend(p.listener, p.be.pool, p.be.b.Address())
	}
	tb.tcp, tb.udp = nil, nil
}

// dropTargets forgets the targets and series of listener on every backend
// of lp: the listener left, or now uses another pool or protocol.
func (s *Server) dropTargets(lp *livePool, listener string) {
	for _, be := range lp.byAddr {
		_, t := be.tcpTargets[listener]
		_, u := be.udpTargets[listener]
		if t || u {
			delete(be.tcpTargets, listener)
			delete(be.udpTargets, listener)
			s.m.ForgetBackend(listener, be.pool, be.b.Address())
		}
	}
}
