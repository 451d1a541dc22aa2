package server

// tlsroute.go: routing TLS connections by server name, without
// terminating TLS. A tcp listener with [[listeners.NAME.routes]] reads
// each connection's ClientHello (package tlshello) after admission: in
// the event loop that accepted it (tcpproxy's hello_linux.go, through
// helloRouter), or, for a listener that reads PROXY headers first (or
// where there are no loops), on a starter goroutine (inspect). A client
// that sends its hello slowly, or never, holds only its connection and
// the bytes it sent, never the accept loop, and is closed at
// tls_inspect_timeout. The first route whose names (and ALPN, when given)
// match picks the pool; the listener's pool takes the rest. The pool's
// proxy then connects to one of its backends as for any connection
// (balancer, health, connection counts, retries) and writes the hello's
// bytes to it, unchanged, before proxying as usual: bulk data still
// splices.
//
// Each route holds a proxy over one generation of its pool. The route
// table is part of the listenerState, so a reload or a pool's refresh
// swaps it with one atomic store like everything else: established
// connections keep the proxy they started with.

import (
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"github.com/lbctl/lbctl/tlshello"
	"go.uber.org/zap"
)

// routeTable is one generation of a listener's routes.
type routeTable struct {
	timeout time.Duration // tls_inspect_timeout
	routes  []route       // in the order written
}

// route is one route over one generation of its pool.
type route struct {
	cfg   *config.Route
	pool  *pool
	proxy *tcpproxy.Proxy
}

// planGens looks up the generation a reload plans for each pool.
func planGens(plans map[string]*poolPlan) func(string) *pool {
	return func(name string) *pool {
		if pl := plans[name]; pl != nil {
			return pl.gen
		}
		return nil
	}
}

// buildRoutes builds st's route table from its config, each route over
// the generation gens gives for its pool.
func (s *Server) buildRoutes(st *listenerState, gens func(string) *pool, accessLog bool, tb *targetBuild) error {
	lc := st.cfg
	if lc.Protocol != "tcp" || lc.Routes == nil {
		return nil
	}
	rt := &routeTable{timeout: lc.TLSInspectTimeout, routes: make([]route, len(lc.Routes))}
	for i := range lc.Routes {
		rc := &lc.Routes[i]
		p := gens(rc.Pool)
		if p == nil {
			return errors.New("route to unknown pool " + rc.Pool)
		}
		proxy, err := s.routeProxy(st, p, accessLog, tb)
		if err != nil {
			return err
		}
		rt.routes[i] = route{cfg: rc, pool: p, proxy: proxy}
	}
	st.routes = rt
	return nil
}

// routeProxy builds a proxy for st's connections over generation p, the
// one buildProxy would build for a listener served by p.
func (s *Server) routeProxy(st *listenerState, p *pool, accessLog bool, tb *targetBuild) (*tcpproxy.Proxy, error) {
	tmp := &listenerState{name: st.name, cfg: st.cfg, rej: st.rej}
	if err := s.buildProxy(tmp, p, accessLog, tb); err != nil {
		return nil, err
	}
	return tmp.proxy, nil
}

// rebuildRoutes returns rt with every route over p's pool moved to
// generation p (a refresh); the other routes keep their proxies.
func (s *Server) rebuildRoutes(st *listenerState, rt *routeTable, p *pool, accessLog bool, tb *targetBuild) (*routeTable, error) {
	if rt == nil {
		return nil, nil
	}
	nt := &routeTable{timeout: rt.timeout, routes: make([]route, len(rt.routes))}
	copy(nt.routes, rt.routes)
	for i := range nt.routes {
		r := &nt.routes[i]
		if r.pool.live != p.live {
			continue
		}
		proxy, err := s.routeProxy(st, p, accessLog, tb)
		if err != nil {
			return nil, err
		}
		r.pool, r.proxy = p, proxy
	}
	return nt, nil
}

// uses reports whether st sends connections to live pool lp, as its pool
// or through a route.
func (st *listenerState) uses(lp *livePool) bool {
	if st.pool != nil && st.pool.live == lp {
		return true
	}
	if st.routes != nil {
		for _, r := range st.routes.routes {
			if r.pool.live == lp {
				return true
			}
		}
	}
	return false
}

