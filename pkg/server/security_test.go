package server

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/proxyheader"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// Security tests: access lists, per-client limits and the PROXY protocol,
// over real loopback sockets. Clients pick their source address inside
// 127.0.0.0/8 to play different hosts.

// dialFrom connects to addr from the loopback address src.
func dialFrom(t testing.TB, src, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// served proves c is proxied to an echo backend: one byte goes round.
func served(t testing.TB, c net.Conn) bool {
	t.Helper()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("?")); err != nil {
		return false
	}
	b := make([]byte, 1)
	_, err := io.ReadFull(c, b)
	return err == nil && b[0] == '?'
}

// closedAtOnce proves c was closed by lbctl without a byte of data, well
// before any timeout of the tests' listeners.
func closedAtOnce(t testing.TB, c net.Conn) {
	t.Helper()
	start := time.Now()
	got, _ := lbtest.ReadAllTimeout(t, c, 5*time.Second) // EOF or reset
	if len(got) != 0 {
		t.Fatalf("a refused connection got %q", got)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a refused connection was closed after %v", d)
	}
}

func TestACL(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	pool := poolTOML("p", "", be.Addr) + noHealth
	for _, tc := range []struct {
		name     string
		rules    string
		bind     string
		admitted []string
		refused  []string
	}{
		{"allow a subnet, deny one host in it", `allow = ["127.0.0.0/24"]` + "\n" + `deny = ["127.0.0.66"]`, "127.0.0.1:0",
			[]string{"127.0.0.1", "127.0.0.65"}, []string{"127.0.0.66", "127.0.1.1"}},
		{"deny only", `deny = ["127.0.0.0/30"]`, "127.0.0.1:0",
			[]string{"127.0.0.4", "127.1.2.3"}, []string{"127.0.0.1", "127.0.0.2"}},
		{"go-sockaddr template", `allow = ['{{ GetAllInterfaces | include "flags" "loopback" | include "type" "IPv4" | attr "address" }}']`, "127.0.0.1:0",
			[]string{"127.0.0.1"}, []string{"127.0.0.2"}},
		{"IPv6 allowed", `allow = ["::1/128"]`, "[::1]:0", []string{"::1"}, nil},
		{"IPv6 denied", `deny = ["::1"]`, "[::1]:0", nil, []string{"::1"}},
		{"IPv4 rules do not admit IPv6", `allow = ["127.0.0.0/8"]`, "[::1]:0", nil, []string{"::1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if strings.HasPrefix(tc.bind, "[") {
				if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
					t.Skip("no IPv6 loopback")
				} else {
					ln.Close()
				}
			}
			h := startServer(t, fmt.Sprintf("[listeners.l]\nbind = %q\npool = \"p\"\n%s\n", tc.bind, tc.rules)+pool)
			before := be.Accepted()
			for _, src := range tc.admitted {
				if !served(t, dialFrom(t, src, h.addr("l"))) {
					t.Errorf("%s was not served", src)
				}
			}
			for _, src := range tc.refused {
				closedAtOnce(t, dialFrom(t, src, h.addr("l")))
			}
			rej := h.rejections("l")
			lbtest.Until(t, 10*time.Second, func() (bool, string) {
				got := rej("acl")
				return got == float64(len(tc.refused)), fmt.Sprintf("acl rejections %v, want %d", got, len(tc.refused))
			})
			if got := be.Accepted() - before; got != int64(len(tc.admitted)) {
				t.Fatalf("backend dialed %d times for %d admitted clients: refused clients must not reach it", got, len(tc.admitted))
			}
		})
	}
}

