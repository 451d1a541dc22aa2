package server

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
)

// tlsCheckBackend is a real TLS server (crypto/tls, its own self-signed
// certificate) that answers one HTTP request per connection with code and
// records the server name of every ClientHello.
type tlsCheckBackend struct {
	*lbtest.Backend
	code atomic.Int32
	mu   sync.Mutex
	sni  []string
}

// selfSignedFor is a certificate for name signed by its own key, as a
// backend with a private certificate has.
func selfSignedFor(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func newTLSCheckBackend(t *testing.T) *tlsCheckBackend {
	t.Helper()
	b := &tlsCheckBackend{}
	b.code.Store(200)
	cfg := &tls.Config{
		Certificates: []tls.Certificate{selfSignedFor(t, "check.test")},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			b.mu.Lock()
			b.sni = append(b.sni, h.ServerName)
			b.mu.Unlock()
			return nil, nil
		},
	}
	b.Backend = lbtest.NewTCP(t, func(c *net.TCPConn) {
		tc := tls.Server(c, cfg)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		req, err := http.ReadRequest(bufio.NewReader(tc))
		if err != nil {
			return // a tls check: handshake only
		}
		req.Body.Close()
		fmt.Fprintf(tc, "HTTP/1.1 %d x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", b.code.Load())
		tc.Close()
	})
	return b
}

// names returns the server names seen so far.
func (b *tlsCheckBackend) names() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.sni...)
}

// TestHealthTLSChecks: tls and https checks against a real TLS backend
// follow its state, and send the server name configured (or none for an
// IP backend without server_name).
func TestHealthTLSChecks(t *testing.T) {
	common := []string{`interval = "30ms"`, `timeout = "5s"`, "rise = 2", "fall = 2"}
	t.Run("https follows the status, sends server_name", func(t *testing.T) {
		be := newTLSCheckBackend(t)
		be.code.Store(503)
		h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", be.Addr)+
			healthTOML(append([]string{`check = "https"`, `server_name = "API.example.test"`, `expect_status = "2xx"`}, common...)...))
		waitHealth(h, be.Addr, "down", 10*time.Second)
		be.code.Store(200)
		waitHealth(h, be.Addr, "up", 10*time.Second)
		for _, n := range be.names() {
			if n != "api.example.test" {
				t.Fatalf("a check sent SNI %q, want api.example.test", n)
			}
		}
	})
	t.Run("tls up while TLS answers, down when the backend goes", func(t *testing.T) {
		be := newTLSCheckBackend(t)
		h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", be.Addr)+
			healthTOML(append([]string{`check = "tls"`}, common...)...))
		lbtest.Eventually(t, 10*time.Second, func() bool { return checksCounted(h, be.Addr, "success") >= 2 }, "no tls check passed")
		if got := healthOf(h, be.Addr); got != "up" {
			t.Fatalf("health %s after passing checks, want up", got)
		}
		for _, n := range be.names() {
			if n != "" {
				t.Fatalf("a check of an IP backend without server_name sent SNI %q, want none", n)
			}
		}
		be.Close()
		waitHealth(h, be.Addr, "down", 10*time.Second)
	})
	t.Run("tls down against a plain TCP backend", func(t *testing.T) {
		plain := lbtest.NewTCP(t, lbtest.Named("plain"))
		h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", plain.Addr)+
			healthTOML(append([]string{`check = "tls"`}, common...)...))
		waitHealth(h, plain.Addr, "down", 10*time.Second)
	})
}

// TestCheckServerName: which SNI a check sends when server_name is not set.
func TestCheckServerName(t *testing.T) {
	tests := []struct {
		name         string
		hc           config.Health
		backend, src string
		want         string
	}{
		{"server_name wins", config.Health{Check: "https", ServerName: "a.test", Host: "b.test"}, "c.test:443", "config", "a.test"},
		{"https: host's name", config.Health{Check: "https", Host: "b.test:8443"}, "c.test:443", "config", "b.test"},
		{"https: host an IP, backend's name", config.Health{Check: "https", Host: "10.0.0.1"}, "c.test:443", "config", "c.test"},
		{"tls ignores host", config.Health{Check: "tls", Host: "b.test"}, "c.test:443", "config", "c.test"},
		{"dns source name", config.Health{Check: "tls"}, "10.0.0.5:443", "dns:svc.internal", "svc.internal"},
		{"an IP backend: none", config.Health{Check: "tls"}, "10.0.0.5:443", "config", ""},
		{"an IPv6 backend: none", config.Health{Check: "https"}, "[2001:db8::1]:443", "api", ""},
		{"not a TLS check", config.Health{Check: "http", ServerName: "a.test"}, "c.test:443", "config", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			be := &backend{b: balancer.NewBackend(tt.backend), source: tt.src}
			if got := checkServerName(tt.hc, be); got != tt.want {
				t.Errorf("server name %q, want %q", got, tt.want)
			}
		})
	}
}
