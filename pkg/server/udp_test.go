package server

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
)

// udpListenerTOML renders a UDP listener on an ephemeral loopback port.
func udpListenerTOML(name, pool, extra string) string {
	return fmt.Sprintf("[listeners.%s]\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = %q\n%s\n", name, pool, extra)
}

// udpAddr is the bound address of the named UDP listener.
func (h *harness) udpAddr(name string) netip.AddrPort {
	h.t.Helper()
	return netip.MustParseAddrPort(h.addr(name))
}

func udpClient(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// udpExchange sends req and returns the first reply, or nil after timeout.
func udpExchange(c *net.UDPConn, to netip.AddrPort, req []byte, timeout time.Duration) []byte {
	if _, err := c.WriteToUDPAddrPort(req, to); err != nil {
		return nil
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 65536)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil || from != to {
		return nil
	}
	return buf[:n]
}

func (h *harness) udpActive(listener, pool, backend string) float64 {
	return counter(h.m.UDPSessionsActive.WithLabelValues(listener, pool, backend))
}

// A UDP listener balances sessions over its pool; concurrent clients each
// get their own replies; metrics and status follow.
func TestUDPRequestResponse(t *testing.T) {
	a := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
	b := lbtest.NewUDP(t, "b", lbtest.UDPTagged("b"))
	h := startServer(t, udpListenerTOML("u", "p", "")+poolTOML("p", "", a.Addr, b.Addr))
	to := h.udpAddr("u")

	const clients, requests = 6, 25
	conns := make([]*net.UDPConn, clients)
	for i := range conns {
		conns[i] = udpClient(t)
	}
	errs := make([][]string, clients)
	served := make([]map[string]int, clients)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			served[i] = map[string]int{}
			for j := range requests {
				req := fmt.Appendf(nil, "c%d r%d", i, j)
				reply := udpExchange(c, to, req, 2*time.Second)
				name, payload, ok := bytes.Cut(reply, []byte("|"))
				if !ok || !bytes.Equal(payload, req) {
					errs[i] = append(errs[i], fmt.Sprintf("sent %q, got %q", req, reply))
					continue
				}
				served[i][string(name)]++
			}
		}()
	}
	wg.Wait()
	perBackend := map[string]int{}
	for i := range conns {
		for _, e := range errs[i] {
			t.Errorf("client %d: %s", i, e)
		}
		if len(served[i]) != 1 {
			t.Errorf("client %d served by %v, want one backend", i, served[i])
		}
		for name := range served[i] {
			perBackend[name]++
		}
	}
	if perBackend["a"] != 3 || perBackend["b"] != 3 {
		t.Errorf("sessions per backend %v, want 3 each", perBackend)
	}
	if got := h.udpActive("u", "p", a.Addr) + h.udpActive("u", "p", b.Addr); got != clients {
		t.Errorf("lbctl_udp_sessions_active = %v, want %d", got, clients)
	}
	for _, be := range []*lbtest.UDPBackend{a, b} {
		// A datagram is counted once written to the backend, which may be
		// a moment after its reply left: poll.
		lbtest.Eventually(t, 2*time.Second, func() bool {
			in := counter(h.m.UDPDatagrams.WithLabelValues("u", "p", be.Addr, "in"))
			out := counter(h.m.UDPDatagrams.WithLabelValues("u", "p", be.Addr, "out"))
			bytesIn := counter(h.m.Bytes.WithLabelValues("u", "p", be.Addr, "in"))
			bytesOut := counter(h.m.Bytes.WithLabelValues("u", "p", be.Addr, "out"))
			// Replies carry the request plus "a|" or "b|".
			return in == 3*requests && out == 3*requests && bytesIn > 0 && bytesOut == bytesIn+float64(2*3*requests)
		}, "backend %s: datagram and byte counters never matched %d exchanges", be.Name, 3*requests)
	}
	st := h.srv.Status()
	if len(st.Listeners) != 1 || st.Listeners[0].Protocol != "udp" || st.Listeners[0].Active != clients {
		t.Errorf("status listeners %+v", st.Listeners)
	}
}

