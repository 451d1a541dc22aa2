package server

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// noHealth keeps active checks out of tests that are about the data path.
const noHealth = "[pools.p.health]\ncheck = \"none\"\n"

// TestBulkBothWays sends 64 MiB each way at once and checks the SHA-256 of
// every byte on both ends.
func TestBulkBothWays(t *testing.T) {
	const size = 64 << 20
	sums := make(chan lbtest.Sum, 1)
	be := lbtest.NewTCP(t, lbtest.HashingEcho(sums))
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+noHealth)
	c := h.dial("l")

	var sent [32]byte
	writeErr := make(chan error, 1)
	go func() {
		hs := sha256.New()
		rng := rand.NewChaCha8([32]byte{1, 2, 3})
		buf := make([]byte, 256<<10)
		for n := 0; n < size; n += len(buf) {
			rng.Read(buf)
			hs.Write(buf)
			if _, err := c.Write(buf); err != nil {
				writeErr <- err
				return
			}
		}
		copy(sent[:], hs.Sum(nil))
		writeErr <- c.CloseWrite()
	}()

	hr := sha256.New()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	n, err := io.Copy(hr, c)
	if err != nil {
		t.Fatalf("read back: %v after %d bytes", err, n)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if n != size {
		t.Fatalf("received %d bytes, want %d", n, size)
	}
	var got [32]byte
	copy(got[:], hr.Sum(nil))
	if got != sent {
		t.Fatalf("client received bytes that differ from those sent")
	}
	s := <-sums
	if s.N != size || s.SHA256 != sent {
		t.Fatalf("backend received %d bytes (sha match %v), want %d matching", s.N, s.SHA256 == sent, size)
	}
	// Byte metrics are payload only and exact.
	tm := h.tcpSeries("l", "p", be.Addr)
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		in, out := counter(tm.BytesIn), counter(tm.BytesOut)
		return in == size && out == size, fmt.Sprintf("bytes in %v out %v, want %d each way", in, out, size)
	})
}

// TestHalfClose: the client sends a request and shuts its write side; it
// must still receive the whole response, produced after the backend saw EOF.
func TestHalfClose(t *testing.T) {
	const respSize = 3 << 20
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		req, err := io.ReadAll(c) // until the client's FIN arrives through lbctl
		if err != nil {
			return
		}
		fmt.Fprintf(c, "got %d bytes: %s\n", len(req), req)
		c.Write(bytes.Repeat([]byte("x"), respSize))
		c.CloseWrite()
	})
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+noHealth)
	c := h.dial("l")
	c.Write([]byte("hello"))
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	want := "got 5 bytes: hello\n"
	if !bytes.HasPrefix(got, []byte(want)) || len(got) != len(want)+respSize {
		t.Fatalf("got %d bytes starting %q, want %q + %d bytes", len(got), got[:min(len(got), 40)], want, respSize)
	}
}

// TestHalfCloseFromBackend: the backend finishes first; the client keeps
// sending and the backend still receives every byte.
func TestHalfCloseFromBackend(t *testing.T) {
	received := make(chan int, 1)
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		c.Write([]byte("banner"))
		c.CloseWrite()
		n, _ := io.Copy(io.Discard, c)
		received <- int(n)
	})
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+noHealth)
	c := h.dial("l")
	banner, err := lbtest.ReadAllTimeout(t, c, 5*time.Second) // EOF: the backend's FIN was passed on
	if err != nil || string(banner) != "banner" {
		t.Fatalf("banner %q, %v", banner, err)
	}
	const size = 1 << 20
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatalf("write after the backend's FIN: %v", err)
	}
	c.CloseWrite()
	select {
	case n := <-received:
		if n != size {
			t.Fatalf("backend received %d bytes, want %d", n, size)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("backend never saw EOF")
	}
}

