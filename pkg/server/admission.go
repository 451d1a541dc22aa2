package server

import (
	"net/netip"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/metrics"
	"go.uber.org/zap"
)

// Admission: whether a new TCP connection or UDP session may open on a
// listener, decided before any backend is picked. The checks, in this
// order; the first that fails refuses the connection (TCP: closed at once;
// UDP: the datagram is dropped), which is counted under its reason in
// lbctl_connections_rejected_total:
//
//  1. max_connections ("max_connections"): the listener's open connections
//     or sessions, all generations together (listener.active). It comes
//     first because it does not depend on the client: a connection refused
//     here spends no client's rate token.
//  2. the access list, allow and deny ("acl"): deny wins, an empty allow
//     admits everyone (acl.go).
//  3. concurrent connections per client IP, max_connections_per_client
//     ("client_limit"), also when the client table is full (below).
//  4. new connections per second per client IP,
//     connection_rate_per_client with connection_burst_per_client: a token
//     bucket holding up to burst tokens, refilled at rate per second, one
//     token per connection ("rate_limit"). A client refused by 3 spends no
//     token.
//
// 3 and 4 are one step on the listener's client table (clienttable.go). A
// client is an IP address: IPv4-mapped addresses count as IPv4, zones are
// ignored. An admitted connection holds a release, called once when it
// ends, which gives its client's slot back.
//
// Where each protocol asks:
//
//	TCP           accept loop: admitTCP(peer) = 1, 2, 3, 4 -> connection goroutine -> dial
//	TCP with      accept loop: admitTCP(peer) = 1, peer in trusted_proxies ("proxy_protocol")
//	PROXY header  goroutine:   read the header (proxyproto.go) -> admitClient(its source) = 2, 3, 4
//	UDP           reader, a client's first datagram (udpproxy.Listener.open):
//	              listener draining? (dropped, not counted) -> descriptor reserve
//	              ("max_connections", udpproxy fdbudget.go) -> Admit = admitUDP(client) =
//	              1, 2, [evict], 3, 4 -> dial
//
// UDP asks once per new session, never per datagram of an open one. The
// descriptor reserve is process-wide and does not depend on the client
// either, so it comes before the client's checks too.
//
// A full client table. On a TCP listener a new client that finds the table
// full of clients holding connections is refused (3). On a UDP listener a
// flood of spoofed source addresses would fill it with sessions nobody
// answers and lock new clients out until they expire, so when a client the
// access list admits has no entry and the table is full, the gate first has
// udpproxy evict the session least worth keeping (its backend never
// replied, else the quietest: udpproxy's package comment), whose release
// frees its client's entry. A client that already has an entry evicts
// nobody: at its own limit it would only push others out.
//
// The checks and limits in force are those of the listener's configuration
// generation (a gate per listenerState); the counters they read live on the
// listener socket and survive reloads.

// gate is one listener generation's admission: the limits and access lists
// of its configuration. Its checks read the listener's counters, passed to
// each call.
type gate struct {
	listener string           // name, for logs
	cfg      *config.Listener // allow, deny, trusted proxies, per-client limits
	maxConns int64            // max_connections; 0 = no limit
	rej      *metrics.Rejections
	log      *zap.Logger
}

func newGate(lc *config.Listener, rej *metrics.Rejections, log *zap.Logger) *gate {
	return &gate{listener: lc.Name, cfg: lc, maxConns: int64(lc.MaxConnections), rej: rej, log: log}
}

// admitTCP is the accept loop's admission of a connection from peer, on
// listener l. When refused, the rejection is counted and the caller closes
// the connection. When admitted, release is to be called once the
// connection ends; it is nil on a listener that takes PROXY headers, where
// the client is known only once the header is read: then only the peer has
// been checked, and the connection's goroutine calls admitClient with the
// client the header names.
func (g *gate) admitTCP(l *listener, peer netip.AddrPort) (release func(), reason metrics.Reason) {
	if reason := g.admitListener(l); reason != 0 {
		return nil, reason
	}
	if g.cfg.AcceptProxyProtocol {
		if !config.Match(g.cfg.TrustedProxies, peer.Addr()) {
			g.log.Debug("connection from an untrusted peer refused: PROXY headers are accepted only from trusted_proxies",
				zap.String("listener", g.listener), zap.Stringer("peer", peer))
			return nil, g.refuse(metrics.ReasonProxyProtocol)
		}
		return nil, 0
	}
	return g.admitClient(l, peer.Addr(), nil)
}

// admitUDP is the admission of a new session of client on UDP listener l
// (udpproxy.Listener.Admit, called by the listener's reader goroutine). It
// returns the session's release, or nil when refused (counted). evict ends
// one of l's sessions to make room in a full client table (see above).
func (g *gate) admitUDP(l *listener, client netip.Addr, evict func() bool) (release func()) {
	if g.admitListener(l) != 0 {
		return nil
	}
	release, _ = g.admitClient(l, client, evict)
	return release
}

// admitListener is check 1, max_connections.
func (g *gate) admitListener(l *listener) metrics.Reason {
	if g.maxConns > 0 && l.active.Load() >= g.maxConns {
		return g.refuse(metrics.ReasonMaxConnections)
	}
	return 0
}

// admitClient is checks 2 to 4 for client. evict, when not nil, makes room
// in a full client table (UDP).
func (g *gate) admitClient(l *listener, client netip.Addr, evict func() bool) (release func(), reason metrics.Reason) {
	client = client.Unmap().WithZone("")
	if !admits(g.cfg, client) {
		return nil, g.refuse(metrics.ReasonACL)
	}
	if evict != nil && l.clients.needsRoom(g.cfg, client) {
		evict() // calls the evicted session's release, which frees an entry
	}
	if release, reason = l.clients.admit(g.cfg, client); reason == 0 {
		return release, 0
	}
	g.refuse(reason)
	if reason == metrics.ReasonClientLimit && l.clients.takeFullNotice() {
		g.log.Warn("client table full: new clients refused until some leave",
			zap.String("listener", g.listener), zap.Int("clients", l.clients.capacity()))
	}
	return nil, reason
}

// refuse counts a refusal and returns its reason.
func (g *gate) refuse(reason metrics.Reason) metrics.Reason {
	g.rej.Inc(reason)
	return reason
}
