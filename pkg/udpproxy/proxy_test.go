package udpproxy_test

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/udpproxy"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Several clients at once, on IPv4 and IPv6: every client gets the replies
// to its own datagrams and only those, from the address it sent to, each
// client's session stays on one backend, and backends see lbctl's address,
// never the client's.
func TestConcurrentClientsGetTheirOwnReplies(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) {
			if network == "udp6" {
				have6(t)
			}
			ip := loopback(network)
			var addrs []string
			var bes []*lbtest.UDPBackend
			for _, name := range []string{"a", "b", "c"} {
				be := lbtest.NewUDPAt(t, hostPort(ip), name, lbtest.UDPTagged(name))
				bes = append(bes, be)
				addrs = append(addrs, be.Addr)
			}
			r := newRig(t, rigOpts{bind: hostPort(ip)}, addrs...)

			const clients, requests = 9, 40
			conns := make([]*net.UDPConn, clients)
			for i := range conns {
				conns[i] = client(t, ip)
			}
			type result struct {
				backends map[string]int
				errs     []string
			}
			results := make([]result, clients)
			var wg sync.WaitGroup
			for i, c := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					res := result{backends: map[string]int{}}
					for j := range requests {
						req := fmt.Appendf(nil, "client %d request %d", i, j)
						reply, from := exchangeTo(c, r.addr, req, 5*time.Second)
						if reply == nil {
							res.errs = append(res.errs, fmt.Sprintf("no reply to %q", req))
							continue
						}
						if from != r.addr {
							res.errs = append(res.errs, fmt.Sprintf("reply from %s, want %s", from, r.addr))
						}
						name, payload, _ := bytes.Cut(reply, []byte("|"))
						if !bytes.Equal(payload, req) {
							res.errs = append(res.errs, fmt.Sprintf("sent %q, got reply to %q", req, payload))
						}
						res.backends[string(name)]++
					}
					results[i] = res
				}()
			}
			wg.Wait()

			perBackend := map[string]int{}
			for i, res := range results {
				for _, e := range res.errs {
					t.Errorf("client %d: %s", i, e)
				}
				if len(res.backends) != 1 {
					t.Errorf("client %d was served by %v, want one backend for its session", i, res.backends)
				}
				for name := range res.backends {
					perBackend[name]++
				}
			}
			// Round robin over 3 equal backends: 9 sessions, 3 each.
			for _, be := range bes {
				if perBackend[be.Name] != 3 {
					t.Errorf("backend %s served %d sessions, want 3 (all: %v)", be.Name, perBackend[be.Name], perBackend)
				}
			}
			clientAddrs := map[netip.AddrPort]bool{}
			for _, c := range conns {
				clientAddrs[c.LocalAddr().(*net.UDPAddr).AddrPort()] = true
			}
			for _, be := range bes {
				peers := be.Peers()
				if len(peers) != 3 {
					t.Errorf("backend %s saw %d source addresses, want one per session (3): %v", be.Name, len(peers), peers)
				}
				for p, n := range peers {
					if clientAddrs[p] {
						t.Errorf("backend %s saw the client address %s", be.Name, p)
					}
					if n != requests {
						t.Errorf("backend %s got %d datagrams from %s, want %d", be.Name, n, p, requests)
					}
				}
			}
			// A datagram is counted once written to the backend, which may
			// be a moment after its reply left: poll.
			lbtest.Eventually(t, 5*time.Second, func() bool {
				var in, out float64
				for _, a := range addrs {
					in += testutil.ToFloat64(r.target(a).DatagramsIn)
					out += testutil.ToFloat64(r.target(a).DatagramsOut)
				}
				return in == clients*requests && out == clients*requests
			}, "datagram counters never reached %d each way", clients*requests)
			if got := r.active(); got != clients {
				t.Errorf("sessions active = %v, want %d", got, clients)
			}
		})
	}
}