// poolName is the listener's pool, "" when only routes serve it.
func (st *listenerState) poolName() string {
	if st.pool == nil {
		return ""
	}
	return st.pool.name
}

// inspect reads c's ClientHello and picks the proxy that serves it: the
// first matching route's, else the listener pool's. It returns a nil
// proxy when the connection must be closed: no complete, valid hello in
// time (counted as tls_inspect), or no match and no pool (no_route).
// Runs on the connection's goroutine.
func (s *Server) inspect(st *listenerState, c *net.TCPConn, client netip.AddrPort) (*tcpproxy.Proxy, *tcpproxy.Prelude) {
	h, err := tlshello.ReadContext(s.killCtx, c, time.Now().Add(st.routes.timeout), func() { c.Close() })
	if err != nil {
		st.router.Refused(err, client)
		return nil, nil
	}
	p := st.router.Route(h, client)
	if p == nil {
		return nil, nil
	}
	return p, &tcpproxy.Prelude{Data: h.Raw, SNI: h.ServerName}
}

// helloRouter routes a listener generation's connections on their
// ClientHello: for an event loop that read it (tcpproxy.HelloRouter), and
// for inspect. Its methods only count and log: they never block.
type helloRouter struct {
	s  *Server
	st *listenerState
}

// setRouter gives st its router when it has routes.
func (st *listenerState) setRouter(s *Server) {
	if st.routes != nil {
		st.router = &helloRouter{s: s, st: st}
	}
}

// InspectTimeout is tls_inspect_timeout.
func (r *helloRouter) InspectTimeout() time.Duration { return r.st.routes.timeout }

// Route picks the proxy for hello h: the first matching route's, else
// the listener pool's; nil, counted as no_route, when there is neither.
func (r *helloRouter) Route(h *tlshello.Hello, client netip.AddrPort) *tcpproxy.Proxy {
	st := r.st
	for i := range st.routes.routes {
		if rt := &st.routes.routes[i]; rt.cfg.Match(h.ServerName, h.ALPN) {
			return rt.proxy
		}
	}
	if st.proxy == nil {
		st.rej.Inc(metrics.ReasonNoRoute)
		r.s.log.Debug("TLS connection matched no route",
			zap.String("listener", st.name), zap.Stringer("client", client), zap.String("sni", h.ServerName))
	}
	return st.proxy
}

// Refused counts and logs a connection without a complete, valid hello
// in time, closed as tls_inspect.
func (r *helloRouter) Refused(err error, client netip.AddrPort) {
	r.st.rej.Inc(metrics.ReasonTLSInspect)
	r.s.log.Debug("connection without a valid TLS ClientHello refused",
		zap.String("listener", r.st.name), zap.Stringer("client", client), zap.Error(err))
}

// dropLeftTargets forgets the series listener ol had with each pool it
// no longer uses after a reload (nl is its new config, nil when it left).
func (s *Server) dropLeftTargets(ol, nl *config.Listener) {
	keep := map[string]bool{}
	if nl != nil && nl.Protocol == ol.Protocol {
		for _, name := range listenerPools(nl) {
			keep[name] = true
		}
	}
	for _, name := range listenerPools(ol) {
		if lp := s.pools[name]; lp != nil && !keep[name] {
			s.dropTargets(lp, ol.Name)
		}
	}
}

// listenerPools names every pool lc sends connections to.
func listenerPools(lc *config.Listener) []string {
	var out []string
	if lc.Pool != "" {
		out = append(out, lc.Pool)
	}
	for _, r := range lc.Routes {
		out = append(out, r.Pool)
	}
	return out
}

// RouteStatus describes one route of a listener in the status JSON.
type RouteStatus struct {
	SNI      []string `json:"sni,omitempty"`
	SNIRegex string   `json:"sni_regex,omitempty"`
	ALPN     []string `json:"alpn,omitempty"`
	Pool     string   `json:"pool"`
}

// routeStatus lists st's routes; nil without routes.
func (st *listenerState) routeStatus() []RouteStatus {
	if st.routes == nil {
		return nil
	}
	out := make([]RouteStatus, len(st.routes.routes))
	for i, r := range st.routes.routes {
		out[i] = RouteStatus{SNI: r.cfg.SNI, SNIRegex: r.cfg.SNIRegexSource, ALPN: r.cfg.ALPN, Pool: r.pool.name}
	}
	return out
}
