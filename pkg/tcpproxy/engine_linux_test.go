package tcpproxy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"golang.org/x/sys/unix"
)

// The event loops (engine_linux.go): what a goroutine per direction did
// not have to do by itself — writers stalled by a slow reader, a socket
// that hangs up while no direction uses it, no goroutine per idle
// connection, and the move of a bulk transfer to the splicing path.

// TestLoopIdleConnectionsHoldNoGoroutine: connections resting in the loops
// cost no goroutine of the proxy (the goroutine path had two each).
func TestLoopIdleConnectionsHoldNoGoroutine(t *testing.T) {
	const n = 100
	be := lbtest.NewTCP(t, lbtest.Echo) // one goroutine per connection, its own
	s := makeSide(t, be.Addr, 0, 0)
	base := runtime.NumGoroutine()
	clients := make([]*net.TCPConn, 0, n)
	for i := 0; i < n; i++ {
		c := s.dial(t, func(tcpproxy.End) {})
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != byte(i) {
			t.Fatalf("connection %d: echo %v %v", i, b, err)
		}
		clients = append(clients, c)
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		return s.reg.Len() == n, fmt.Sprintf("%d connections in the registry, want %d", s.reg.Len(), n)
	})
	for _, h := range s.reg.Conns(nil) {
		if !tcpproxy.InLoop(h) {
			t.Fatal("an idle connection is not in an event loop")
		}
	}
	// n for the backend's handlers; a goroutine per direction would add 2n.
	if grew := runtime.NumGoroutine() - base; grew > n+n/4 {
		t.Fatalf("%d goroutines more for %d idle connections (the backend has %d): want no goroutine per connection in the proxy", grew, n, n)
	}
	for _, c := range clients {
		c.Close()
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		return s.reg.Len() == 0, fmt.Sprintf("%d connections still open", s.reg.Len())
	})
}

// TestLoopStalledWriters drives both directions into stalled writes inside
// the loop: the client sends 1,000-byte writes while it reads nothing, so
// the echo backend's replies back up to the client, the backend stops
// reading, and the client's requests back up in turn. Once both
// directions hold bytes (busy odd) the client stops sending and reads:
// every byte comes back in order, and the backend received them all.
func TestLoopStalledWriters(t *testing.T) {
	tcpproxy.KeepBulkInLoop(t)
	sums := make(chan lbtest.Sum, 1)
	echo := lbtest.HashingEcho(sums)
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		c.SetReadBuffer(64 << 10) // small queues: the stall comes sooner
		c.SetWriteBuffer(64 << 10)
		echo(c)
	})
	s := makeSide(t, be.Addr, 0, 0)
	c, h, ends := s.open(t)
	c.SetReadBuffer(64 << 10)
	c.SetWriteBuffer(64 << 10)
	const most = 48 << 20 // far more than the sockets between can queue
	data := pattern(most, 7)
	stop := make(chan struct{})
	sent := make(chan int, 1)
	var wrote atomic.Int64
	go func() {
		off := 0
		defer func() { c.CloseWrite(); sent <- off }()
		for off < most {
			select {
			case <-stop:
				return
			default:
			}
			n, err := c.Write(data[off:min(off+1000, most)])
			off += n
			wrote.Store(int64(off))
			if err != nil {
				return
			}
		}
	}()
	lbtest.Until(t, 30*time.Second, func() (bool, string) {
		in, out := tcpproxy.InBusy(h), tcpproxy.OutBusy(h)
		return in&1 == 1 && out&1 == 1, fmt.Sprintf("busy in %d out %d, in a loop %v, client wrote %d: want both odd (holding bytes)",
			in, out, tcpproxy.InLoop(h), wrote.Load())
	})
	close(stop)
	if !tcpproxy.InLoop(h) {
		t.Fatal("the connection left the loop")
	}
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal("client read:", err)
	}
	n := <-sent
	if n == most {
		t.Fatal("all was sent without a stall")
	}
	if !bytes.Equal(got, data[:n]) {
		t.Fatalf("client got %d bytes back, want the %d sent, unchanged", len(got), n)
	}
	sum := <-sums
	if sum.N != int64(n) || sum.SHA256 != sha256.Sum256(data[:n]) {
		t.Fatalf("backend got %d bytes (sum match %v), want %d", sum.N, sum.SHA256 == sha256.Sum256(data[:n]), n)
	}
	waitEnd(t, ends, tcpproxy.EndDone)
}