// Sessions expire after idle_timeout, max_connections drops and counts,
// and responses ends sessions, all from the TOML keys.
func TestUDPListenerKeys(t *testing.T) {
	a := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
	h := startServer(t,
		udpListenerTOML("idle", "p", `idle_timeout = "100ms"`)+
			udpListenerTOML("max", "p", "max_connections = 1")+
			udpListenerTOML("dns", "p", "responses = 1")+
			poolTOML("p", "", a.Addr))

	t.Run("idle_timeout", func(t *testing.T) {
		c := udpClient(t)
		if reply := udpExchange(c, h.udpAddr("idle"), []byte("x"), time.Second); string(reply) != "a|x" {
			t.Fatalf("reply %q", reply)
		}
		lbtest.Eventually(t, 3*time.Second, func() bool { return h.udpActive("idle", "p", a.Addr) == 0 }, "session did not expire")
	})
	t.Run("max_connections", func(t *testing.T) {
		if reply := udpExchange(udpClient(t), h.udpAddr("max"), []byte("x"), time.Second); string(reply) != "a|x" {
			t.Fatalf("reply %q", reply)
		}
		if _, err := udpClient(t).WriteToUDPAddrPort([]byte("y"), h.udpAddr("max")); err != nil {
			t.Fatal(err)
		}
		lbtest.Eventually(t, 2*time.Second, func() bool {
			return counter(h.m.Rejected.WithLabelValues("max", "max_connections")) == 1
		}, "second session not rejected")
	})
	t.Run("responses", func(t *testing.T) {
		c := udpClient(t)
		for i := range 3 {
			req := fmt.Appendf(nil, "q%d", i)
			if reply := udpExchange(c, h.udpAddr("dns"), req, time.Second); string(reply) != "a|"+string(req) {
				t.Fatalf("reply %q", reply)
			}
			lbtest.Eventually(t, 2*time.Second, func() bool { return h.udpActive("dns", "p", a.Addr) == 0 },
				"session not ended by responses = 1")
		}
	})
}

// allow/deny and the per-client limits apply to UDP sessions: a refused
// client's datagrams are dropped and counted under their reason, and a
// session's end gives its client slot back.
func TestUDPAdmission(t *testing.T) {
	a := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
	h := startServer(t, udpListenerTOML("u", "p", `deny = ["127.0.0.2/32"]
max_connections_per_client = 1
idle_timeout = "1s"`)+poolTOML("p", "", a.Addr))
	to := h.udpAddr("u")
	rejected := func(reason string) float64 { return counter(h.m.Rejected.WithLabelValues("u", reason)) }

	denied, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	defer denied.Close()
	if _, err := denied.WriteToUDPAddrPort([]byte("x"), to); err != nil {
		t.Fatal(err)
	}
	lbtest.Eventually(t, 2*time.Second, func() bool { return rejected("acl") == 1 }, "denied client not counted")

	first, second := udpClient(t), udpClient(t) // one client IP, two ports
	if reply := udpExchange(first, to, []byte("1"), time.Second); string(reply) != "a|1" {
		t.Fatalf("reply %q", reply)
	}
	if _, err := second.WriteToUDPAddrPort([]byte("2"), to); err != nil {
		t.Fatal(err)
	}
	lbtest.Eventually(t, 2*time.Second, func() bool { return rejected("client_limit") == 1 },
		"second session of one client not refused")
	// Once the first session has expired, the client may open another.
	lbtest.Eventually(t, 5*time.Second, func() bool { return h.udpActive("u", "p", a.Addr) == 0 }, "session did not expire")
	if reply := udpExchange(second, to, []byte("3"), time.Second); string(reply) != "a|3" {
		t.Errorf("after the first session ended: reply %q", reply)
	}
	if got := a.Received(); got != 2 {
		t.Errorf("backend received %d datagrams, want 2", got)
	}
}

// A dead backend (ICMP port unreachable) ends the session and is ejected
// by the passive check; the client's next datagram goes to the live one.
func TestUDPDeadBackendPassiveCheck(t *testing.T) {
	dead := lbtest.ClosedUDPPort(t, "udp4")
	live := lbtest.NewUDP(t, "live", lbtest.UDPTagged("live"))
	// Round robin picks the first backend first: the dead one.
	h := startServer(t, udpListenerTOML("u", "p", "")+poolTOML("p", `fail_timeout = "1m"`, dead, live.Addr))
	c := udpClient(t)
	if _, err := c.WriteToUDPAddrPort([]byte("1"), h.udpAddr("u")); err != nil {
		t.Fatal(err)
	}
	lbtest.Eventually(t, 2*time.Second, func() bool { return counter(h.m.BackendUp.WithLabelValues("p", dead)) == 0 },
		"dead backend not ejected")
	if n := counter(h.m.ConnectErrors.WithLabelValues("p", dead)); n != 1 {
		t.Errorf("connect errors = %v, want 1", n)
	}
	if reply := udpExchange(c, h.udpAddr("u"), []byte("2"), time.Second); string(reply) != "live|2" {
		t.Errorf("next datagram: reply %q, want live|2", reply)
	}
}