// whoServed connects n times through the listener and counts the answers
// of Named backends.
func whoServed(t *testing.T, h *harness, n int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for i := 0; i < n; i++ {
		c := h.dial("l")
		b, err := lbtest.ReadAllTimeout(t, c, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		counts[string(b)]++
		c.Close()
	}
	return counts
}

func TestRoundRobinWeights(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	b := lbtest.NewTCP(t, lbtest.Named("b"))
	c := lbtest.NewTCP(t, lbtest.Named("c"))
	h := startServer(t, listenerTOML("l", "p", "")+
		poolTOML("p", `algorithm = "round-robin"`, a.Addr+"=3", b.Addr+"=2", c.Addr+"=1")+noHealth)
	got := whoServed(t, h, 60)
	want := map[string]int{"a": 30, "b": 20, "c": 10}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("round-robin 3:2:1 over 60 connections: got %v, want %v", got, want)
	}
}

func TestLeastConnectionsWeights(t *testing.T) {
	// Backends hold connections open, so least-connections sees the load.
	hold := func(name string) lbtest.Handler {
		return func(c *net.TCPConn) {
			c.Write([]byte(name))
			io.Copy(io.Discard, c)
		}
	}
	a := lbtest.NewTCP(t, hold("a"))
	b := lbtest.NewTCP(t, hold("b"))
	h := startServer(t, listenerTOML("l", "p", "")+
		poolTOML("p", `algorithm = "least-connections"`, a.Addr+"=3", b.Addr+"=1")+noHealth)
	counts := map[string]int{}
	buf := make([]byte, 1)
	for i := 0; i < 40; i++ {
		c := h.dial("l")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		counts[string(buf)]++ // the connection stays open: it counts as active
	}
	if counts["a"] != 30 || counts["b"] != 10 {
		t.Fatalf("least-connections with weights 3:1 and 40 held connections: got %v, want a:30 b:10", counts)
	}
}

func TestIPHashStickyAndWeighted(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	b := lbtest.NewTCP(t, lbtest.Named("b"))
	h := startServer(t, listenerTOML("l", "p", "")+
		poolTOML("p", `algorithm = "ip-hash"`, a.Addr+"=3", b.Addr+"=1")+noHealth)
	first := map[string]string{}
	counts := map[string]int{}
	const clients = 400
	for round := 0; round < 2; round++ {
		for i := 0; i < clients; i++ {
			src := fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250)
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
			c, err := d.Dial("tcp", h.addr("l"))
			if err != nil {
				t.Fatal(err)
			}
			got, err := lbtest.ReadAllTimeout(t, c, 5*time.Second)
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
			if round == 0 {
				first[src] = string(got)
				counts[string(got)]++
			} else if first[src] != string(got) {
				t.Fatalf("client %s moved from %s to %s with no change in the pool", src, first[src], got)
			}
		}
	}
	// Weights 3:1 -> about 300:100; allow hashing noise.
	if counts["a"] < 255 || counts["a"] > 345 {
		t.Fatalf("ip-hash 3:1 over %d client IPs: got %v", clients, counts)
	}
}

// TestFailover: a dead backend is skipped by retries; every connection
// succeeds through the live ones.
func TestFailover(t *testing.T) {
	live := lbtest.NewTCP(t, lbtest.Named("live"))
	dead1, dead2 := lbtest.ClosedPort(t), lbtest.ClosedPort(t)
	h := startServer(t, listenerTOML("l", "p", "")+
		poolTOML("p", "retries = 2\nmax_fails = 0", dead1, live.Addr, dead2)+noHealth)
	got := whoServed(t, h, 30)
	if got["live"] != 30 {
		t.Fatalf("with two dead backends and retries=2: got %v, want all 30 on live", got)
	}
	if n := counter(h.m.ConnectErrors.WithLabelValues("p", dead1)); n == 0 {
		t.Fatalf("connect errors to %s not counted", dead1)
	}
}