// On a wildcard bind, a reply leaves from the address the client sent to,
// not from the address the routing table prefers.
func TestWildcardRepliesFromDestinationAddress(t *testing.T) {
	tests := []struct {
		name, bind string
		dsts       []string
		client     string
	}{
		{"ipv4 on dual-stack wildcard", "0.0.0.0:0", []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}, "127.0.0.1"},
		{"ipv6 wildcard", "[::]:0", []string{"::1"}, "::1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.client == "::1" {
				have6(t)
			}
			be := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
			r := newRig(t, rigOpts{bind: tc.bind}, be.Addr)
			for _, dst := range tc.dsts {
				c := client(t, tc.client)
				to := netip.AddrPortFrom(netip.MustParseAddr(dst), r.addr.Port())
				for i := range 3 {
					req := fmt.Appendf(nil, "to %s #%d", dst, i)
					reply, from := exchangeTo(c, to, req, 5*time.Second)
					if reply == nil {
						t.Fatalf("no reply to %q", req)
					}
					if from.Addr().Unmap() != to.Addr() || from.Port() != to.Port() {
						t.Errorf("sent to %s, reply came from %s", to, from)
					}
					if _, p := tag(t, reply); !bytes.Equal(p, req) {
						t.Errorf("reply %q to %q", p, req)
					}
				}
			}
		})
	}
}

// A session ends after idle_timeout without a datagram either way, and the
// client's next datagram opens a new one; traffic either way keeps it.
func TestIdleTimeout(t *testing.T) {
	// Traffic comes every pace, so a stall of idle - pace (1.6s: GC under
	// -race, two busy cores) still keeps the session.
	const idle, pace = 2 * time.Second, 400 * time.Millisecond
	tweak := func(c *udpproxy.Config) { c.IdleTimeout = idle }

	t.Run("expires", func(t *testing.T) {
		be := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
		r := newRig(t, rigOpts{tweak: tweak}, be.Addr)
		c := client(t, "127.0.0.1")
		last := time.Now() // before the exchange: the session's clock starts inside it
		r.exchange(c, []byte("one"))
		if r.active() != 1 {
			t.Fatalf("sessions active = %v, want 1", r.active())
		}
		r.waitIdle(10 * time.Second)
		if quiet := time.Since(last); quiet < idle {
			t.Errorf("session ended after %v of quiet, before idle_timeout %v", quiet, idle)
		}
		lines := r.accessLines()
		if len(lines) != 1 || lines[0].ContextMap()["end"] != string(udpproxy.EndIdle) {
			t.Fatalf("access lines %v, want one with end=idle_timeout", lines)
		}
		r.exchange(c, []byte("two"))
		if n := r.backends[0].Total(); n != 2 {
			t.Errorf("backend sessions total = %d, want 2 (a new session after expiry)", n)
		}
	})

	t.Run("client traffic keeps it", func(t *testing.T) {
		be := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
		r := newRig(t, rigOpts{tweak: tweak}, be.Addr)
		c := client(t, "127.0.0.1")
		start := time.Now()
		tick := time.NewTicker(pace)
		defer tick.Stop()
		for time.Since(start) < idle+idle/2 {
			r.exchange(c, []byte("ping"))
			<-tick.C
		}
		if n := r.backends[0].Total(); n != 1 {
			t.Errorf("backend sessions total = %d, want 1 session kept alive", n)
		}
	})

	t.Run("backend traffic keeps it", func(t *testing.T) {
		// A backend that answers with a reply every pace, 8 times: the
		// stream outlasts idle_timeout, and all of it must arrive.
		const replies = 8
		bc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			buf := make([]byte, 100)
			_, from, err := bc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			tick := time.NewTicker(pace)
			defer tick.Stop()
			for i := range replies {
				bc.WriteToUDPAddrPort(fmt.Appendf(nil, "a|%d", i), from)
				<-tick.C
			}
		}()
		t.Cleanup(func() { bc.Close(); <-done })
		r := newRig(t, rigOpts{tweak: tweak}, bc.LocalAddr().String())
		c := client(t, "127.0.0.1")
		if _, err := c.WriteToUDPAddrPort([]byte("stream"), r.addr); err != nil {
			t.Fatal(err)
		}
		for i := range replies {
			reply, _ := receive(c, 5*time.Second)
			if want := fmt.Sprintf("a|%d", i); string(reply) != want {
				t.Fatalf("reply %d = %q, want %q", i, reply, want)
			}
		}
		if n := r.backends[0].Total(); n != 1 {
			t.Errorf("backend sessions total = %d, want 1", n)
		}
	})
}