func TestPerClientConnectionLimit(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	h := startServer(t, listenerTOML("l", "p", "max_connections_per_client = 2")+poolTOML("p", "", be.Addr)+noHealth)
	addr := h.addr("l")
	a1, a2 := dialFrom(t, "127.0.0.2", addr), dialFrom(t, "127.0.0.2", addr)
	if !served(t, a1) || !served(t, a2) {
		t.Fatal("the first two connections of a client must be served")
	}
	closedAtOnce(t, dialFrom(t, "127.0.0.2", addr))
	if !served(t, dialFrom(t, "127.0.0.3", addr)) {
		t.Fatal("another client must not be limited by the first one's connections")
	}
	rej := h.rejections("l")
	lbtest.Eventually(t, 10*time.Second, func() bool { return rej("client_limit") == 1 })

	a1.Close() // frees one slot of 127.0.0.2, once lbctl sees the close
	lbtest.Eventually(t, 10*time.Second, func() bool {
		c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		return served(t, c)
	}, "the client's slot was not freed")
	if be.Accepted() != 4 {
		t.Fatalf("backend accepted %d, want 4: refused connections must not be dialed", be.Accepted())
	}
}

func TestPerClientRateLimit(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	// A slow refill, so the burst is what the test sees.
	h := startServer(t, listenerTOML("l", "p", "connection_rate_per_client = 0.01\nconnection_burst_per_client = 3")+
		poolTOML("p", "", be.Addr)+noHealth)
	addr := h.addr("l")
	for i := 0; i < 3; i++ {
		c := dialFrom(t, "127.0.0.4", addr)
		if !served(t, c) {
			t.Fatalf("connection %d within the burst was not served", i+1)
		}
		c.Close()
	}
	closedAtOnce(t, dialFrom(t, "127.0.0.4", addr))
	closedAtOnce(t, dialFrom(t, "127.0.0.4", addr))
	if !served(t, dialFrom(t, "127.0.0.5", addr)) {
		t.Fatal("another client must have its own bucket")
	}
	rej := h.rejections("l")
	lbtest.Eventually(t, 10*time.Second, func() bool { return rej("rate_limit") == 2 })
	if rej("client_limit") != 0 || rej("acl") != 0 {
		t.Fatal("rate rejections counted under another reason")
	}
}

// TestClientLimitsSurviveReload: a reload keeps the per-client counters (a
// client holding its limit stays at it) and applies the new limits.
func TestClientLimitsSurviveReload(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	pool := poolTOML("p", "", be.Addr) + noHealth
	h := startServer(t, listenerTOML("l", "p", "max_connections_per_client = 1")+pool)
	addr := h.addr("l")
	held := dialFrom(t, "127.0.0.2", addr)
	if !served(t, held) {
		t.Fatal("first connection not served")
	}
	reload(t, h, listenerTOML("l", "p", "max_connections_per_client = 1\nidle_timeout = \"9m\"")+pool)
	if h.addr("l") != addr {
		t.Fatalf("the reload rebound the listener")
	}
	closedAtOnce(t, dialFrom(t, "127.0.0.2", addr))
	reload(t, h, listenerTOML("l", "p", "max_connections_per_client = 2")+pool)
	if !served(t, dialFrom(t, "127.0.0.2", addr)) {
		t.Fatal("a raised limit was not applied")
	}
	closedAtOnce(t, dialFrom(t, "127.0.0.2", addr))
	if !served(t, held) {
		t.Fatal("the held connection broke")
	}
}

// proxyTOML is a listener that takes PROXY headers from 127.0.0.1 only.
// Its header timeout is long: the tests send the header once their dial
// returns, which may take a while on a loaded machine.
func proxyTOML(extra string) string { return proxyTOMLWithin("10s", extra) }

// proxyTOMLWithin is proxyTOML with the given proxy_protocol_timeout.
func proxyTOMLWithin(timeout, extra string) string {
	return listenerTOML("l", "p", "accept_proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\n"+
		fmt.Sprintf("proxy_protocol_timeout = %q\n", timeout)+extra)
}

// accessClients returns the client field of every access log line.
func accessClients(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.FilterMessage("connection").All() {
		if c, ok := e.ContextMap()["client"].(string); ok {
			out = append(out, c)
		}
	}
	return out
}