// TestAllBackendsDown: the client is closed promptly and the rejection is
// counted as backend_unavailable.
func TestAllBackendsDown(t *testing.T) {
	h := startServer(t, listenerTOML("l", "p", "")+
		poolTOML("p", "retries = 1\nmax_fails = 0", lbtest.ClosedPort(t), lbtest.ClosedPort(t))+noHealth)
	start := time.Now()
	c := h.dial("l")
	b, err := lbtest.ReadAllTimeout(t, c, 3*time.Second)
	if len(b) != 0 {
		t.Fatalf("got %q from a pool with no live backend", b)
	}
	_ = err // EOF or reset: both are a prompt close
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("client closed after %v, want promptly", d)
	}
	lbtest.Eventually(t, 10*time.Second, func() bool { return h.rejected("l", "backend_unavailable") == 1 })
}

// TestNoEligibleBackend: every backend disabled -> closed with no_backend,
// without any connect attempt.
func TestNoEligibleBackend(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Named("a"))
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+noHealth)
	if _, err := h.srv.SetBackendAdmin("p", be.Addr, 2); err != nil {
		t.Fatal(err)
	}
	c := h.dial("l")
	b, _ := lbtest.ReadAllTimeout(t, c, 3*time.Second)
	if len(b) != 0 {
		t.Fatalf("disabled backend served %q", b)
	}
	lbtest.Eventually(t, 10*time.Second, func() bool { return h.rejected("l", "no_backend") == 1 })
	if be.Accepted() != 0 {
		t.Fatalf("disabled backend was dialed")
	}
}

func TestMaxConnections(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	h := startServer(t, listenerTOML("l", "p", "max_connections = 2")+poolTOML("p", "", be.Addr)+noHealth)
	// Two connections in use, proven by an echo through each.
	for i := 0; i < 2; i++ {
		c := h.dial("l")
		c.Write([]byte("x"))
		buf := make([]byte, 1)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	// The third is accepted and closed at once (a client may even see the
	// close before its connect returns).
	if third, err := net.DialTimeout("tcp", h.addr("l"), 2*time.Second); err == nil {
		b, _ := lbtest.ReadAllTimeout(t, third, 3*time.Second)
		third.Close()
		if len(b) != 0 {
			t.Fatalf("third connection got data")
		}
	}
	lbtest.Eventually(t, 10*time.Second, func() bool { return h.rejected("l", "max_connections") == 1 })
	if be.Accepted() != 2 {
		t.Fatalf("backend accepted %d connections, want 2 (the third must not be dialed)", be.Accepted())
	}
}

func TestIdleTimeout(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	// The gaps of the busy connection, and the set-up before the quiet one
	// is read, stay far below the timeout even on a loaded machine.
	const idle = 3 * time.Second
	h := startServer(t, listenerTOML("l", "p", fmt.Sprintf("idle_timeout = %q", idle))+poolTOML("p", "", be.Addr)+noHealth)

	// A quiet connection is closed after about the timeout...
	type end struct {
		n   int
		err error
		d   time.Duration
	}
	quietEnd := make(chan end, 1)
	start := time.Now() // before the dial: the idle clock starts once lbctl has the connection
	quiet := h.dial("l")
	go func() {
		quiet.SetReadDeadline(time.Now().Add(idle + 10*time.Second))
		b, err := io.ReadAll(quiet)
		quietEnd <- end{len(b), err, time.Since(start)}
	}()

	// ... while traffic every 100ms keeps another alive past it.
	busy := h.dial("l")
	buf := make([]byte, 1)
	for i := 0; time.Since(start) < idle+time.Second; i++ {
		busy.Write([]byte("x"))
		busy.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadFull(busy, buf); err != nil {
			t.Fatalf("busy connection closed after %d round trips in %v: %v", i, time.Since(start), err)
		}
		time.Sleep(100 * time.Millisecond) // pacing the traffic, not synchronising
	}

	q := <-quietEnd
	if q.n != 0 || q.err != nil || q.d < idle || q.d > idle+3*time.Second {
		t.Fatalf("quiet connection closed after %v with %d bytes (%v), want ~%v and none", q.d, q.n, q.err, idle)
	}
}

// TestBackendResetMidStream: a backend that dies mid-response must not look
// like a complete response to the client: the client sees a reset, promptly.
func TestBackendResetMidStream(t *testing.T) {
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		// Wait for the client's first byte, so the connection is fully
		// established through lbctl, then die mid-response.
		c.Read(make([]byte, 2))
		c.Write([]byte("partial"))
		c.SetLinger(0)
		c.Close()
	})
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+noHealth)
	c := h.dial("l")
	c.Write([]byte("go"))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after a backend reset the client got %q, err %v; want ECONNRESET", b, err)
	}
}

