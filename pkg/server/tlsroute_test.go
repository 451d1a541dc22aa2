package server

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/proxyheader"
	"github.com/lbctl/lbctl/tlshello/tlshellotest"
	proxyproto "github.com/pires/go-proxyproto"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// routeBackend is a real TLS server (Go's crypto/tls) with a
// self-signed certificate of its own. Every connection gets the TLS
// handshake, then, once the client's request headers are in, an HTTP/1.1
// answer whose body is "NAME ALPN" (the backend's name and the protocol
// negotiated), and is closed.
type routeBackend struct {
	name string
	addr string
	cert []byte // DER of the certificate it serves
}

func newRouteBackend(t *testing.T, name string) *routeBackend {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "backend-" + name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos:   []string{"h2", "http/1.1", "acme-tls/1"},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &routeBackend{name: name, addr: ln.Addr().String(), cert: der}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				tc := tls.Server(c, cfg)
				if tc.Handshake() != nil {
					return
				}
				br := bufio.NewReader(tc)
				for {
					line, err := br.ReadString('\n')
					if err != nil || line == "\r\n" || line == "\n" {
						break
					}
				}
				body := name + " " + tc.ConnectionState().NegotiatedProtocol
				fmt.Fprintf(tc, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
				tc.CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return b
}

// certPEM is the backend's certificate in PEM, as openssl prints it.
func (b *routeBackend) certPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.cert}))
}

// shapedConn changes how the first write (the ClientHello) goes on the
// wire: one byte per segment with a pause, or re-framed into TLS records
// of at most recordSize bytes. Later writes pass through.
type shapedConn struct {
	*net.TCPConn
	bytewise   bool
	recordSize int
	once       sync.Once
	firstBytes int // bytes of the first write, as sent
}

func (c *shapedConn) Write(b []byte) (int, error) {
	first := false
	c.once.Do(func() { first = true })
	if !first {
		return c.TCPConn.Write(b)
	}
	wire := b
	if c.recordSize > 0 {
		wire = tlshellotest.Reframe(b, c.recordSize)
	}
	c.firstBytes = len(wire)
	if !c.bytewise {
		if _, err := c.TCPConn.Write(wire); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	c.SetNoDelay(true)
	for i := range wire {
		if _, err := c.TCPConn.Write(wire[i : i+1]); err != nil {
			return 0, err
		}
		time.Sleep(100 * time.Microsecond) // pacing segments, not synchronisation
	}
	return len(b), nil
}

// tlsGet connects to addr with Go's TLS client (cfg), shaping its hello,
// sends a request and returns the body and the certificate it saw.
func tlsGet(t *testing.T, addr string, cfg *tls.Config, shape *shapedConn) (body string, cert []byte, helloBytes int) {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(30 * time.Second))
	sc := &shapedConn{TCPConn: raw.(*net.TCPConn)}
	if shape != nil {
		sc.bytewise, sc.recordSize = shape.bytewise, shape.recordSize
	}
	cfg = cfg.Clone()
	cfg.InsecureSkipVerify = true
	tc := tls.Client(sc, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake with %s via lbctl: %v", cfg.ServerName, err)
	}
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", cfg.ServerName)
	resp, err := io.ReadAll(tc)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("read: %v", err)
	}
	_, body, _ = strings.Cut(string(resp), "\r\n\r\n")
	return body, tc.ConnectionState().PeerCertificates[0].Raw, sc.firstBytes
}

func pq(cfg *tls.Config) *tls.Config {
	cfg = cfg.Clone()
	cfg.CurvePreferences = []tls.CurveID{tls.X25519MLKEM768, tls.X25519}
	return cfg
}

