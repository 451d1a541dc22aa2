package server

import (
	"net"
	"net/netip"
	"time"

	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/proxyheader"
	"go.uber.org/zap"
)

// The TCP accept path, and the PROXY protocol on both sides of lbctl.
//
// A connection is admitted before any backend is dialed (admission.go). On
// a listener with accept_proxy_protocol the accept loop checks
// max_connections and that the peer is one of trusted_proxies; the
// connection's goroutine then reads the header (proxy_protocol_timeout),
// and the client it names goes through the access list and the per-client
// limits. A refused connection is closed at once and counted under its
// reason. The header is read off the raw *net.TCPConn by pkg/proxyheader,
// which takes exactly the header's bytes, so the connection still splices
// afterwards.
// The header's source address is the client from then on: ACLs, per-client
// limits, ip-hash and the access log all see it. A LOCAL header (a health
// check from the proxy itself) leaves the peer as the client.
//
// Toward backends, a pool's proxy_protocol ("v1" | "v2") makes tcpproxy
// write a header carrying that client before the first payload byte
// (proxyHeaderFunc).

// admitProxied reads the PROXY header of a connection from a trusted peer,
// then admits the client it names (gate.admitClient). release is nil when
// the connection was refused (counted; the caller closes c).
func (s *Server) admitProxied(l *listener, st *listenerState, c *net.TCPConn, peer netip.AddrPort) (client netip.AddrPort, release func()) {
	h, err := proxyheader.ReadContext(s.killCtx, c, time.Now().Add(st.cfg.ProxyProtocolTimeout))
	if err != nil {
		st.rej.Inc(metrics.ReasonProxyProtocol)
		s.log.Debug("connection without a valid PROXY header refused",
			zap.String("listener", st.name), zap.Stringer("peer", peer), zap.Error(err))
		return peer, nil
	}
	client = peer
	if !h.Local {
		client = h.Source
	}
	release, _ = st.gate.admitClient(l, client.Addr(), nil)
	return client, release
}

// proxyHeaderFunc returns the PROXY header builder for a pool's
// proxy_protocol setting, nil for "none": tcpproxy writes the header once
// before the data, udpproxy in front of every datagram of a session. Only
// v2 can carry UDP (the config rejects v1 on a pool a udp listener uses).
func proxyHeaderFunc(version string, udp bool) func(client, local netip.AddrPort) []byte {
	switch {
	case version == "v1" && !udp:
		return func(client, local netip.AddrPort) []byte {
			return proxyheader.AppendV1(make([]byte, 0, proxyheader.MaxV1Length), client, local)
		}
	case version == "v2":
		return func(client, local netip.AddrPort) []byte {
			return proxyheader.AppendV2(make([]byte, 0, 52), client, local, udp)
		}
	}
	return nil
}