// responses = N ends the session after N replies per client datagram
// (nginx's proxy_responses); extra replies are not forwarded.
func TestResponses(t *testing.T) {
	tests := []struct {
		responses, backendReplies, want int
	}{
		{1, 1, 1},
		{1, 3, 1},
		{2, 3, 2},
		{3, 3, 3},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("responses=%d of %d", tc.responses, tc.backendReplies), func(t *testing.T) {
			be := lbtest.NewUDP(t, "a", lbtest.UDPRepeat("a", tc.backendReplies))
			r := newRig(t, rigOpts{tweak: func(c *udpproxy.Config) { c.Responses = tc.responses }}, be.Addr)
			c := client(t, "127.0.0.1")
			for i := range tc.want {
				if reply, _ := r.exchange(c, []byte("q1")); string(reply) != "a|q1" {
					t.Fatalf("reply %d = %q", i, reply)
				}
				if i+1 < tc.want {
					// The remaining replies were sent together: read them
					// without sending again.
					for j := i + 1; j < tc.want; j++ {
						if reply, _ := receive(c, 5*time.Second); string(reply) != "a|q1" {
							t.Fatalf("reply %d = %q", j, reply)
						}
					}
					break
				}
			}
			r.waitIdle(5 * time.Second)
			// Had lbctl forwarded an extra reply to q1, it would be queued
			// on the client socket before the reply to q2.
			if reply, _ := r.exchange(c, []byte("q2")); string(reply) != "a|q2" {
				t.Fatalf("after the session ended, got %q, want the reply to q2", reply)
			}
			lines := r.accessLines()
			if len(lines) == 0 {
				t.Fatal("no access line")
			}
			f := lines[0].ContextMap()
			if f["end"] != string(udpproxy.EndResponses) || f["datagrams_out"] != int64(tc.want) || f["datagrams_in"] != int64(1) ||
				f["bytes_in"] != int64(2) || f["bytes_out"] != int64(4*tc.want) || f["backend"] != be.Addr || f["client"] == nil {
				t.Errorf("access line %v", f)
			}
		})
	}
}

// With responses = 1, two queries sent from one port before the first
// answer both get their answer (a resolver asking for A and AAAA at once).
func TestResponsesCountsPerClientDatagram(t *testing.T) {
	// The backend answers nothing to q1 and both queries once q2 arrives,
	// so both are in flight in the same session.
	be := lbtest.NewUDP(t, "a", func(req []byte) [][]byte {
		if string(req) == "q2" {
			return [][]byte{[]byte("a|q2"), []byte("a|q1")}
		}
		return nil
	})
	r := newRig(t, rigOpts{tweak: func(c *udpproxy.Config) { c.Responses = 1 }}, be.Addr)
	c := client(t, "127.0.0.1")
	for _, q := range []string{"q1", "q2"} {
		if _, err := c.WriteToUDPAddrPort([]byte(q), r.addr); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]bool{}
	for range 2 {
		reply, _ := receive(c, 5*time.Second)
		got[string(reply)] = true
	}
	if !got["a|q1"] || !got["a|q2"] {
		t.Errorf("replies %v, want both a|q1 and a|q2", got)
	}
	r.waitIdle(5 * time.Second)
	if n := r.backends[0].Total(); n != 1 {
		t.Errorf("sessions = %d, want both queries in one session", n)
	}
}