// TestTLSRoutes: every kind of route, every shape of ClientHello, with
// real TLS backends and real clients (Go, openssl s_client, curl): each
// connection reaches the backend its server name routes to, and the
// certificate the client sees is that backend's own (passthrough).
func TestTLSRoutes(t *testing.T) {
	api := newRouteBackend(t, "api.example.com")
	shop := newRouteBackend(t, "shop.example.com")
	wild := newRouteBackend(t, "wild.example.com")
	fallback := newRouteBackend(t, "fallback")
	core, logs := observer.New(zap.InfoLevel)
	h := startServerLog(t, `
[listeners.tls]
bind = "127.0.0.1:0"
pool = "fallback"
tls_inspect_timeout = "10s"
  [[listeners.tls.routes]]
  sni = ["api.example.com"]
  pool = "api"
  [[listeners.tls.routes]]
  sni_regex = '^shop-[0-9]+\.example\.com$'
  alpn = ["h2"]
  pool = "shop"
  [[listeners.tls.routes]]
  sni = ["*.example.com"]
  pool = "wild"
`+poolTOML("api", "", api.addr)+poolTOML("shop", "", shop.addr)+poolTOML("wild", "", wild.addr)+
		poolTOML("fallback", "", fallback.addr), core)
	addr := h.addr("tls")

	cases := []struct {
		name    string
		cfg     *tls.Config
		shape   *shapedConn
		want    *routeBackend
		minSize int // the hello took at least this many bytes (1461: more than one Ethernet segment)
	}{
		{name: "exact name", cfg: &tls.Config{ServerName: "api.example.com"}, want: api},
		{name: "exact name in capitals", cfg: &tls.Config{ServerName: "API.Example.COM"}, want: api},
		{name: "wildcard", cfg: &tls.Config{ServerName: "www.example.com"}, want: wild},
		{name: "wildcard takes one label only", cfg: &tls.Config{ServerName: "a.b.example.com"}, want: fallback},
		{name: "regex and alpn", cfg: &tls.Config{ServerName: "shop-12.example.com", NextProtos: []string{"http/1.1", "h2"}}, want: shop},
		{name: "regex without the alpn falls through to the wildcard", cfg: &tls.Config{ServerName: "shop-12.example.com",
			NextProtos: []string{"http/1.1"}}, want: wild},
		{name: "no SNI goes to the pool", cfg: &tls.Config{}, want: fallback},
		{name: "unknown name goes to the pool", cfg: &tls.Config{ServerName: "other.test"}, want: fallback},
		{name: "post-quantum hello", cfg: pq(&tls.Config{ServerName: "api.example.com"}), want: api, minSize: 1461},
		{name: "post-quantum hello, one byte per segment", cfg: pq(&tls.Config{ServerName: "api.example.com"}),
			shape: &shapedConn{bytewise: true}, want: api, minSize: 1461},
		{name: "post-quantum hello in records of 100 bytes", cfg: pq(&tls.Config{ServerName: "shop-7.example.com",
			NextProtos: []string{"h2"}}), shape: &shapedConn{recordSize: 100}, want: shop, minSize: 1461},
		{name: "records of 100 bytes, one byte per segment", cfg: &tls.Config{ServerName: "www.example.com"},
			shape: &shapedConn{recordSize: 100, bytewise: true}, want: wild},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body, cert, size := tlsGet(t, addr, tc.cfg, tc.shape)
			if name, _, _ := strings.Cut(body, " "); name != tc.want.name {
				t.Fatalf("answered by %q, want %q", body, tc.want.name)
			}
			if !bytes.Equal(cert, tc.want.cert) {
				t.Fatal("the certificate the client saw is not the backend's own")
			}
			if size < tc.minSize {
				t.Fatalf("the hello took %d bytes, want at least %d", size, tc.minSize)
			}
		})
	}

	t.Run("openssl s_client", func(t *testing.T) {
		bin := lbtest.Binary(t, "openssl", "/usr/bin/openssl", "openssl")
		for _, tc := range []struct {
			name string
			want *routeBackend
		}{{"api.example.com", api}, {"shop-3.example.com", wild}, {"nothing.test", fallback}} {
			cmd := exec.Command(bin, "s_client", "-connect", addr, "-servername", tc.name, "-quiet", "-verify_quiet")
			cmd.Stdin = strings.NewReader("GET / HTTP/1.1\r\nHost: " + tc.name + "\r\n\r\n")
			out, _ := cmd.Output()
			if !strings.HasSuffix(string(out), tc.want.name+" ") {
				t.Errorf("-servername %s: answered %q, want %s", tc.name, out, tc.want.name)
			}
			cmd = exec.Command(bin, "s_client", "-connect", addr, "-servername", tc.name, "-showcerts")
			cmd.Stdin = strings.NewReader("")
			out, _ = cmd.Output()
			if !strings.Contains(string(out), tc.want.certPEM()) {
				t.Errorf("-servername %s: the certificate openssl saw is not the backend's:\n%s", tc.name, out)
			}
		}
	})

	t.Run("curl", func(t *testing.T) {
		bin := lbtest.Binary(t, "curl", "/usr/bin/curl", "curl")
		_, port, _ := net.SplitHostPort(addr)
		for _, tc := range []struct {
			name string
			want string
		}{{"api.example.com", "api.example.com"}, {"www.example.com", "wild.example.com"}, {"a.b.example.com", "fallback"}} {
			out, err := exec.Command(bin, "-sS", "-k", "--max-time", "20", "--http1.1",
				"--resolve", tc.name+":"+port+":127.0.0.1", "https://"+tc.name+":"+port+"/").CombinedOutput()
			if name, proto, _ := strings.Cut(string(out), " "); err != nil || name != tc.want || proto != "http/1.1" {
				t.Errorf("curl %s: %q %v, want %q over http/1.1", tc.name, out, err, tc.want)
			}
		}
	})

	// Every connection was counted under its route's pool.
	if n := counter(h.m.ConnectionsTotal.WithLabelValues("tls", "api", api.addr)); n < 5 {
		t.Errorf("api connections_total = %v, want at least 5", n)
	}
	// The access log names the server name.
	var sawSNI bool
	for _, e := range logs.FilterMessage("connection").All() {
		if e.ContextMap()["sni"] == "shop-7.example.com" && e.ContextMap()["backend"] == shop.addr {
			sawSNI = true
		}
	}
	if !sawSNI {
		t.Error("no access log line with sni shop-7.example.com and shop's backend")
	}
	// Status shows the routes.
	st := h.srv.Status()
	if len(st.Listeners) != 1 || len(st.Listeners[0].Routes) != 3 || st.Listeners[0].Routes[1].SNIRegex != `^shop-[0-9]+\.example\.com$` ||
		st.Listeners[0].Routes[2].Pool != "wild" || st.Listeners[0].Pool != "fallback" {
		t.Errorf("status listeners: %+v", st.Listeners)
	}
}

