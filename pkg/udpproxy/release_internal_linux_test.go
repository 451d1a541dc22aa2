package udpproxy

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// When a backend goes away, the replier (reading the session's socket) and
// the reader (writing to it) can both see its ICMP errors. The replier then
// closes the session and releases its admission while the reader hands the
// same admission on to the session that replaces it (handOver). Exactly one
// of them may get it: else the admission is released twice, and the
// replacement runs uncounted in the per-client table.
//
// The test plays the reader's part after the replier has closed the
// session. It waits for that on the kernel's side only (the session's
// descriptor is gone from /proc/self/fd), so that nothing orders the two
// accesses for the race detector but the code under test.
func TestHandOverAfterReplierClosed(t *testing.T) {
	p, be := oneBackendProxy(t)
	var calls atomic.Int64 // how often the one admission was released
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var sessions atomic.Int64
	l := &Listener{Conn: conn, Proxy: func() *Proxy { return p }, Sessions: &sessions,
		Admit: func(netip.Addr, func() bool) func() { return func() { calls.Add(1) } }}
	served := make(chan struct{})
	go func() {
		defer close(served)
		l.Serve()
	}()
	t.Cleanup(func() {
		conn.Close()
		<-served
	})
	to := conn.LocalAddr().(*net.UDPAddr).AddrPort()

	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if reply := lbtest.UDPExchange(t, c, to, []byte("1"), 5*time.Second); string(reply) != "a|1" {
		t.Fatalf("reply %q", reply)
	}
	l.mu.Lock()
	s := l.table[c.LocalAddr().(*net.UDPAddr).AddrPort()]
	l.mu.Unlock()
	if s == nil {
		t.Fatal("no session after the first exchange")
	}
	fdPath := fmt.Sprintf("/proc/self/fd/%d", s.fd)
	sock, err := os.Readlink(fdPath)
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}

	// The backend goes away: the next datagram draws ICMP port
	// unreachable, and the replier closes the session.
	be.Close()
	if _, err := c.WriteToUDPAddrPort([]byte("2"), to); err != nil {
		t.Fatal(err)
	}
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		now, err := os.Readlink(fdPath)
		return err != nil || now != sock, "the session's socket is still open: " + now
	})

	// The reader's write was refused too: it hands the admission on to a
	// replacement session, which then ends.
	if rel := l.handOver(s); rel != nil {
		rel()
	}
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		return sessions.Load() == 0, fmt.Sprintf("%d sessions open", sessions.Load())
	})
	if n := calls.Load(); n != 1 {
		t.Errorf("the admission was released %d times, want once", n)
	}
}

// oneBackendProxy returns a Proxy over one tagged UDP backend, and the
// backend.
func oneBackendProxy(t *testing.T) (*Proxy, *lbtest.UDPBackend) {
	t.Helper()
	be := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
	b := balancer.NewBackend(be.Addr)
	pool, err := balancer.New(balancer.RoundRobin, []balancer.Member{{Backend: b, Weight: 1}})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry())
	p, err := New(Config{Listener: "u", PoolName: "p", Pool: pool,
		Targets:     map[*balancer.Backend]*Target{b: {Addr: be.Addr, Metrics: m.ForUDP("u", "p", be.Addr)}},
		IdleTimeout: time.Hour, Rejections: m.ForListener("udp", "u")})
	if err != nil {
		t.Fatal(err)
	}
	return p, be
}
