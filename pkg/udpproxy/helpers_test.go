package udpproxy_test

import (
	"bytes"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/udpproxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// rig is a udpproxy.Listener on a loopback socket in front of backends.
type rig struct {
	t        testing.TB
	m        *metrics.Metrics
	rej      *metrics.Rejections
	backends []*balancer.Backend
	targets  map[*balancer.Backend]*udpproxy.Target
	log      *zap.Logger
	logs     *observer.ObservedLogs
	passive  *passive
	cur      atomic.Pointer[udpproxy.Proxy]
	l        *udpproxy.Listener
	sessions atomic.Int64
	addr     netip.AddrPort // where clients send
	done     chan struct{}
}

// passive records ConnectFailed calls and, like lbctl's pool with
// max_fails = 1, marks the backend down.
type passive struct{ failed atomic.Int64 }

func (p *passive) ConnectFailed(b *balancer.Backend, _ error) {
	p.failed.Add(1)
	b.SetHealthy(false)
}

type rigOpts struct {
	bind      string // default 127.0.0.1:0
	algorithm string // default round-robin
	tweak     func(*udpproxy.Config)
	admit     func(client netip.Addr, evict func() bool) func() // Listener.Admit
}

// newRig serves a listener on o.bind in front of the backend addresses,
// and stops it in t.Cleanup.
func newRig(t testing.TB, o rigOpts, addrs ...string) *rig {
	t.Helper()
	if o.bind == "" {
		o.bind = "127.0.0.1:0"
	}
	core, logs := observer.New(zap.DebugLevel)
	r := &rig{t: t, m: metrics.New(prometheus.NewRegistry()), passive: &passive{}, done: make(chan struct{}),
		log: zap.New(core), logs: logs, targets: map[*balancer.Backend]*udpproxy.Target{}}
	r.rej = r.m.ForListener("udp", "udp")
	for _, a := range addrs {
		b := balancer.NewBackend(a)
		r.backends = append(r.backends, b)
		r.targets[b] = &udpproxy.Target{Addr: a, Metrics: r.m.ForUDP("udp", "pool", a)}
	}
	r.cur.Store(r.proxy(o.algorithm, o.tweak))
	ua, err := net.ResolveUDPAddr("udp", o.bind)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		t.Fatalf("listen %s: %v", o.bind, err)
	}
	r.l = &udpproxy.Listener{Conn: conn, Proxy: r.cur.Load, Sessions: &r.sessions, Admit: o.admit}
	r.addr = conn.LocalAddr().(*net.UDPAddr).AddrPort()
	if r.addr.Addr().IsUnspecified() {
		r.addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), r.addr.Port())
	}
	go func() {
		defer close(r.done)
		r.l.Serve()
	}()
	t.Cleanup(r.close)
	return r
}

// proxy builds a generation over the rig's backends.
func (r *rig) proxy(algorithm string, tweak func(*udpproxy.Config)) *udpproxy.Proxy {
	r.t.Helper()
	return r.proxyOver(r.backends, algorithm, tweak)
}