// clientHello is the ClientHello Go's TLS client sends with cfg (made
// insecure: no handshake follows).
func clientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	cfg = cfg.Clone()
	cfg.InsecureSkipVerify = true
	hello, err := tlshellotest.Hello(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return hello
}

// TestTLSRouteRejects: on a listener whose routes are its only pools,
// plain HTTP is closed as tls_inspect, an unrouted name as no_route, and
// hellos held half-sent (slowloris) are each closed at
// tls_inspect_timeout while the accept loop serves others meanwhile. A
// UDP listener exports neither reason.
func TestTLSRouteRejects(t *testing.T) {
	api := newRouteBackend(t, "api.example.com")
	dns := lbtest.NewUDP(t, "dns", lbtest.UDPEcho)
	h := startServer(t, `
[listeners.tls]
bind = "127.0.0.1:0"
tls_inspect_timeout = "5s"
  [[listeners.tls.routes]]
  sni = ["api.example.com"]
  pool = "api"
[listeners.dns]
protocol = "udp"
bind = "127.0.0.1:0"
pool = "dns"
`+poolTOML("api", "", api.addr)+poolTOML("dns", "", dns.Addr))
	rej := h.rejections("tls")

	// closedBy reports whether lbctl closed c: EOF or a reset, not a timeout.
	closedBy := func(c net.Conn, within time.Duration) error {
		c.SetReadDeadline(time.Now().Add(within))
		_, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return err
		}
		return nil
	}

	c := h.dial("tls")
	c.Write([]byte("GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n"))
	if err := closedBy(c, 10*time.Second); err != nil {
		t.Fatalf("plain HTTP was not closed: %v", err)
	}
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		return rej("tls_inspect") == 1, fmt.Sprintf("tls_inspect = %v", rej("tls_inspect"))
	})

	c = h.dial("tls")
	c.Write(clientHello(t, &tls.Config{ServerName: "nowhere.example.com"}))
	if err := closedBy(c, 10*time.Second); err != nil {
		t.Fatalf("an unrouted name was not closed: %v", err)
	}
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		return rej("no_route") == 1, fmt.Sprintf("no_route = %v", rej("no_route"))
	})

	// Slowloris: half a post-quantum hello, then nothing.
	hello := clientHello(t, pq(&tls.Config{ServerName: "api.example.com"}))
	const slow = 50
	conns := make([]*net.TCPConn, slow)
	start := time.Now()
	for i := range conns {
		conns[i] = h.dial("tls")
		conns[i].Write(hello[:len(hello)/2])
	}
	// The accept loop is not held up: a complete hello is served while
	// every slow one is still open (none counted yet).
	body, _, _ := tlsGet(t, h.addr("tls"), &tls.Config{ServerName: "api.example.com"}, nil)
	if !strings.HasPrefix(body, "api.example.com") {
		t.Fatalf("answer %q", body)
	}
	if n := rej("tls_inspect"); n != 1 {
		t.Fatalf("tls_inspect = %v while the slow hellos are within their 5s (the good connection took %v)", n, time.Since(start))
	}
	var wg sync.WaitGroup
	errs := make(chan error, slow)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := closedBy(c, 20*time.Second); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a slow hello was not closed: %v", err)
	}
	if d := time.Since(start); d < 5*time.Second {
		t.Fatalf("slow hellos closed after %v, before tls_inspect_timeout", d)
	}
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		return rej("tls_inspect") == 1+slow, fmt.Sprintf("tls_inspect = %v", rej("tls_inspect"))
	})
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		a := h.srv.Status().Listeners[1].Active
		return a == 0, fmt.Sprintf("%d connections still active", a)
	})

	for _, s := range seriesWith(t, h.reg, "listener", "dns") {
		if strings.Contains(s, "tls_inspect") || strings.Contains(s, "no_route") {
			t.Errorf("a UDP listener exports %s", s)
		}
	}
}