// Many short sessions at once (responses = 1: one socket per request,
// descriptors reused all the time): every reply still reaches the client
// that asked, and only it.
func TestSessionChurn(t *testing.T) {
	var addrs []string
	for _, name := range []string{"a", "b"} {
		addrs = append(addrs, lbtest.NewUDP(t, name, lbtest.UDPTagged(name)).Addr)
	}
	r := newRig(t, rigOpts{tweak: func(c *udpproxy.Config) { c.Responses = 1 }}, addrs...)
	const clients, requests = 8, 150
	conns := make([]*net.UDPConn, clients)
	for i := range conns {
		conns[i] = client(t, "127.0.0.1")
	}
	errs := make([][]string, clients)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range requests {
				req := fmt.Appendf(nil, "client %d request %d", i, j)
				reply, _ := exchangeTo(c, r.addr, req, 5*time.Second)
				if _, payload, ok := bytes.Cut(reply, []byte("|")); !ok || !bytes.Equal(payload, req) {
					errs[i] = append(errs[i], fmt.Sprintf("sent %q, got %q", req, reply))
				}
			}
		}()
	}
	wg.Wait()
	for i := range errs {
		for _, e := range errs[i] {
			t.Errorf("client %d: %s", i, e)
		}
	}
	r.waitIdle(5 * time.Second)
	var total uint64
	for _, b := range r.backends {
		total += b.Total()
	}
	if total < clients*requests {
		t.Errorf("%d sessions for %d requests with responses = 1", total, clients*requests)
	}
}

// A backend that answers ICMP port unreachable ends the session and counts
// as a passive failure; the client's next datagram goes to another backend.
func TestDeadBackendFailsOver(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) {
			if network == "udp6" {
				have6(t)
			}
			ip := loopback(network)
			dead := lbtest.ClosedUDPPort(t, network)
			live := lbtest.NewUDPAt(t, hostPort(ip), "live", lbtest.UDPTagged("live"))
			r := newRig(t, rigOpts{bind: hostPort(ip)}, dead, live.Addr)
			deadB, liveB := r.backends[0], r.backends[1]

			// Only the dead backend is eligible for the first session.
			liveB.SetHealthy(false)
			c := client(t, ip)
			if _, err := c.WriteToUDPAddrPort([]byte("1"), r.addr); err != nil {
				t.Fatal(err)
			}
			lbtest.Eventually(t, 5*time.Second, func() bool { return r.passive.failed.Load() == 1 },
				"no passive failure after the ICMP port unreachable")
			r.waitIdle(5 * time.Second)
			if deadB.Healthy() || deadB.Failures() != 1 || testutil.ToFloat64(r.target(dead).ConnectErrors) != 1 {
				t.Errorf("dead backend: healthy=%v failures=%d connect errors=%v", deadB.Healthy(), deadB.Failures(),
					testutil.ToFloat64(r.target(dead).ConnectErrors))
			}
			if l := r.accessLines(); len(l) != 1 || l[0].ContextMap()["end"] != string(udpproxy.EndBackendError) {
				t.Errorf("access lines %v, want one with end=backend_error", l)
			}

			liveB.SetHealthy(true)
			reply, _ := r.exchange(c, []byte("2"))
			if name, _ := tag(t, reply); name != "live" {
				t.Errorf("next datagram served by %q, want live", name)
			}
		})
	}
}