// TestGracefulShutdown: shutdown refuses new connections at once and lets
// a transfer in flight finish.
func TestGracefulShutdown(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+noHealth)
	addr := h.addr("l")
	c := h.dial("l")
	c.Write([]byte("before"))
	buf := make([]byte, 6)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}

	done := make(chan struct{})
	go func() {
		ctx, cancel := contextWithTimeout(10 * time.Second)
		defer cancel()
		h.srv.Shutdown(ctx)
		close(done)
	}()
	lbtest.Eventually(t, 10*time.Second, func() bool {
		nc, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			nc.Close()
		}
		return err != nil
	}, "listener still accepting during shutdown")
	if h.srv.Ready() {
		t.Fatal("Ready() during shutdown")
	}
	// Status still lists the listener and its open connection. A probe
	// dial above may have been accepted just before the listener closed;
	// it counts as active until lbctl has seen its close, so wait for it.
	var st Status
	lbtest.Eventually(t, 10*time.Second, func() bool {
		st = h.srv.Status()
		return len(st.Listeners) == 1 && st.Listeners[0].Name == "l" && st.Listeners[0].Active == 1
	}, "status during the drain %+v, want listener l with 1 active connection", &st.Listeners)

	// The established connection still works both ways.
	c.Write([]byte("during"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "during" {
		t.Fatalf("in-flight connection broken by shutdown: %q %v", buf, err)
	}
	select {
	case <-done:
		t.Fatal("Shutdown returned while a connection was open")
	default:
	}
	c.CloseWrite()
	if rest, err := lbtest.ReadAllTimeout(t, c, 5*time.Second); err != nil || len(rest) != 0 {
		t.Fatalf("end of stream: %q %v", rest, err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last connection ended")
	}
}

// TestShutdownTimeout: connections still open when the drain time is over
// are closed, and Shutdown returns.
func TestShutdownTimeout(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Silent)
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+noHealth)
	c := h.dial("l")
	lbtest.Eventually(t, 10*time.Second, func() bool { return be.Accepted() == 1 })
	start := time.Now()
	ctx, cancel := contextWithTimeout(300 * time.Millisecond)
	defer cancel()
	h.srv.Shutdown(ctx)
	if d := time.Since(start); d < 300*time.Millisecond || d > 3*time.Second {
		t.Fatalf("Shutdown took %v, want about the 300ms drain", d)
	}
	if b, err := lbtest.ReadAllTimeout(t, c, 2*time.Second); len(b) != 0 || err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client after forced close: %q, %v", b, err)
	}
}

// TestNoLeaks runs many connections of every kind and checks that the
// process is back to its descriptor count once they are over.
func TestNoLeaks(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	resetter := lbtest.NewTCP(t, func(c *net.TCPConn) { c.SetLinger(0); c.Close() })
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", echo.Addr, resetter.Addr, lbtest.ClosedPort(t))+noHealth)
	addr := h.addr("l")
	base := lbtest.OpenFDs(t)
	var wg sync.WaitGroup
	for i := 0; i < 60; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err != nil {
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			payload := strings.Repeat("y", 1+i*1000)
			c.Write([]byte(payload))
			if i%2 == 0 {
				c.(*net.TCPConn).CloseWrite()
			}
			io.Copy(io.Discard, io.LimitReader(c, int64(len(payload))))
		}(i)
	}
	wg.Wait()
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		var active int64
		for _, l := range h.srv.Status().Listeners {
			active += l.Active
		}
		fds := lbtest.OpenFDs(t)
		return active == 0 && fds <= base, fmt.Sprintf("connections or descriptors left: %d active, fds %d, baseline %d", active, fds, base)
	})
}
