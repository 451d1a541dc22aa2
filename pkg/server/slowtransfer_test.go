package server

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// dialSmallWindow dials addr with an 8 KiB receive buffer, set before the
// connect so that the window the peer sees stays small: a slow reader
// then holds lbctl's send queue full.
func dialSmallWindow(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 8<<10)
		})
		return errors.Join(err, serr)
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// accessEnd waits for the access log line of the listener's only
// connection and returns its end field.
func accessEnd(t *testing.T, logs *observer.ObservedLogs, timeout time.Duration) string {
	t.Helper()
	var end string
	lbtest.Until(t, timeout, func() (bool, string) {
		lines := logs.FilterMessage("connection").All()
		if len(lines) == 0 {
			return false, "no access log line"
		}
		end, _ = lines[0].ContextMap()["end"].(string)
		return true, ""
	})
	return end
}

// writeAll is a backend that writes payload at once, then shuts its write
// side and reads until the connection ends. The first error it sees (nil
// for a clean end) goes to werr.
func writeAll(payload []byte, werr chan<- error) lbtest.Handler {
	return func(c *net.TCPConn) {
		_, err := c.Write(payload)
		if err == nil {
			c.CloseWrite()
			_, err = io.Copy(io.Discard, c)
		}
		werr <- err
	}
}

// TestSlowReaderOutlivesIdleTimeout (issue 11, defect 1): a backend writes
// 8 MiB at once and the client reads about 100 KB/s through an 8 KiB
// window for 2.5 times idle_timeout. Bytes move all the time, so the
// connection must not be cut, the byte counter must advance while it runs,
// and every byte must arrive. (Before the fix one splice of up to 1 MiB,
// some 10 s at this pace, moved neither the idle clock nor the counter.)
// idle_timeout is 40 times the read pacing: a reader descheduled for a
// second or two on a loaded machine is not idle.
func TestSlowReaderOutlivesIdleTimeout(t *testing.T) {
	const (
		size = 8 << 20
		idle = 4 * time.Second
		slow = 10 * time.Second // the slow phase: longer than idle
	)
	payload := randomBytes(size)
	want := sha256.Sum256(payload)
	werr := make(chan error, 1)
	be := lbtest.NewTCP(t, writeAll(payload, werr))
	core, logs := observer.New(zap.InfoLevel)
	h := startServerLog(t, listenerTOML("l", "p", fmt.Sprintf("idle_timeout = %q", idle))+poolTOML("p", "", be.Addr)+noHealth, core)
	out := h.tcpSeries("l", "p", be.Addr).BytesOut
	c := dialSmallWindow(t, h.addr("l"))

	hs := sha256.New()
	buf := make([]byte, 10<<10)
	var got int
	var samples []float64
	start := time.Now()
	next := start.Add(2 * time.Second)
	for time.Since(start) < slow {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		hs.Write(buf[:n])
		got += n
		if err != nil {
			t.Fatalf("slow reader: %v after %d bytes and %v", err, got, time.Since(start).Round(time.Millisecond))
		}
		if now := time.Now(); now.After(next) {
			samples = append(samples, counter(out))
			next = now.Add(2 * time.Second)
		}
		time.Sleep(100 * time.Millisecond) // pacing a slow reader, not synchronising
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := io.Copy(hs, c) // the rest at full speed
	got += int(n)
	if err != nil || got != size {
		t.Fatalf("client received %d bytes of %d (err %v): the connection was cut while bytes moved", got, size, err)
	}
	if [32]byte(hs.Sum(nil)) != want {
		t.Fatal("client received bytes that differ from those sent")
	}
	if len(samples) < 3 {
		t.Fatalf("only %d samples of bytes_total out in %v", len(samples), slow)
	}
	for i, v := range samples {
		if v <= 0 || v >= size || i > 0 && v <= samples[i-1] {
			t.Fatalf("bytes_total out sampled every 2 s during the slow read: %v; want it to grow at every sample, below %d", samples, size)
		}
	}
	c.Close()
	if end := accessEnd(t, logs, 10*time.Second); end != "done" {
		t.Fatalf("access log end %q, want done", end)
	}
	if err := <-werr; err != nil {
		t.Fatalf("backend: %v", err)
	}
}

// TestStalledTransferIsReset (issue 11, defect 1): the client stops reading
// while the backend has 8 MiB to send. At idle expiry bytes are still
// unsent, so both sides get a reset: the client must not see a clean end
// of a truncated stream.
func TestStalledTransferIsReset(t *testing.T) {
	payload := randomBytes(8 << 20)
	werr := make(chan error, 1)
	be := lbtest.NewTCP(t, writeAll(payload, werr))
	core, logs := observer.New(zap.InfoLevel)
	h := startServerLog(t, listenerTOML("l", "p", `idle_timeout = "2s"`)+poolTOML("p", "", be.Addr)+noHealth, core)
	c := dialSmallWindow(t, h.addr("l"))

	if end := accessEnd(t, logs, 10*time.Second); end != "idle_timeout" {
		t.Fatalf("access log end %q, want idle_timeout", end)
	}
	b, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read %d of %d bytes, then %v; want ECONNRESET", len(b), len(payload), err)
	}
	select {
	case err := <-werr:
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("backend saw %v; want a reset", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("backend still connected after the idle expiry")
	}
}

// TestShutdownDeadlineResets (issue 11, defect 4): a transfer still in
// flight when the shutdown drain time is over ends with a reset, not with
// a FIN that would make the truncated stream look complete.
func TestShutdownDeadlineResets(t *testing.T) {
	payload := randomBytes(8 << 20)
	werr := make(chan error, 1)
	be := lbtest.NewTCP(t, writeAll(payload, werr))
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+noHealth)
	c := dialSmallWindow(t, h.addr("l"))
	first := make([]byte, 1)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, first); err != nil { // the transfer is under way
		t.Fatal(err)
	}

	shutdownResets(t, h, c, 500*time.Millisecond)
}