// A UDP pool's send-expect health check runs over UDP: a backend that
// does not answer is marked down, and sessions go to the others only.
func TestUDPHealthSendExpect(t *testing.T) {
	pong := lbtest.NewUDP(t, "pong", func(req []byte) [][]byte {
		if string(req) == "PING" {
			return [][]byte{[]byte("+PONG")}
		}
		return [][]byte{append([]byte("pong|"), req...)}
	})
	dead := lbtest.ClosedUDPPort(t, "udp4")
	h := startServer(t, udpListenerTOML("u", "p", "")+poolTOML("p", "", dead, pong.Addr)+`
[pools.p.health]
check = "send-expect"
send = "PING"
expect = "+PONG"
interval = "100ms"
timeout = "200ms"
`)
	lbtest.Eventually(t, 3*time.Second, func() bool {
		return counter(h.m.BackendUp.WithLabelValues("p", dead)) == 0 && counter(h.m.BackendUp.WithLabelValues("p", pong.Addr)) == 1
	}, "health checks did not mark the dead backend down")
	for i := range 4 {
		req := fmt.Appendf(nil, "%d", i)
		if reply := udpExchange(udpClient(t), h.udpAddr("u"), req, time.Second); string(reply) != "pong|"+string(req) {
			t.Errorf("session %d: reply %q", i, reply)
		}
	}
}

// A reload keeps the UDP socket: open sessions stay on their backend, new
// ones follow the new pool.
func TestUDPReload(t *testing.T) {
	a := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
	b := lbtest.NewUDP(t, "b", lbtest.UDPTagged("b"))
	h := startServer(t, udpListenerTOML("u", "p", "")+poolTOML("p", "", a.Addr))
	to := h.udpAddr("u")
	old := udpClient(t)
	if reply := udpExchange(old, to, []byte("1"), time.Second); string(reply) != "a|1" {
		t.Fatalf("reply %q", reply)
	}
	// The same bind ("127.0.0.1:0") keeps the same socket.
	cfg := udpConfig(t, udpListenerTOML("u", "p", "")+poolTOML("p", "", b.Addr))
	if err := h.srv.Reload(cfg); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if got := h.udpAddr("u"); got != to {
		t.Fatalf("listener moved from %s to %s", to, got)
	}
	if reply := udpExchange(old, to, []byte("2"), time.Second); string(reply) != "a|2" {
		t.Errorf("open session after reload: %q, want a|2", reply)
	}
	if reply := udpExchange(udpClient(t), to, []byte("3"), time.Second); string(reply) != "b|3" {
		t.Errorf("new session after reload: %q, want b|3", reply)
	}
}

// Two dnsmasq servers behind a UDP listener with responses = 1: answers are
// right, spread over both servers, and every session ends with its answer.
func TestUDPDNSWithDnsmasq(t *testing.T) {
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		bin = "/usr/sbin/dnsmasq"
		if _, serr := os.Stat(bin); serr != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("dnsmasq is required in CI (apt-get install dnsmasq): %v", err)
			}
			t.Skip("dnsmasq not installed (apt-get install dnsmasq dnsutils); set CI=1 to make this a failure")
		}
	}
	ns1 := startDnsmasq(t, bin, "10.1.2.3", "backend-one")
	ns2 := startDnsmasq(t, bin, "10.1.2.4", "backend-two")
	h := startServer(t, udpListenerTOML("dns", "ns", `responses = 1
idle_timeout = "30s"`)+poolTOML("ns", "", ns1, ns2))
	to := h.udpAddr("dns")

	seen := map[string]int{}
	for i := range 6 {
		c := udpClient(t) // a new source port per query, like a stub resolver
		q := dnsQuery(uint16(1000+i), "svc.test", dnsTypeA)
		reply := udpExchange(c, to, q, 2*time.Second)
		if reply == nil {
			t.Fatalf("query %d: no answer", i)
		}
		ans, err := parseDNSAnswer(reply, uint16(1000+i))
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		if len(ans) != 1 || (ans[0] != "10.1.2.3" && ans[0] != "10.1.2.4") {
			t.Fatalf("query %d: answers %v", i, ans)
		}
		seen[ans[0]]++
		lbtest.Eventually(t, 2*time.Second, func() bool {
			return h.udpActive("dns", "ns", ns1)+h.udpActive("dns", "ns", ns2) == 0
		}, "session not ended by responses = 1")
	}
	if seen["10.1.2.3"] != 3 || seen["10.1.2.4"] != 3 {
		t.Errorf("answers %v, want 3 from each server", seen)
	}

	// TXT tells the servers apart the same way, through dig when installed.
	if dig, err := exec.LookPath("dig"); err == nil {
		names := map[string]bool{}
		for range 2 {
			out, err := exec.Command(dig, "+short", "+tries=1", "+time=2", "-p", fmt.Sprint(to.Port()),
				"@"+to.Addr().String(), "svc.test", "TXT").Output()
			if err != nil {
				t.Fatalf("dig: %v", err)
			}
			names[strings.Trim(strings.TrimSpace(string(out)), `"`)] = true
		}
		if !names["backend-one"] || !names["backend-two"] {
			t.Errorf("dig TXT answers %v, want both servers", names)
		}
	}
	total := counter(h.m.UDPDatagrams.WithLabelValues("dns", "ns", ns1, "out")) +
		counter(h.m.UDPDatagrams.WithLabelValues("dns", "ns", ns2, "out"))
	if total < 6 {
		t.Errorf("datagrams out = %v, want at least 6", total)
	}
}

