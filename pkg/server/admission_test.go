package server

import (
	"net/netip"
	"testing"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// gateFor returns a gate over lc and a listener for its counters.
func gateFor(t *testing.T, protocol string, lc *config.Listener) (*gate, *listener, *metrics.Metrics) {
	t.Helper()
	m := metrics.New(prometheus.NewRegistry())
	lc.Name, lc.Protocol = "l", protocol
	return newGate(lc, m.ForListener(protocol, "l"), zap.NewNop()), &listener{protocol: protocol}, m
}

// TestGateOrder: the checks run in the order admission.go gives, for TCP
// and UDP alike, and a connection refused by an earlier one leaves no
// trace in a later one.
func TestGateOrder(t *testing.T) {
	client := netip.MustParseAddr("10.0.0.1")
	peer := netip.AddrPortFrom(client, 40000)
	for _, protocol := range []string{"tcp", "udp"} {
		// admit asks g about one connection of client and returns the
		// reason counted when it is refused.
		admit := func(g *gate, l *listener, m *metrics.Metrics) metrics.Reason {
			before := refusals(m)
			var release func()
			if protocol == "udp" {
				release = g.admitUDP(l, client, nil)
			} else {
				release, _ = g.admitTCP(l, peer)
			}
			after := refusals(m)
			for r, n := range after {
				if n != before[r] {
					if release != nil || n != before[r]+1 {
						t.Fatalf("%v: %v refusals after %v, release %v", r, n, before[r], release != nil)
					}
					return r
				}
			}
			if release == nil {
				t.Fatal("refused, and no refusal counted")
			}
			return 0
		}
		t.Run(protocol+": max_connections before the client's token", func(t *testing.T) {
			g, l, m := gateFor(t, protocol, &config.Listener{MaxConnections: 1, ConnectionRatePerClient: 0.001, ConnectionBurstPerClient: 1})
			l.active.Store(1)
			if r := admit(g, l, m); r != metrics.ReasonMaxConnections {
				t.Fatalf("at max_connections: %v", r)
			}
			l.active.Store(0)
			if r := admit(g, l, m); r != 0 {
				t.Fatalf("below max_connections: %v (the refusal spent the client's only token)", r)
			}
			if r := admit(g, l, m); r != metrics.ReasonRateLimit {
				t.Fatalf("with the token spent: %v", r)
			}
		})
		t.Run(protocol+": the access list before the client table", func(t *testing.T) {
			g, l, m := gateFor(t, protocol, &config.Listener{Deny: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, MaxConnectionsPerClient: 1})
			if r := admit(g, l, m); r != metrics.ReasonACL {
				t.Fatalf("denied client: %v", r)
			}
			if n := l.clients.size(); n != 0 {
				t.Errorf("a denied client has an entry in the client table (%d entries)", n)
			}
		})
		t.Run(protocol+": per-client limit", func(t *testing.T) {
			g, l, m := gateFor(t, protocol, &config.Listener{MaxConnectionsPerClient: 1})
			if r := admit(g, l, m); r != 0 {
				t.Fatalf("first connection: %v", r)
			}
			if r := admit(g, l, m); r != metrics.ReasonClientLimit {
				t.Fatalf("second connection: %v", r)
			}
		})
	}
}

// refusals reads the rejection counters of listener "l".
func refusals(m *metrics.Metrics) map[metrics.Reason]float64 {
	out := map[metrics.Reason]float64{}
	for r := metrics.ReasonMaxConnections; r.String() != ""; r++ {
		out[r] = counter(m.Rejected.WithLabelValues("l", r.String()))
	}
	return out
}

// TestGateProxyPeer: on a listener that takes PROXY headers the accept
// loop checks max_connections, then that the peer is a trusted proxy, and
// leaves the client's checks to the header's source (release nil).
func TestGateProxyPeer(t *testing.T) {
	g, l, _ := gateFor(t, "tcp", &config.Listener{MaxConnections: 1, AcceptProxyProtocol: true,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, MaxConnectionsPerClient: 1})
	trusted, untrusted := netip.MustParseAddrPort("127.0.0.1:1000"), netip.MustParseAddrPort("127.0.0.2:1000")
	for _, tc := range []struct {
		name   string
		peer   netip.AddrPort
		active int64
		want   metrics.Reason
	}{
		{"at max_connections", trusted, 1, metrics.ReasonMaxConnections},
		{"untrusted peer", untrusted, 0, metrics.ReasonProxyProtocol},
		{"trusted peer", trusted, 0, 0},
		{"trusted peer again (no per-client limit on the proxy)", trusted, 0, 0},
	} {
		l.active.Store(tc.active)
		release, reason := g.admitTCP(l, tc.peer)
		if reason != tc.want || release != nil {
			t.Errorf("%s: reason %v, release %v; want %v, no release", tc.name, reason, release != nil, tc.want)
		}
	}
	client := netip.MustParseAddr("203.0.113.9")
	if release, reason := g.admitClient(l, client, nil); release == nil || reason != 0 {
		t.Fatalf("the header's client: %v", reason)
	}
	if _, reason := g.admitClient(l, client, nil); reason != metrics.ReasonClientLimit {
		t.Fatalf("the header's client again: %v, want client_limit", reason)
	}
}

// TestGateEvictsForNewClientsOnly: on a full client table a UDP session
// has another evicted only for a client the access list admits and that
// has no entry yet.
func TestGateEvictsForNewClientsOnly(t *testing.T) {
	g, l, _ := gateFor(t, "udp", &config.Listener{MaxConnectionsPerClient: 1,
		Deny: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}})
	l.clients.max = 2
	evictions := 0
	var held []func()
	evict := func() bool {
		evictions++
		held[0]() // the evicted session's release
		held = held[1:]
		return true
	}
	for _, a := range []string{"10.0.0.1", "10.0.0.2"} {
		release := g.admitUDP(l, netip.MustParseAddr(a), evict)
		if release == nil {
			t.Fatalf("%s refused", a)
		}
		held = append(held, release)
	}
	for _, tc := range []struct {
		client    string
		admitted  bool
		evictions int
	}{
		{"10.9.0.1", false, 0}, // denied
		{"10.0.0.2", false, 0}, // at its limit
		{"10.0.0.3", true, 1},  // new: 10.0.0.1's session makes room
	} {
		release := g.admitUDP(l, netip.MustParseAddr(tc.client), evict)
		if (release != nil) != tc.admitted || evictions != tc.evictions {
			t.Errorf("%s: admitted %v after %d evictions; want %v after %d", tc.client, release != nil, evictions, tc.admitted, tc.evictions)
		}
	}
}