func TestAcceptProxyProtocol(t *testing.T) {
	src := netip.MustParseAddrPort("203.0.113.9:40001")
	dst := netip.MustParseAddrPort("198.51.100.1:443")
	v1 := proxyheader.AppendV1(nil, src, dst)
	v2 := proxyheader.AppendV2(nil, src, dst, false)

	t.Run("the header's client is the client, payload intact", func(t *testing.T) {
		sums := make(chan lbtest.Sum, 2)
		be := lbtest.NewTCP(t, lbtest.HashingEcho(sums))
		core, logs := observer.New(zap.InfoLevel)
		h := startServerLog(t, proxyTOML("")+poolTOML("p", "", be.Addr)+noHealth, core)
		for _, hdr := range [][]byte{v1, v2} {
			payload := make([]byte, 1<<20)
			rand.NewChaCha8([32]byte{7}).Read(payload)
			c := dialFrom(t, "127.0.0.1", h.addr("l"))
			// Header and payload in one write: lbctl must not lose the
			// payload bytes that arrive with the header.
			go func() {
				c.Write(append(append([]byte{}, hdr...), payload...))
				c.CloseWrite()
			}()
			got, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("echo through a PROXY listener: %d bytes (want %d), %v", len(got), len(payload), err)
			}
			if s := <-sums; s.SHA256 != sha256.Sum256(payload) {
				t.Fatalf("the backend received %d bytes that differ from the payload", s.N)
			}
		}
		lbtest.Eventually(t, 10*time.Second, func() bool { return len(accessClients(logs)) == 2 })
		for _, c := range accessClients(logs) {
			if c != src.String() {
				t.Fatalf("access log client %q, want %q from the header", c, src)
			}
		}
		// Byte metrics count payload only, not the header.
		if in := counter(h.tcpSeries("l", "p", be.Addr).BytesIn); in != 2<<20 {
			t.Fatalf("bytes in = %v, want %d", in, 2<<20)
		}
	})

	t.Run("ip-hash hashes the header's client", func(t *testing.T) {
		a := lbtest.NewTCP(t, lbtest.Named("a"))
		b := lbtest.NewTCP(t, lbtest.Named("b"))
		h := startServer(t, proxyTOML("")+poolTOML("p", `algorithm = "ip-hash"`, a.Addr, b.Addr)+noHealth)
		counts := map[string]int{}
		for i := 0; i < 40; i++ {
			client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), 1}), uint16(1000+i))
			var first string
			for round := 0; round < 2; round++ {
				c := dialFrom(t, "127.0.0.1", h.addr("l"))
				c.Write(proxyheader.AppendV2(nil, client, dst, false))
				got, _ := lbtest.ReadAllTimeout(t, c, 3*time.Second)
				if round == 0 {
					first = string(got)
					counts[first]++
				} else if string(got) != first {
					t.Fatalf("client %s went to %q then %q", client, first, got)
				}
			}
		}
		// All 80 connections come from 127.0.0.1: hashing the peer would
		// send every one to the same backend.
		if counts["a"] < 8 || counts["b"] < 8 {
			t.Fatalf("40 header clients spread as %v", counts)
		}
	})

	t.Run("the header's client meets ACLs and per-client limits", func(t *testing.T) {
		be := lbtest.NewTCP(t, lbtest.Echo)
		h := startServer(t, proxyTOML(`deny = ["10.1.2.0/24"]`+"\nmax_connections_per_client = 1")+poolTOML("p", "", be.Addr)+noHealth)
		withHeader := func(src string) *net.TCPConn {
			c := dialFrom(t, "127.0.0.1", h.addr("l"))
			c.Write(proxyheader.AppendV2(nil, netip.MustParseAddrPort(src), dst, false))
			return c
		}
		// An IPv4-mapped IPv6 client matches the IPv4 rule.
		closedAtOnce(t, withHeader("[::ffff:10.1.2.3]:5000"))
		closedAtOnce(t, withHeader("10.1.2.4:5000"))
		held := withHeader("10.1.3.4:5000")
		if !served(t, held) {
			t.Fatal("an allowed header client was not served")
		}
		closedAtOnce(t, withHeader("10.1.3.4:5001")) // same client, second connection
		if !served(t, withHeader("10.1.3.5:5000")) {
			t.Fatal("another header client was limited")
		}
		rej := h.rejections("l")
		lbtest.Until(t, 10*time.Second, func() (bool, string) {
			acl, limit := rej("acl"), rej("client_limit")
			return acl == 2 && limit == 1, fmt.Sprintf("acl %v client_limit %v, want 2 and 1", acl, limit)
		})
		if be.Accepted() != 2 {
			t.Fatalf("backend accepted %d, want 2", be.Accepted())
		}
	})

	t.Run("a LOCAL header keeps the peer as the client", func(t *testing.T) {
		be := lbtest.NewTCP(t, lbtest.Echo)
		core, logs := observer.New(zap.InfoLevel)
		h := startServerLog(t, proxyTOML("")+poolTOML("p", "", be.Addr)+noHealth, core)
		c := dialFrom(t, "127.0.0.1", h.addr("l"))
		c.Write(proxyheader.AppendV2(nil, netip.AddrPort{}, netip.AddrPort{}, false))
		if !served(t, c) {
			t.Fatal("a LOCAL connection was not served")
		}
		c.Close()
		lbtest.Eventually(t, 10*time.Second, func() bool { return len(accessClients(logs)) == 1 })
		if got := accessClients(logs)[0]; got != c.LocalAddr().String() {
			t.Fatalf("access log client %q, want the peer %s", got, c.LocalAddr())
		}
	})

	refusals := []struct {
		name  string
		src   string // the peer's address
		send  []byte
		close bool
	}{
		{"an untrusted peer, even with a valid header", "127.0.0.9", v1, false},
		{"a trusted peer without a header", "127.0.0.1", []byte("GET / HTTP/1.0\r\n\r\n"), false},
		{"a malformed header", "127.0.0.1", []byte("PROXY TCP4 203.0.113.9 nope 1 2\r\n"), false},
		{"an oversized v2 header", "127.0.0.1", append(bytes.Clone(v2[:14]), 0xff, 0xff), false},
		{"a header cut short by the peer", "127.0.0.1", v2[:20], true},
	}
	for _, tc := range refusals {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			be := lbtest.NewTCP(t, lbtest.Echo)
			h := startServer(t, proxyTOML("")+poolTOML("p", "", be.Addr)+noHealth)
			c := dialFrom(t, tc.src, h.addr("l"))
			c.Write(tc.send)
			if tc.close {
				c.CloseWrite()
			}
			closedAtOnce(t, c)
			rej := h.rejections("l")
			lbtest.Eventually(t, 10*time.Second, func() bool { return rej("proxy_protocol") == 1 })
			if be.Accepted() != 0 {
				t.Fatal("the backend was dialed for a refused connection")
			}
		})
	}
}