// proxyOver builds a generation over some of the rig's backends.
func (r *rig) proxyOver(backends []*balancer.Backend, algorithm string, tweak func(*udpproxy.Config)) *udpproxy.Proxy {
	r.t.Helper()
	if algorithm == "" {
		algorithm = balancer.RoundRobin
	}
	members := make([]balancer.Member, len(backends))
	for i, b := range backends {
		members[i] = balancer.Member{Backend: b, Weight: 1}
	}
	pool, err := balancer.New(algorithm, members)
	if err != nil {
		r.t.Fatal(err)
	}
	cfg := udpproxy.Config{
		Listener:    "udp",
		PoolName:    "pool",
		Pool:        pool,
		Targets:     r.targets,
		IdleTimeout: 10 * time.Second,
		Rejections:  r.rej,
		Passive:     r.passive,
		Log:         r.log,
		Access:      r.log.Named("access"),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	p, err := udpproxy.New(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	return p
}

// close closes the listener socket and waits for Serve to return.
func (r *rig) close() {
	r.l.Conn.Close()
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		r.t.Errorf("Serve did not return after the socket closed")
	}
}

// series are the metric series of one backend of the rig.
type series struct {
	DatagramsIn, DatagramsOut, BytesIn, BytesOut, ConnectErrors prometheus.Collector
}

func (r *rig) target(addr string) series {
	for b := range r.targets {
		if b.Address() == addr {
			return series{
				DatagramsIn:   r.m.UDPDatagrams.WithLabelValues("udp", "pool", addr, "in"),
				DatagramsOut:  r.m.UDPDatagrams.WithLabelValues("udp", "pool", addr, "out"),
				BytesIn:       r.m.Bytes.WithLabelValues("udp", "pool", addr, "in"),
				BytesOut:      r.m.Bytes.WithLabelValues("udp", "pool", addr, "out"),
				ConnectErrors: r.m.ConnectErrors.WithLabelValues("pool", addr),
			}
		}
	}
	r.t.Fatalf("no backend %s", addr)
	return series{}
}

// rejected reads lbctl_connections_rejected_total of the rig's listener.
func (r *rig) rejected(reason string) float64 {
	return testutil.ToFloat64(r.m.Rejected.WithLabelValues("udp", reason))
}

// active is lbctl_udp_sessions_active summed over the backends.
func (r *rig) active() float64 {
	var n float64
	for b := range r.targets {
		n += testutil.ToFloat64(r.m.UDPSessionsActive.WithLabelValues("udp", "pool", b.Address()))
	}
	return n
}

// waitIdle waits until no session is open, by every count there is.
func (r *rig) waitIdle(timeout time.Duration) {
	r.t.Helper()
	lbtest.Eventually(r.t, timeout, func() bool {
		return r.active() == 0 && r.sessions.Load() == 0 && r.l.Len() == 0
	}, "sessions still open: gauge %v, count %d, table %d", r.active(), r.sessions.Load(), r.l.Len())
}

// accessLines returns the access log lines so far.
func (r *rig) accessLines() []observer.LoggedEntry {
	return r.logs.FilterLoggerName("access").All()
}

// client is a UDP client socket bound to ip on an ephemeral port.
func client(t testing.TB, ip string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 0)))
	if err != nil {
		t.Fatalf("client socket on %s: %v", ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends req to the rig and returns the first reply and where it
// came from; it fails the test when none comes within 5 seconds.
func (r *rig) exchange(c *net.UDPConn, req []byte) ([]byte, netip.AddrPort) {
	r.t.Helper()
	reply, from := exchangeTo(c, r.addr, req, 5*time.Second)
	if reply == nil {
		r.t.Fatalf("no reply to %.40q from %s", req, c.LocalAddr())
	}
	return reply, from
}

// exchangeTo sends req and waits up to timeout for a reply; nil if none.
func exchangeTo(c *net.UDPConn, to netip.AddrPort, req []byte, timeout time.Duration) ([]byte, netip.AddrPort) {
	if _, err := c.WriteToUDPAddrPort(req, to); err != nil {
		return nil, netip.AddrPort{}
	}
	return receive(c, timeout)
}

func receive(c *net.UDPConn, timeout time.Duration) ([]byte, netip.AddrPort) {
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 65536)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, netip.AddrPort{}
	}
	return buf[:n], from
}

// tag splits a lbtest.UDPTagged reply into the backend name and payload.
func tag(t testing.TB, reply []byte) (string, []byte) {
	t.Helper()
	name, payload, ok := bytes.Cut(reply, []byte("|"))
	if !ok {
		t.Fatalf("reply %.40q is not tagged", reply)
	}
	return string(name), payload
}

// have6 skips the test when the host has no IPv6 loopback.
func have6(t testing.TB) {
	t.Helper()
	c, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	c.Close()
}

func loopback(network string) string {
	if network == "udp6" {
		return "::1"
	}
	return "127.0.0.1"
}

func hostPort(ip string) string { return net.JoinHostPort(ip, "0") }