// Datagrams up to the largest UDP payload pass intact both ways, IPv4 and
// IPv6, and so does an empty one.
func TestDatagramSizes(t *testing.T) {
	for _, tc := range []struct {
		network string
		sizes   []int
	}{
		{"udp4", []int{0, 1, 1472, 9000, 65507}},
		{"udp6", []int{0, 1, 1452, 9000, 65527}},
	} {
		t.Run(tc.network, func(t *testing.T) {
			if tc.network == "udp6" {
				have6(t)
			}
			ip := loopback(tc.network)
			be := lbtest.NewUDPAt(t, hostPort(ip), "echo", lbtest.UDPEcho)
			r := newRig(t, rigOpts{bind: hostPort(ip)}, be.Addr)
			c := client(t, ip)
			c.SetReadBuffer(1 << 20)
			var total float64
			for _, n := range tc.sizes {
				req := make([]byte, n)
				for i := range req {
					req[i] = byte(i*7 + n)
				}
				reply, _ := r.exchange(c, req)
				if !bytes.Equal(reply, req) {
					t.Errorf("%d bytes sent, %d bytes back, equal=%v", n, len(reply), bytes.Equal(reply, req))
				}
				total += float64(n)
			}
			m := r.target(be.Addr)
			lbtest.Eventually(t, 5*time.Second, func() bool {
				return testutil.ToFloat64(m.BytesIn) == total && testutil.ToFloat64(m.BytesOut) == total
			}, "byte counters never reached %v each way", total)
		})
	}
}

// ip-hash keeps a client IP on one backend across sessions (each ended by
// responses = 1) and source ports, and spreads client IPs.
func TestIPHashSticky(t *testing.T) {
	var addrs []string
	for _, name := range []string{"a", "b", "c"} {
		addrs = append(addrs, lbtest.NewUDP(t, name, lbtest.UDPTagged(name)).Addr)
	}
	r := newRig(t, rigOpts{algorithm: balancer.IPHash, tweak: func(c *udpproxy.Config) { c.Responses = 1 }}, addrs...)
	const ips, sessions = 8, 4
	used := map[string]bool{}
	for i := range ips {
		ip := fmt.Sprintf("127.0.0.%d", i+1)
		var first string
		for j := range sessions {
			c := client(t, ip) // a new source port: a new session
			reply, _ := r.exchange(c, []byte("hi"))
			name, _ := tag(t, reply)
			if j == 0 {
				first = name
			} else if name != first {
				t.Errorf("client %s: session %d on %s, first on %s", ip, j, name, first)
			}
			used[name] = true
		}
	}
	r.waitIdle(5 * time.Second)
	var total uint64
	for _, b := range r.backends {
		total += b.Total()
	}
	if total != ips*sessions {
		t.Errorf("%d sessions opened, want %d", total, ips*sessions)
	}
	if len(used) < 2 {
		t.Errorf("%d client IPs all hashed to %v", ips, used)
	}
}

// A new generation (a reload) serves new sessions; open sessions keep the
// generation, and so the backend, they started with.
func TestGenerationSwap(t *testing.T) {
	a := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
	b := lbtest.NewUDP(t, "b", lbtest.UDPTagged("b"))
	r := newRig(t, rigOpts{}, a.Addr, b.Addr)
	r.cur.Store(r.proxyOver(r.backends[:1], "", nil))
	old := client(t, "127.0.0.1")
	if reply, _ := r.exchange(old, []byte("x")); string(reply) != "a|x" {
		t.Fatalf("reply %q", reply)
	}
	r.cur.Store(r.proxyOver(r.backends[1:], "", nil))
	if reply, _ := r.exchange(old, []byte("y")); string(reply) != "a|y" {
		t.Errorf("open session after swap: reply %q, want a|y", reply)
	}
	if reply, _ := r.exchange(client(t, "127.0.0.1"), []byte("z")); string(reply) != "b|z" {
		t.Errorf("new session after swap: reply %q, want b|z", reply)
	}
}

