package main

import (
	"bytes"
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// parsedSNI hands wire to a crypto/tls server and returns the server name
// it parsed ("" and false when it could not).
func parsedSNI(t *testing.T, wire []byte) (string, bool) {
	t.Helper()
	client, server := net.Pipe()
	defer client.Close()
	got := make(chan string, 1)
	go func() {
		defer server.Close()
		srv := tls.Server(server, &tls.Config{GetConfigForClient: func(ch *tls.ClientHelloInfo) (*tls.Config, error) {
			got <- ch.ServerName
			return nil, net.ErrClosed
		}})
		srv.SetDeadline(time.Now().Add(5 * time.Second))
		_ = srv.Handshake()
		close(got)
	}()
	client.SetDeadline(time.Now().Add(5 * time.Second))
	go client.Write(wire)
	name, ok := <-got
	return name, ok
}

// TestHelloShapes: every shape sends a hello a TLS server still parses, in
// the pieces it claims, and the server name moves where SNILast says.
func TestHelloShapes(t *testing.T) {
	for _, s := range helloShapes {
		t.Run(s.Name, func(t *testing.T) {
			hello, err := helloWith("a.split.test", s.PQ)
			if err != nil {
				t.Fatal(err)
			}
			wire, pieces := shapeWire(hello, s)
			if got := bytes.Join(pieces, nil); !bytes.Equal(got, wire) {
				t.Fatalf("pieces do not add up to the wire bytes")
			}
			if (s.Chunks > 0 || s.FirstChunk > 0) && len(pieces) < 2 {
				t.Errorf("%d pieces, want several", len(pieces))
			}
			if s.Truncate > 0 {
				if len(wire) != s.Truncate {
					t.Errorf("cut short to %d bytes, want %d", len(wire), s.Truncate)
				}
				return
			}
			if name, ok := parsedSNI(t, wire); !ok || name != "a.split.test" {
				t.Errorf("a TLS server parsed server name %q (%v), want a.split.test", name, ok)
			}
			if s.SNILast {
				if i := bytes.Index(wire, []byte("a.split.test")); i < 1448 {
					t.Errorf("server name at byte %d, want it in the second segment (>= 1448)", i)
				}
			}
		})
	}
}

// TestSendShapedAgainstBackends: the client and backend halves agree on
// what "routed right" and "fell to fallback" mean, with no proxy between.
func TestSendShapedAgainstBackends(t *testing.T) {
	a, err := startHelloBackend("a")
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	fb, err := startHelloBackend("fallback")
	if err != nil {
		t.Fatal(err)
	}
	defer fb.close()
	hello, err := helloWith("a.split.test", true)
	if err != nil {
		t.Fatal(err)
	}
	shape := helloShape{Records: 100, Chunks: 300, Pause: time.Millisecond}
	if out, d := sendShaped(a.addr(), hello, shape, "a"); out != outRouted {
		t.Errorf("to backend a: %s (%s), want %s", out, d, outRouted)
	}
	if out, d := sendShaped(fb.addr(), hello, shape, "a"); out != outFallback {
		t.Errorf("to the fallback: %s (%s), want %s", out, d, outFallback)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
	}()
	defer ln.Close()
	if out, _ := sendShaped(ln.Addr().String(), hello, helloShape{}, "a"); out != outClosed {
		t.Errorf("to a server that closes: %s, want %s", out, outClosed)
	}
}
