package health

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// selfSigned returns a certificate for name signed by its own key: what a
// backend with a private certificate presents. The checks never verify it.
func selfSigned(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsServer is a loopback crypto/tls server: it completes the handshake of
// every connection, records the server name and ALPN protocols the client
// offered, then hands the TLS connection to handle.
type tlsServer struct {
	*testServer
	mu    sync.Mutex
	hello []*tls.ClientHelloInfo // one per handshake, in order
	done  int                    // handshakes completed
	ended chan struct{}          // a signal per completed handshake
}

func newTLSServer(t *testing.T, handle func(net.Conn)) *tlsServer {
	t.Helper()
	s := &tlsServer{ended: make(chan struct{}, 100)}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{selfSigned(t, "backend.test")},
		NextProtos:   []string{"http/1.1"},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			s.mu.Lock()
			s.hello = append(s.hello, h)
			s.mu.Unlock()
			return nil, nil
		},
	}
	s.testServer = newTestServer(t, "127.0.0.1:0", func(conn net.Conn) {
		tc := tls.Server(conn, cfg)
		tc.SetDeadline(time.Now().Add(liveTimeout))
		if err := tc.Handshake(); err != nil {
			return
		}
		s.mu.Lock()
		s.done++
		s.mu.Unlock()
		s.ended <- struct{}{}
		handle(tc)
		tc.Close()
	})
	return s
}

// last returns the last ClientHello the server saw and how many handshakes
// completed. The client's handshake ends before the server's (TLS 1.3), so
// it first waits for the server to finish the one a check started.
func (s *tlsServer) last(t *testing.T) (*tls.ClientHelloInfo, int) {
	t.Helper()
	select {
	case <-s.ended:
	case <-time.After(liveTimeout):
		t.Error("the backend completed no handshake")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.hello) == 0 {
		return nil, s.done
	}
	return s.hello[len(s.hello)-1], s.done
}

func TestProbeTLS(t *testing.T) {
	srv := newTLSServer(t, closeAtOnce)
	tests := []struct {
		name, serverName string
	}{
		{"with server name", "Backend.Example.test"},
		{"without server name", ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustProber(t, Spec{Kind: KindTLS, ServerName: tt.serverName, Timeout: liveTimeout})
			if err := p.Probe(context.Background(), srv.Addr()); err != nil {
				t.Fatalf("got %v, want success", err)
			}
			hello, done := srv.last(t)
			if hello == nil || done != i+1 {
				t.Fatalf("server completed %d handshakes, want %d", done, i+1)
			}
			// The check sends the name in lower case (DNS names are
			// case-insensitive; servers compare them lower-cased).
			if want := strings.ToLower(tt.serverName); hello.ServerName != want {
				t.Errorf("SNI the backend saw: %q, want %q", hello.ServerName, want)
			}
			if len(hello.SupportedProtos) != 0 {
				t.Errorf("tls check offered ALPN %q, want none", hello.SupportedProtos)
			}
		})
	}
}

// TestProbeTLSFails: a backend that does not complete a TLS handshake is
// down, whatever it does instead.
func TestProbeTLSFails(t *testing.T) {
	plain := newTestServer(t, "127.0.0.1:0", rawReply("HTTP/1.1 400 Bad Request\r\n\r\n"))
	closes := newTestServer(t, "127.0.0.1:0", closeAtOnce)
	resets := newTestServer(t, "127.0.0.1:0", func(c net.Conn) {
		c.Read(make([]byte, 1)) // the hello has arrived
		c.(*net.TCPConn).SetLinger(0)
	})
	tests := []struct {
		name, addr, want string
	}{
		{"plain TCP server answers", plain.Addr(), "TLS handshake"},
		{"server closes at once", closes.Addr(), "TLS handshake"},
		{"server resets", resets.Addr(), "TLS handshake"},
		{"closed port", closedAddr(t, "tcp"), "connection refused"},
	}
	for _, kind := range []Kind{KindTLS, KindHTTPS} {
		for _, tt := range tests {
			t.Run(string(kind)+"/"+tt.name, func(t *testing.T) {
				err := mustProber(t, Spec{Kind: kind, Timeout: liveTimeout}).Probe(context.Background(), tt.addr)
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("got %v, want an error containing %q", err, tt.want)
				}
				if o := outcomeOf(err); o != Failure {
					t.Errorf("outcome %v, want failure (a verdict on the backend)", o)
				}
			})
		}
	}
}

