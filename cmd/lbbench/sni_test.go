package main

import (
	"bytes"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
)

// TestClientHello: the hello lbbench sends is a whole, real one, carrying
// its server name, that a TLS server parses.
func TestClientHello(t *testing.T) {
	hellos, err := sniHellos()
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range hellos {
		if !bytes.Contains(h, []byte(sniNames[i])) {
			t.Errorf("hello %d does not carry %s", i, sniNames[i])
		}
		// A crypto/tls server reads it and sees the name.
		client, server := net.Pipe()
		got := make(chan string, 1)
		go func() {
			defer server.Close()
			srv := tls.Server(server, &tls.Config{GetConfigForClient: func(ch *tls.ClientHelloInfo) (*tls.Config, error) {
				got <- ch.ServerName
				return nil, net.ErrClosed // stop here
			}})
			srv.SetDeadline(time.Now().Add(5 * time.Second))
			_ = srv.Handshake()
		}()
		client.SetDeadline(time.Now().Add(5 * time.Second))
		client.Write(h)
		select {
		case name := <-got:
			if name != sniNames[i] {
				t.Errorf("server saw SNI %q, want %q", name, sniNames[i])
			}
		case <-time.After(5 * time.Second):
			t.Errorf("server never parsed hello %d", i)
		}
		client.Close()
	}
}

// TestReadHelloAcrossRecords: a hello split over two records is read whole.
func TestReadHelloAcrossRecords(t *testing.T) {
	h, err := clientHello("x.test")
	if err != nil {
		t.Fatal(err)
	}
	body := h[5:]
	split := append([]byte{22, 3, 1, 0, 10}, body[:10]...)
	rest := body[10:]
	split = append(append(split, 22, 3, 1, byte(len(rest)>>8), byte(len(rest))), rest...)
	got, err := readHello(bytes.NewReader(append(split, 23, 3, 3, 0, 1, 0))) // and what follows
	if err != nil || !bytes.Equal(got, split) {
		t.Fatalf("readHello = %d bytes, %v; want the %d bytes of both records", len(got), err, len(split))
	}
	if _, err := readHello(bytes.NewReader([]byte("GET / HTTP/1.1\r\n\r\n"))); err == nil {
		t.Error("readHello accepted HTTP")
	}
}

func TestMeasureSNIAgainstEchoBackends(t *testing.T) {
	b := startTestBackends(t)
	hellos, err := sniHellos()
	if err != nil {
		t.Fatal(err)
	}
	r := measureSNI(b.Echo, hellos, 4, shortWindow())
	if r.Errors != 0 || r.Count == 0 || r.Hist.Count() != r.Count {
		t.Errorf("sni: %d exchanges, %d errors, %d latencies", r.Count, r.Errors, r.Hist.Count())
	}
	if err := probeSNI(b.Echo[0], hellos[0]); err != nil {
		t.Errorf("probeSNI against an echo backend: %v", err)
	}
}

// TestLbctlConfigValidates: lbctl itself accepts the generated config,
// routes included.
func TestLbctlConfigValidates(t *testing.T) {
	cfg, err := config.Parse("lbctl.toml", []byte(lbctlConfig(testParams(t))))
	if err != nil {
		t.Fatalf("lbctl rejects the generated config:\n%v", err)
	}
	for _, l := range cfg.Listeners {
		if l.Name == "sni" && len(l.Routes) != len(sniNames) {
			t.Errorf("listener sni has %d routes, want %d", len(l.Routes), len(sniNames))
		}
	}
}