// TestShutdownDeadlineResetsQuiet: a connection still open, but quiet,
// when the shutdown drain time is over is reset too: neither side
// finished, and a FIN between two messages would make the stream look
// complete to a peer that reads until EOF.
func TestShutdownDeadlineResetsQuiet(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+noHealth)
	c, err := net.DialTimeout("tcp", h.addr("l"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte("ping")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil { // proxied, and now quiet
		t.Fatal(err)
	}

	shutdownResets(t, h, c, 300*time.Millisecond)
}

// TestKernelDrainIsNotIdle: the backend's whole answer fits in lbctl's
// socket toward the client, so lbctl itself moves nothing while a slow
// client drains it for twice idle_timeout. The kernel still moves bytes
// (TCP_INFO), so the connection is not idle: it must not be cut, and it
// carries on afterwards. idle_timeout is 25 times the read pacing: a
// reader descheduled for a second or two on a loaded machine is not idle.
func TestKernelDrainIsNotIdle(t *testing.T) {
	const (
		size = 400 << 10
		idle = 4 * time.Second
	)
	payload := randomBytes(size)
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		if _, err := c.Write(payload); err != nil {
			return
		}
		ping := make([]byte, 4)
		if _, err := io.ReadFull(c, ping); err == nil {
			c.Write([]byte("pong"))
		}
		io.Copy(io.Discard, c)
	})
	h := startServer(t, listenerTOML("l", "p", fmt.Sprintf("idle_timeout = %q", idle))+poolTOML("p", "", be.Addr)+noHealth)
	c := dialSmallWindow(t, h.addr("l"))

	buf := make([]byte, 8<<10)
	start := time.Now()
	for got := 0; got < size; {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf[:min(len(buf), size-got)])
		got += n
		if err != nil {
			t.Fatalf("slow reader: %v after %d bytes and %v", err, got, time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(160 * time.Millisecond) // 50 reads, at least 8 s: pacing, not synchronisation
	}
	if d := time.Since(start); d < 3*idle/2 {
		t.Fatalf("the slow read took %v, not longer than idle_timeout: the test proves nothing", d)
	}
	c.Write([]byte("ping"))
	pong := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, pong); err != nil || string(pong) != "pong" {
		t.Fatalf("after the slow read: %q, %v; want pong", pong, err)
	}
}

// shutdownResets shuts h down with drain time drain and expects the
// client connection c, still open then, to be reset.
func shutdownResets(t *testing.T, h *harness, c net.Conn, drain time.Duration) {
	t.Helper()
	ctx, cancel := contextWithTimeout(drain)
	defer cancel()
	h.srv.Shutdown(ctx)
	b, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after the shutdown deadline the client read %d more bytes, then %v; want ECONNRESET", len(b), err)
	}
}