// TestProxyHeaderTimeout: silent clients on a PROXY listener (slowloris)
// are cut off after proxy_protocol_timeout, and free their slots.
func TestProxyHeaderTimeout(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	// Long enough for the client at the end to send its header after its
	// dial, on a loaded machine too.
	const timeout = 2 * time.Second
	h := startServer(t, proxyTOMLWithin(timeout.String(), "max_connections = 3")+poolTOML("p", "", be.Addr)+noHealth)
	start := time.Now()
	var silent []*net.TCPConn
	for i := 0; i < 3; i++ {
		silent = append(silent, dialFrom(t, "127.0.0.1", h.addr("l")))
	}
	for _, c := range silent {
		got, _ := lbtest.ReadAllTimeout(t, c, timeout+10*time.Second)
		if len(got) != 0 {
			t.Fatalf("silent client got %q", got)
		}
	}
	if d := time.Since(start); d < timeout || d > timeout+3*time.Second {
		t.Fatalf("silent clients closed after %v, want about proxy_protocol_timeout (%v)", d, timeout)
	}
	lbtest.Eventually(t, 10*time.Second, func() bool { return h.srv.Status().Listeners[0].Active == 0 })
	header := proxyheader.AppendV1(nil, netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("192.0.2.2:2"))
	c := dialFrom(t, "127.0.0.1", h.addr("l"))
	c.Write(header)
	if !served(t, c) {
		t.Fatal("a client with a header was not served after the slots were freed")
	}
	if got := h.rejected("l", "proxy_protocol"); got != 3 {
		t.Fatalf("proxy_protocol rejections %v, want 3", got)
	}
}