// The Admit hook (pkg/server: max_connections, access lists, per-client
// limits) is asked once per new session, never per datagram of an open
// one; a refused client's datagrams are dropped; the release of every
// admitted session runs exactly once, when it ends. (A session refused
// before Admit is asked: TestDescriptorReserve.)
func TestAdmitHook(t *testing.T) {
	refused := netip.MustParseAddr("127.0.0.2")
	var (
		mu       sync.Mutex
		asked    = map[netip.Addr]int{}
		released atomic.Int64
	)
	admit := func(a netip.Addr, _ func() bool) func() {
		mu.Lock()
		asked[a]++
		mu.Unlock()
		if a == refused {
			return nil
		}
		return func() { released.Add(1) }
	}
	askedOf := func(ip string) int {
		mu.Lock()
		defer mu.Unlock()
		return asked[netip.MustParseAddr(ip)]
	}
	be := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
	r := newRig(t, rigOpts{admit: admit}, be.Addr)

	c1 := client(t, "127.0.0.1")
	for i := range 3 {
		r.exchange(c1, fmt.Appendf(nil, "%d", i))
	}
	if n := askedOf("127.0.0.1"); n != 1 {
		t.Errorf("Admit asked %d times for one session of 3 datagrams", n)
	}
	c2 := client(t, "127.0.0.2")
	for range 2 {
		if _, err := c2.WriteToUDPAddrPort([]byte("refused"), r.addr); err != nil {
			t.Fatal(err)
		}
	}
	lbtest.Eventually(t, 5*time.Second, func() bool { return askedOf("127.0.0.2") == 2 }, "refused client not asked about")
	r.exchange(client(t, "127.0.0.3"), []byte("second session"))
	if n := released.Load(); n != 0 {
		t.Errorf("%d releases before any session ended, want 0", n)
	}
	if got := be.Received(); got != 4 {
		t.Errorf("backend received %d datagrams, want 4", got)
	}
	r.close()
	if n := released.Load(); n != 2 {
		t.Errorf("%d releases after close, want 2 (one per admitted session)", n)
	}
}

// Closing the listener socket ends every session; Serve returns once their
// goroutines have.
func TestCloseEndsSessions(t *testing.T) {
	be := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
	clients := []*net.UDPConn{client(t, "127.0.0.1"), client(t, "127.0.0.1"), client(t, "127.0.0.1")}
	fds := lbtest.OpenFDs(t)
	r := newRig(t, rigOpts{}, be.Addr)
	for i, c := range clients {
		r.exchange(c, fmt.Appendf(nil, "%d", i))
	}
	if got := lbtest.OpenFDs(t); got < fds+len(clients) {
		t.Errorf("%d descriptors open with %d sessions, %d before: a backend socket each expected", got, len(clients), fds)
	}
	r.close()
	if got := lbtest.OpenFDs(t); got != fds {
		t.Errorf("%d descriptors open after close, %d before", got, fds)
	}
	if r.active() != 0 || r.sessions.Load() != 0 || r.backends[0].Active() != 0 {
		t.Errorf("after close: gauge %v, count %d, backend active %d", r.active(), r.sessions.Load(), r.backends[0].Active())
	}
	lines := r.accessLines()
	if len(lines) != 3 {
		t.Fatalf("%d access lines, want 3", len(lines))
	}
	for _, l := range lines {
		if l.ContextMap()["end"] != string(udpproxy.EndShutdown) {
			t.Errorf("access line %v, want end=shutdown", l.ContextMap())
		}
	}
}