// TestLoopHangUpWhileUnused: a client that finished sending and then
// resets, while the backend is silent, uses neither direction of its
// socket at that moment (nothing to read, nothing to write to it): the
// loop still sees the reset, ends the connection as the client's failure
// and resets the backend, instead of waiting for the backend to speak.
func TestLoopHangUpWhileUnused(t *testing.T) {
	eof := make(chan struct{})
	conn := make(chan *net.TCPConn, 1)
	release := make(chan struct{})
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		io.Copy(io.Discard, c) // until the client's FIN
		conn <- c
		close(eof)
		<-release
	})
	defer close(release)
	s := makeSide(t, be.Addr, 0, 0)
	c, h, ends := s.open(t)
	if !tcpproxy.InLoop(h) {
		t.Fatal("not in an event loop")
	}
	c.Write([]byte("bye"))
	c.CloseWrite()
	<-eof
	bc := <-conn
	c.SetLinger(0)
	c.Close()
	waitEnd(t, ends, tcpproxy.EndClientError)
	// The backend had the FIN already (CLOSE_WAIT); a reset takes it to
	// CLOSE, a plain close would leave it there.
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		st := tcpState(t, bc)
		return st == tcpClose, fmt.Sprintf("backend socket in TCP state %d, want %d (reset)", st, tcpClose)
	})
}

const tcpClose = 7 // TCP_CLOSE in the kernel's TCP states

// tcpState returns the kernel's TCP state of c (TCP_INFO).
func tcpState(t *testing.T, c *net.TCPConn) uint8 {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st uint8
	raw.Control(func(fd uintptr) {
		ti, err := unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO)
		if err != nil {
			t.Error(err)
			return
		}
		st = ti.State
	})
	return st
}

// TestLoopBulkSplices: a bulk transfer leaves the loop for the splicing
// path, and every byte arrives.
func TestLoopBulkSplices(t *testing.T) {
	sums := make(chan lbtest.Sum, 1)
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		h := sha256.New()
		n, err := io.Copy(h, c)
		c.CloseWrite()
		var sum lbtest.Sum
		copy(sum.SHA256[:], h.Sum(nil))
		sum.N, sum.Err = n, err
		sums <- sum
	})
	s := makeSide(t, be.Addr, 0, 0)
	c, h, ends := s.open(t)
	const total = 32 << 20
	data := pattern(total, 9)
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	if tcpproxy.InLoop(h) {
		t.Fatal("a bulk transfer stayed in the loop")
	}
	c.CloseWrite()
	io.Copy(io.Discard, c)
	waitEnd(t, ends, tcpproxy.EndDone)
	sum := <-sums
	if sum.N != total || sum.SHA256 != sha256.Sum256(data) {
		t.Fatalf("backend got %d bytes (sum match %v), want %d", sum.N, sum.SHA256 == sha256.Sum256(data), total)
	}
	if in, _ := tcpproxy.Bursts(h); in == 0 {
		t.Fatal("no splice burst: the bulk transfer did not splice")
	}
}

// TestLoopKillWhileStalled: a kill ends a connection whose directions hold
// bytes in the loop, with a reset on both sides.
func TestLoopKillWhileStalled(t *testing.T) {
	tcpproxy.KeepBulkInLoop(t)
	release := make(chan struct{})
	defer close(release)
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		c.SetReadBuffer(64 << 10)
		<-release // reads nothing
	})
	s := makeSide(t, be.Addr, 0, 0)
	c, h, ends := s.open(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		b := make([]byte, 1000)
		for i := 0; i < 50_000 && ctx.Err() == nil; i++ {
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}()
	lbtest.Until(t, 20*time.Second, func() (bool, string) {
		return tcpproxy.InBusy(h)&1 == 1, "the client's bytes are not held yet"
	})
	if n := s.reg.Kill(tcpproxy.EndKilled); n != 1 {
		t.Fatalf("killed %d, want 1", n)
	}
	waitEnd(t, ends, tcpproxy.EndKilled)
	// A reset takes the client's socket to CLOSE; a FIN would leave it in
	// CLOSE_WAIT. (Reading would not tell: the writer may have taken the
	// reset's error already, and a read then sees EOF.)
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		st := tcpState(t, c)
		return st == tcpClose, fmt.Sprintf("client socket in TCP state %d, want %d (reset)", st, tcpClose)
	})
}

// TestLoopNoAllocationPerMessage: a request and its reply through the loop
// allocate nothing (the client and the echo backend do not either).
func TestLoopNoAllocationPerMessage(t *testing.T) {
	be := lbtest.NewTCP(t, echo64)
	s := makeSide(t, be.Addr, time.Hour, 0)
	c, h, _ := s.open(t)
	msg, reply := make([]byte, 64), make([]byte, 64)
	exchange := func() {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 100; i++ { // warm up: pools, the loop's tables
		exchange()
	}
	if !tcpproxy.InLoop(h) {
		t.Fatal("not in an event loop")
	}
	if n := testing.AllocsPerRun(2000, exchange); n >= 0.05 {
		t.Fatalf("%.2f allocations per request and reply, want 0", n)
	}
}