// TestTLSRouteProxyV2Authority: with proxy_protocol = "v2" the header
// before the hello carries the server name as a PP2_TYPE_AUTHORITY TLV,
// and the hello follows it unchanged.
func TestTLSRouteProxyV2Authority(t *testing.T) {
	type seen struct {
		authority string
		rest      []byte
		err       error
	}
	got := make(chan seen, 1)
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		hdr, err := proxyproto.Read(r)
		if err != nil {
			got <- seen{err: err}
			return
		}
		var s seen
		tlvs, err := hdr.TLVs()
		for _, tlv := range tlvs {
			if tlv.Type == proxyproto.PP2_TYPE_AUTHORITY {
				s.authority = string(tlv.Value)
			}
		}
		s.rest, s.err = io.ReadAll(r)
		if s.err == nil {
			s.err = err
		}
		got <- s
	})
	h := startServer(t, `
[listeners.tls]
bind = "127.0.0.1:0"
  [[listeners.tls.routes]]
  sni = ["*.example.com"]
  pool = "v2"
`+poolTOML("v2", `proxy_protocol = "v2"`, be.Addr))
	hello := clientHello(t, pq(&tls.Config{ServerName: "Www.Example.com"}))
	c := h.dial("tls")
	c.Write(hello)
	c.CloseWrite()
	select {
	case s := <-got:
		if s.err != nil {
			t.Fatal(s.err)
		}
		if s.authority != "www.example.com" {
			t.Errorf("AUTHORITY TLV %q, want www.example.com", s.authority)
		}
		if !bytes.Equal(s.rest, hello) {
			t.Errorf("after the header the backend read %d bytes, want the %d of the hello, unchanged", len(s.rest), len(hello))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the backend saw nothing")
	}
}