// When the process runs out of descriptors (EMFILE, within the sessions'
// share), new sessions are refused, counted and logged once, while open
// sessions keep working; once descriptors are back, sessions open again.
func TestOutOfDescriptors(t *testing.T) {
	be := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
	r := newRig(t, rigOpts{}, be.Addr)
	open := client(t, "127.0.0.1")
	r.exchange(open, []byte("before"))
	const refused = 5
	waiting := make([]*net.UDPConn, refused)
	for i := range waiting {
		waiting[i] = client(t, "127.0.0.1")
	}

	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("getrlimit: %v", err)
	}
	// Take descriptors until the lowest free one is far above the
	// descriptor reserve, so that the sessions' share (fdbudget.go) allows
	// more; the kernel hands out the lowest free descriptor, so with the
	// limit there, none is left to open and socket(2) fails with EMFILE.
	var free int
	for {
		fd, err := syscall.Dup(0)
		if err != nil {
			t.Fatal(err)
		}
		if fd >= 2*udpproxy.MinDescriptorReserve {
			syscall.Close(fd)
			free = fd
			break
		}
		t.Cleanup(func() { syscall.Close(fd) })
	}
	low := lim
	low.Cur = uint64(free)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("setrlimit: %v", err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
				t.Errorf("restore rlimit: %v", err)
			}
		}
	}
	defer restore()

	for _, c := range waiting {
		if _, err := c.WriteToUDPAddrPort([]byte("starved"), r.addr); err != nil {
			t.Fatal(err)
		}
	}
	lbtest.Eventually(t, 5*time.Second, func() bool { return r.rejected("max_connections") == refused },
		"refused sessions counted: %v, want %d", r.rejected("max_connections"), refused)
	if reply, _ := r.exchange(open, []byte("during")); string(reply) != "a|during" {
		t.Errorf("open session while starved: %q", reply)
	}
	restore()

	if reply, _ := r.exchange(waiting[0], []byte("after")); string(reply) != "a|after" {
		t.Errorf("new session after recovery: %q", reply)
	}
	warn := r.logs.FilterMessageSnippet("new sessions are refused").All()
	again := r.logs.FilterMessageSnippet("accepted again").All()
	if len(warn) != 1 || len(again) != 1 {
		t.Fatalf("logged %d refusal and %d recovery lines, want 1 each", len(warn), len(again))
	}
	if got := again[0].ContextMap()["refused"]; got != int64(refused) {
		t.Errorf("recovery line says %v refused, want %d", got, refused)
	}
	if got := fmt.Sprint(warn[0].ContextMap()["error"]); !strings.Contains(got, syscall.EMFILE.Error()) {
		t.Errorf("refusal logged with error %q, want EMFILE", got)
	}
}

// Sessions churning over backends that refuse datagrams: the reader
// (writing) and the replier (reading) both meet ICMP errors, sessions hand
// their admission on to replacements, replacements fail in turn. Every
// admission is released exactly once, none twice, none lost. (A stress
// check of the hand-over chain; TestHandOverAfterReplierClosed pins the
// interleaving that used to release one admission twice.)
func TestRefusedSessionReleasesAdmissionOnce(t *testing.T) {
	const backends, clients, bursts, burst = 4, 16, 40, 8
	var dead []string
	for range backends {
		dead = append(dead, lbtest.ClosedUDPPort(t, "udp4"))
	}
	var (
		admitted, released atomic.Int64
		twice              atomic.Int64
	)
	admit := func(netip.Addr, func() bool) func() {
		admitted.Add(1)
		var once atomic.Bool
		return func() {
			if once.Swap(true) {
				twice.Add(1)
				return
			}
			released.Add(1)
		}
	}
	// No passive ejection: every backend stays eligible, so each
	// replacement session meets the next ICMP error. The kernel rate-limits
	// ICMP errors: a session that got none ends unreplied, or idle (a
	// session socket may get a dead backend's port as its own and hear
	// itself).
	r := newRig(t, rigOpts{admit: admit, tweak: func(c *udpproxy.Config) {
		c.Passive = nil
		c.UnrepliedTimeout = time.Second
		c.IdleTimeout = time.Second
	}}, dead...)
	conns := make([]*net.UDPConn, clients)
	for i := range conns {
		conns[i] = client(t, "127.0.0.1")
	}
	payload := []byte("x")
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range bursts {
				for range burst {
					c.WriteToUDPAddrPort(payload, r.addr)
				}
				time.Sleep(time.Millisecond) // let the replier see errors too
			}
		}()
	}
	wg.Wait()
	// The reader may still be opening sessions for datagrams queued on the
	// socket: wait until every admission is given back.
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		a, rel := admitted.Load(), released.Load()
		return a == rel && r.sessions.Load() == 0, fmt.Sprintf("%d admissions, %d released, %d sessions open, table %d, gauge %v", a, rel, r.sessions.Load(), r.l.Len(), r.active())
	})
	if n := twice.Load(); n != 0 {
		t.Errorf("%d admissions released twice (a replacement session ran uncounted)", n)
	}
}
