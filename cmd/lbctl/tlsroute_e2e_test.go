package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// helloWriter records what a TLS client writes and fails its first read,
// so that Handshake stops right after sending the ClientHello.
type helloWriter struct {
	net.Conn // nil: only the methods below are called
	buf      bytes.Buffer
}

func (c *helloWriter) Write(b []byte) (int, error)      { return c.buf.Write(b) }
func (c *helloWriter) Read([]byte) (int, error)         { return 0, io.EOF }
func (c *helloWriter) Close() error                     { return nil }
func (c *helloWriter) SetDeadline(time.Time) error      { return nil }
func (c *helloWriter) SetReadDeadline(time.Time) error  { return nil }
func (c *helloWriter) SetWriteDeadline(time.Time) error { return nil }
func (c *helloWriter) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *helloWriter) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

// TestSplicePathRouted is TestSplicePath for a connection routed by its
// TLS server name: lbctl reads the ClientHello (a post-quantum one, more
// than one segment), writes it to the route's backend, and then moves the
// 4 MiB that follow each way with splice(2), as for any connection. The
// routes come in by a reload (SIGHUP) of the running binary.
func TestSplicePathRouted(t *testing.T) {
	strace := lbtest.Binary(t, "strace", "/usr/bin/strace", "strace")
	be := lbtest.NewTCP(t, lbtest.Echo)
	d := startProc(t, nil, "", be.Addr)

	// Same listener, now served by a route only.
	conf := fmt.Sprintf(`shutdown_timeout = "5s"
[log]
level = "debug"
[admin]
bind = %q
[listeners.web]
bind = %q
tls_inspect_timeout = "5s"
  [[listeners.web.routes]]
  sni = ["bulk.example.com"]
  pool = "web"
[pools.web]
  [pools.web.health]
  check = "none"
  [[pools.web.backends]]
  address = %q
`, d.admin, d.front, be.Addr)
	if err := os.WriteFile(d.config, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	lbtest.Eventually(t, 10*time.Second, func() bool {
		return d.metric(`lbctl_config_reloads_total{result="success"} 1`)
	}, "reload with routes not applied")

	hw := &helloWriter{}
	_ = tls.Client(hw, &tls.Config{ServerName: "bulk.example.com", InsecureSkipVerify: true,
		CurvePreferences: []tls.CurveID{tls.X25519MLKEM768, tls.X25519}}).Handshake()
	hello := hw.buf.Bytes()
	if len(hello) <= 1460 {
		t.Fatalf("hello of %d bytes, want a post-quantum one over 1460", len(hello))
	}
	// An unrouted name is refused: the route, not a default, serves.
	hw = &helloWriter{}
	_ = tls.Client(hw, &tls.Config{ServerName: "other.example.com", InsecureSkipVerify: true}).Handshake()
	if got := roundTrip(t, d.front, hw.buf.Bytes()); len(got) != 0 {
		t.Fatalf("an unrouted name got %d bytes back", len(got))
	}
	lbtest.Eventually(t, 10*time.Second, func() bool {
		return d.metric(`lbctl_connections_rejected_total{listener="web",reason="no_route"} 1`)
	}, "no_route not counted")

	msg := append(hello, bytes.Repeat([]byte("0123456789abcdef"), 1<<18)...) // the hello, then 4 MiB
	n := splicesDuring(t, strace, d.cmd.Process.Pid, func() {
		got := roundTrip(t, d.front, msg)
		if sha256.Sum256(got) != sha256.Sum256(msg) {
			t.Fatalf("routed echo under strace: %d bytes back, want %d identical", len(got), len(msg))
		}
	})
	if n < 4 {
		t.Fatalf("%d splice calls traced for a routed connection moving 4 MiB each way, want many", n)
	}
	if !d.metric(`lbctl_connections_total{backend="` + be.Addr + `",listener="web",pool="web"} 1`) {
		t.Error("the routed connection is not counted under pool web")
	}
}