// sourceEcho is a backend that expects a PROXY header, answers with the
// source address it names and a newline, then echoes.
func sourceEcho(c *net.TCPConn) {
	h, err := proxyheader.Read(c, time.Now().Add(5*time.Second))
	if err != nil {
		fmt.Fprintf(c, "error: %v\n", err)
		return
	}
	fmt.Fprintf(c, "%s\n", h.Source)
	io.Copy(c, c)
	c.CloseWrite()
}

// roundTripFrom sends payload from src through addr, half-closes and
// returns everything that comes back.
func roundTripFrom(t *testing.T, src, addr, payload string) (local string, reply string) {
	t.Helper()
	c := dialFrom(t, src, addr)
	c.Write([]byte(payload))
	c.CloseWrite()
	got, err := lbtest.ReadAllTimeout(t, c, 5*time.Second)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return c.LocalAddr().String(), string(got)
}

func TestSendProxyProtocol(t *testing.T) {
	for _, version := range []string{"v1", "v2"} {
		t.Run(version, func(t *testing.T) {
			be := lbtest.NewTCP(t, sourceEcho)
			h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "proxy_protocol = \""+version+"\"", be.Addr)+noHealth)
			local, got := roundTripFrom(t, "127.0.0.7", h.addr("l"), "payload")
			if want := local + "\npayload"; got != want {
				t.Fatalf("backend answered %q, want %q", got, want)
			}
			if in := counter(h.tcpSeries("l", "p", be.Addr).BytesIn); in != 7 {
				t.Fatalf("bytes in = %v, want 7 (payload only)", in)
			}
		})
	}

	t.Run("lbctl to lbctl", func(t *testing.T) {
		// back accepts headers from front and sees the original client.
		be := lbtest.NewTCP(t, lbtest.Echo)
		core, logs := observer.New(zap.InfoLevel)
		back := startServerLog(t, proxyTOML("")+poolTOML("p", "", be.Addr)+noHealth, core)
		front := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", `proxy_protocol = "v2"`, back.addr("l"))+noHealth)
		local, got := roundTripFrom(t, "127.0.0.8", front.addr("l"), "through two hops")
		if got != "through two hops" {
			t.Fatalf("echo %q", got)
		}
		lbtest.Eventually(t, 10*time.Second, func() bool { return len(accessClients(logs)) == 1 })
		if c := accessClients(logs)[0]; c != local {
			t.Fatalf("the second lbctl logged client %q, want %s", c, local)
		}
	})
}

// Real peers: HAProxy and nginx as backends that accept the PROXY
// protocol must see the original client. They run as their own processes
// on loopback, from generated configurations, and are stopped by PID.

// needTool returns the path of a program, skipping the test when it is
// missing, unless CI is set (then the test fails: CI must install it).
func needTool(t *testing.T, name string, also ...string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		for _, f := range also {
			if _, err = os.Stat(f); err != nil {
				break
			}
		}
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is needed in CI: %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return path
}

