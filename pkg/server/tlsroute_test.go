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
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
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
		wire = reframeHello(b, c.recordSize)
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

// reframeHello re-frames the handshake bytes of the TLS records in b into
// records of at most size bytes.
func reframeHello(b []byte, size int) []byte {
	var hs []byte
	for len(b) >= 5 {
		n := int(b[3])<<8 | int(b[4])
		hs = append(hs, b[5:5+n]...)
		b = b[5+n:]
	}
	var out []byte
	for len(hs) > 0 {
		k := min(size, len(hs))
		out = append(out, 0x16, 0x03, 0x01, byte(k>>8), byte(k))
		out = append(out, hs[:k]...)
		hs = hs[k:]
	}
	return out
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