func TestProbeHTTPS(t *testing.T) {
	var (
		mu   sync.Mutex
		got  *http.Request
		code = 200
	)
	srv := newTLSServer(t, httpStatus(
		func() int { mu.Lock(); defer mu.Unlock(); return code },
		func(r *http.Request) { mu.Lock(); got = r; mu.Unlock() }))
	tests := []struct {
		name     string
		status   int
		spec     Spec
		wantErr  string
		wantSNI  string
		wantHost string
	}{
		{"200 with server name", 200, Spec{ServerName: "api.example.test", Path: "/healthz"}, "", "api.example.test", "api.example.test"},
		{"host and server name apart", 200, Spec{ServerName: "api.example.test", Host: "vhost.internal"}, "", "api.example.test", "vhost.internal"},
		{"no server name: Host is the address", 204, Spec{}, "", "", srv.Addr()},
		{"status mismatch", 503, Spec{ServerName: "api.example.test"}, "HTTP 503", "api.example.test", "api.example.test"},
		{"outside an exact list", 200, Spec{StatusOK: StatusCodes(204)}, "HTTP 200", "", srv.Addr()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			code, got = tt.status, nil
			mu.Unlock()
			tt.spec.Kind, tt.spec.Timeout = KindHTTPS, liveTimeout
			err := mustProber(t, tt.spec).Probe(context.Background(), srv.Addr())
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("got %v, want success", err)
			case tt.wantErr != "":
				var se *StatusError
				if !errors.As(err, &se) || err.Error() != tt.wantErr {
					t.Fatalf("got %v, want *StatusError %q", err, tt.wantErr)
				}
			}
			hello, _ := srv.last(t)
			if hello == nil || hello.ServerName != tt.wantSNI {
				t.Errorf("SNI the backend saw: %v, want %q", hello, tt.wantSNI)
			}
			if hello != nil && (len(hello.SupportedProtos) != 1 || hello.SupportedProtos[0] != "http/1.1") {
				t.Errorf("ALPN offered: %q, want [http/1.1]", hello.SupportedProtos)
			}
			mu.Lock()
			r := got
			mu.Unlock()
			if r == nil {
				t.Fatal("backend saw no request over TLS")
			}
			wantPath := tt.spec.Path
			if wantPath == "" {
				wantPath = "/"
			}
			if r.RequestURI != wantPath || r.Host != tt.wantHost {
				t.Errorf("request %s with Host %q, want %s with Host %q", r.RequestURI, r.Host, wantPath, tt.wantHost)
			}
		})
	}
}

// TestProbeTLSTimeout: a backend that accepts and never answers the hello
// fails by timeout, within the timeout.
func TestProbeTLSTimeout(t *testing.T) {
	const timeout = 1500 * time.Millisecond
	hold := newTestServer(t, "127.0.0.1:0", silent)
	for _, kind := range []Kind{KindTLS, KindHTTPS} {
		t.Run(string(kind), func(t *testing.T) {
			start := time.Now()
			err := mustProber(t, Spec{Kind: kind, Timeout: timeout}).Probe(context.Background(), hold.Addr())
			d := time.Since(start)
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("got %v, want a timeout", err)
			}
			if d < timeout || d > timeout+slack {
				t.Errorf("check took %v, want about %v", d, timeout)
			}
		})
	}
}

func TestNewProberRejectsServerName(t *testing.T) {
	for _, name := range []string{"10.0.0.1", "::1", "a b", "bad..name", "-x.\x00", strings.Repeat("a", 64) + ".test"} {
		for _, kind := range []Kind{KindTLS, KindHTTPS} {
			if _, err := NewProber(Spec{Kind: kind, ServerName: name}); err == nil || !strings.Contains(err.Error(), "server name") {
				t.Errorf("%s with server name %q: got %v, want a server name error", kind, name, err)
			}
		}
	}
	for _, name := range []string{"api.example.com", "localhost", "svc_a.internal", "example.com."} {
		if _, err := NewProber(Spec{Kind: KindTLS, ServerName: name}); err != nil {
			t.Errorf("server name %q: %v", name, err)
		}
	}
}