// runPeer starts argv as a process of its own, with its output in a file,
// waits until port accepts connections and stops the process by PID in
// t.Cleanup. It returns a function that reads the output so far.
func runPeer(t *testing.T, dir string, port int, argv ...string) func() string {
	t.Helper()
	out, err := os.Create(filepath.Join(dir, "output"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", argv[0], err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		out.Close()
		close(exited)
	}()
	read := func() string {
		b, _ := os.ReadFile(out.Name())
		return string(b)
	}
	t.Cleanup(func() {
		// The process group holds nginx's master and workers; the group id
		// is the PID of the process started here.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("%s exited:\n%s", argv[0], read())
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			// A LOCAL header, so the probe is a well-formed connection.
			c.Write(proxyheader.AppendV2(nil, netip.AddrPort{}, netip.AddrPort{}, false))
			c.Close()
			return read
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not listen on %s:\n%s", argv[0], addr, read())
		}
		time.Sleep(20 * time.Millisecond) // polling for the port, with a deadline
	}
}

func TestProxyProtocolHAProxy(t *testing.T) {
	haproxy := needTool(t, "haproxy")
	for _, version := range []string{"v1", "v2"} {
		t.Run(version, func(t *testing.T) {
			// HAProxy accepts lbctl's header and passes the client it names on
			// to a backend in its own header, which the backend echoes.
			be := lbtest.NewTCP(t, sourceEcho)
			dir := t.TempDir()
			port := lbtest.FreePort(t)
			cfg := fmt.Sprintf(`global
    log stdout format raw local0 info
defaults
    mode tcp
    log global
    log-format "client=%%ci:%%cp"
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:%d accept-proxy
    default_backend be
backend be
    server s1 %s send-proxy
`, port, be.Addr)
			path := filepath.Join(dir, "haproxy.cfg")
			if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			output := runPeer(t, dir, port, haproxy, "-db", "-f", path)
			h := startServer(t, listenerTOML("l", "p", "")+
				poolTOML("p", `proxy_protocol = "`+version+`"`, fmt.Sprintf("127.0.0.1:%d", port))+noHealth)
			local, got := roundTripFrom(t, "127.0.0.7", h.addr("l"), "hello haproxy")
			if want := local + "\nhello haproxy"; got != want {
				t.Fatalf("through HAProxy: %q, want %q\nHAProxy output:\n%s", got, want, output())
			}
			lbtest.Until(t, 10*time.Second, func() (bool, string) {
				out := output()
				return strings.Contains(out, "client="+local), fmt.Sprintf("HAProxy did not log client=%s:\n%s", local, out)
			})
		})
	}
}

func TestProxyProtocolNginx(t *testing.T) {
	const module = "/usr/lib/nginx/modules/ngx_stream_module.so"
	nginx := needTool(t, "nginx", module)
	for _, version := range []string{"v1", "v2"} {
		t.Run(version, func(t *testing.T) {
			dir := t.TempDir()
			port := lbtest.FreePort(t)
			cfg := fmt.Sprintf(`load_module %s;
daemon off;
worker_processes 1;
pid %s/nginx.pid;
error_log stderr info;
events { worker_connections 64; }
stream {
    log_format pp "client=$proxy_protocol_addr:$proxy_protocol_port";
    access_log %s/access.log pp;
    server {
        listen 127.0.0.1:%d proxy_protocol;
        return "$proxy_protocol_addr:$proxy_protocol_port\n";
    }
}
`, module, dir, dir, port)
			path := filepath.Join(dir, "nginx.conf")
			if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			output := runPeer(t, dir, port, nginx, "-e", "stderr", "-p", dir, "-c", path)
			h := startServer(t, listenerTOML("l", "p", "")+
				poolTOML("p", `proxy_protocol = "`+version+`"`, fmt.Sprintf("127.0.0.1:%d", port))+noHealth)
			c := dialFrom(t, "127.0.0.7", h.addr("l"))
			line, err := bufio.NewReader(c).ReadString('\n')
			if want := c.LocalAddr().String() + "\n"; err != nil || line != want {
				t.Fatalf("nginx returned %q, %v; want %q\nnginx output:\n%s", line, err, want, output())
			}
			c.Close()
			lbtest.Until(t, 10*time.Second, func() (bool, string) {
				b, _ := os.ReadFile(filepath.Join(dir, "access.log"))
				want := "client=" + c.LocalAddr().String()
				return strings.Contains(string(b), want), fmt.Sprintf("nginx did not log %s; access.log:\n%s", want, b)
			})
		})
	}
}