// startDnsmasq runs dnsmasq on a free loopback port answering svc.test with
// the address a and the TXT record txt, waits until it answers, and stops
// it (by its PID) in t.Cleanup.
func startDnsmasq(t *testing.T, bin, a, txt string) string {
	t.Helper()
	var out bytes.Buffer
	for range 3 {
		out.Reset()
		if addr, ok := tryDnsmasq(t, bin, a, txt, &out); ok {
			return addr
		}
		// The port was taken between probing and dnsmasq's bind: retry.
	}
	t.Fatalf("dnsmasq did not start:\n%s", out.String())
	return ""
}

func tryDnsmasq(t *testing.T, bin, a, txt string, out *bytes.Buffer) (string, bool) {
	t.Helper()
	port := freeUDPPort(t)
	cmd := exec.Command(bin, "-k", "--port="+fmt.Sprint(port), "--listen-address=127.0.0.1", "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--address=/svc.test/"+a, "--txt-record=svc.test,"+txt,
		"--log-facility=-", "--pid-file=", "-C", "/dev/null", "--user=root")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dnsmasq: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	stop := sync.OnceFunc(func() {
		cmd.Process.Kill() // this process only, by its PID
		<-exited
	})
	t.Cleanup(stop) // also when the test fails before dnsmasq answers
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	c := udpClient(t)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return "", false
		default:
		}
		if r := udpExchange(c, addr, dnsQuery(1, "svc.test", dnsTypeA), 100*time.Millisecond); r != nil {
			return addr.String(), true
		}
	}
	stop()
	return "", false
}

// udpConfig parses a configuration for Reload.
func udpConfig(t *testing.T, toml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("test.toml", []byte(toml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

// freeUDPPort returns a loopback port that was free a moment ago (UDP and
// TCP: dnsmasq binds both).
func freeUDPPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		u, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		u.Close()
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

const (
	dnsTypeA   = 1
	dnsTypeTXT = 16
)

// dnsQuery builds a recursive query for name.
func dnsQuery(id uint16, name string, qtype uint16) []byte {
	q := binary.BigEndian.AppendUint16(nil, id)
	q = append(q, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0) // RD; 1 question
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		q = append(q, byte(len(label)))
		q = append(q, label...)
	}
	q = append(q, 0)
	q = binary.BigEndian.AppendUint16(q, qtype)
	return binary.BigEndian.AppendUint16(q, 1) // IN
}

// parseDNSAnswer returns the A records of a response to query id.
func parseDNSAnswer(m []byte, id uint16) ([]string, error) {
	if len(m) < 12 {
		return nil, errors.New("short DNS message")
	}
	if got := binary.BigEndian.Uint16(m); got != id {
		return nil, fmt.Errorf("answer to query %d, want %d", got, id)
	}
	if rcode := m[3] & 0x0f; rcode != 0 || m[2]&0x80 == 0 {
		return nil, fmt.Errorf("not a successful response (flags %#x %#x)", m[2], m[3])
	}
	qd, an := binary.BigEndian.Uint16(m[4:]), binary.BigEndian.Uint16(m[6:])
	off := 12
	skipName := func() error {
		for off < len(m) {
			l := int(m[off])
			switch {
			case l == 0:
				off++
				return nil
			case l&0xc0 == 0xc0:
				off += 2
				return nil
			}
			off += 1 + l
		}
		return errors.New("truncated name")
	}
	for range qd {
		if err := skipName(); err != nil {
			return nil, err
		}
		off += 4
	}
	var out []string
	for range an {
		if err := skipName(); err != nil {
			return nil, err
		}
		if off+10 > len(m) {
			return nil, errors.New("truncated record")
		}
		typ, rdlen := binary.BigEndian.Uint16(m[off:]), int(binary.BigEndian.Uint16(m[off+8:]))
		off += 10
		if off+rdlen > len(m) {
			return nil, errors.New("truncated rdata")
		}
		if typ == dnsTypeA && rdlen == 4 {
			out = append(out, netip.AddrFrom4([4]byte(m[off:off+4])).String())
		}
		off += rdlen
	}
	return out, nil
}