// TestTLSRouteReload: a reload that changes the routes keeps the
// listener's socket and every open connection; new connections follow
// the new routes.
func TestTLSRouteReload(t *testing.T) {
	a := newRouteBackend(t, "a.example.com")
	b := newRouteBackend(t, "b.example.com")
	addr := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	conf := func(pool string) string {
		return `
[listeners.tls]
bind = "` + addr + `"
  [[listeners.tls.routes]]
  sni = ["api.example.com"]
  pool = "` + pool + `"
` + poolTOML("a", "", a.addr) + poolTOML("b", "", b.addr)
	}
	h := startServer(t, conf("a"))

	// A connection routed to a, handshake done, request not yet sent.
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(30 * time.Second))
	open := tls.Client(raw, &tls.Config{ServerName: "api.example.com", InsecureSkipVerify: true})
	if err := open.Handshake(); err != nil {
		t.Fatal(err)
	}

	// Same bind, the route now goes to b.
	cfg, err := config.Parse("test.toml", []byte(conf("b")))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Reload(cfg); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if got := h.addr("tls"); got != addr {
		t.Fatalf("listener moved from %s to %s", addr, got)
	}
	body, _, _ := tlsGet(t, addr, &tls.Config{ServerName: "api.example.com"}, nil)
	if !strings.HasPrefix(body, "b.example.com") {
		t.Fatalf("a new connection after the reload went to %q, want b", body)
	}
	fmt.Fprintf(open, "GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
	resp, err := io.ReadAll(open)
	if err != nil || !strings.HasSuffix(string(resp), "a.example.com ") {
		t.Fatalf("the connection open across the reload answered %q, %v; want a's answer", resp, err)
	}
}

// TestTLSRoutePoolRefresh: a pool used only through a route gets a new
// generation when its backend set changes (here through the API), and the
// route's new connections follow it.
func TestTLSRoutePoolRefresh(t *testing.T) {
	a := newRouteBackend(t, "a.example.com")
	b := newRouteBackend(t, "b.example.com")
	h := startServer(t, `
[listeners.tls]
bind = "127.0.0.1:0"
  [[listeners.tls.routes]]
  sni = ["api.example.com"]
  pool = "api"
`+poolTOML("api", "", a.addr))
	get := func() string {
		body, _, _ := tlsGet(t, h.addr("tls"), &tls.Config{ServerName: "api.example.com"}, nil)
		name, _, _ := strings.Cut(body, " ")
		return name
	}
	if got := get(); got != "a.example.com" {
		t.Fatalf("before: %q", got)
	}
	if _, err := h.srv.AddBackend("api", BackendSpec{Address: b.addr, Weight: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.srv.RemoveBackend("api", a.addr); err == nil {
		t.Fatal("removing a config backend through the API should fail")
	}
	if _, err := h.srv.SetBackendAdmin("api", a.addr, balancer.Disabled); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got := get(); got != "b.example.com" {
			t.Fatalf("after the refresh: %q, want b (the API's backend)", got)
		}
	}
}

// TestTLSRouteAfterProxyHeader: on a listener that takes PROXY headers,
// the header comes first, then the ClientHello is read and routed; the
// client the header names is the one the access log shows.
func TestTLSRouteAfterProxyHeader(t *testing.T) {
	api := newRouteBackend(t, "api.example.com")
	core, logs := observer.New(zap.InfoLevel)
	h := startServerLog(t, `
[listeners.tls]
bind = "127.0.0.1:0"
accept_proxy_protocol = true
trusted_proxies = ["127.0.0.1"]
  [[listeners.tls.routes]]
  sni = ["api.example.com"]
  pool = "api"
`+poolTOML("api", "", api.addr), core)
	raw, err := net.DialTimeout("tcp", h.addr("tls"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(30 * time.Second))
	src := netip.MustParseAddrPort("192.0.2.7:4242")
	dst := netip.MustParseAddrPort("192.0.2.1:443")
	if _, err := raw.Write(proxyheader.AppendV2(nil, src, dst, false)); err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, &tls.Config{ServerName: "api.example.com", InsecureSkipVerify: true})
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
	resp, err := io.ReadAll(tc)
	if err != nil || !strings.HasSuffix(string(resp), "api.example.com ") {
		t.Fatalf("answer %q, %v", resp, err)
	}
	if !bytes.Equal(tc.ConnectionState().PeerCertificates[0].Raw, api.cert) {
		t.Fatal("not the backend's certificate")
	}
	raw.Close() // the connection ends: its access log line follows
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		for _, e := range logs.FilterMessage("connection").All() {
			if m := e.ContextMap(); m["client"] == src.String() && m["sni"] == "api.example.com" {
				return true, ""
			}
		}
		return false, "no access log line for the client the PROXY header named"
	})
}
