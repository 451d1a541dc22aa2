package server

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// trickle is a backend that, once the client has finished sending (EOF),
// writes one byte every 100 ms and never finishes itself: a peer that keeps
// a half-closed connection open and busy. It stops when a write fails, or
// after 30 s.
func trickle(c *net.TCPConn) {
	io.Copy(io.Discard, c)
	for range 300 {
		if _, err := c.Write([]byte{'.'}); err != nil {
			return
		}
		time.Sleep(100 * time.Millisecond) // the backend's pace, not synchronisation
	}
}

// TestHalfCloseTimeout (issue 11, defect 8): after the client's FIN, a
// backend that never finishes keeps the connection only for
// half_close_timeout, even though bytes keep moving; without the key only
// idle_timeout applies and the connection stays open.
func TestHalfCloseTimeout(t *testing.T) {
	be := lbtest.NewTCP(t, trickle)

	t.Run("client finished, backend did not", func(t *testing.T) {
		core, logs := observer.New(zap.InfoLevel)
		h := startServerLog(t, listenerTOML("l", "p", `half_close_timeout = "1s"`)+poolTOML("p", "", be.Addr)+noHealth, core)
		c := h.dial("l")
		c.Write([]byte("request"))
		start := time.Now() // before the FIN: lbctl's clock can only start later
		c.CloseWrite()
		b, _ := lbtest.ReadAllTimeout(t, c, 15*time.Second) // EOF or reset: the end, either way
		// The upper bound only tells "about 1s" from "never" (only
		// idle_timeout): seconds of margin for a loaded machine.
		if d := time.Since(start); d < time.Second || d > 8*time.Second || len(b) == 0 {
			t.Fatalf("connection ended %v after the client's FIN, with %d bytes from the backend; want about 1s, some bytes", d, len(b))
		}
		if end := accessEnd(t, logs, 5*time.Second); end != "half_close_timeout" {
			t.Fatalf("access log end %q, want half_close_timeout", end)
		}
	})

	t.Run("backend finished, client did not", func(t *testing.T) {
		finSent := make(chan time.Time, 1)
		banner := lbtest.NewTCP(t, func(c *net.TCPConn) {
			c.Write([]byte("banner"))
			finSent <- time.Now() // before the FIN: lbctl's clock can only start later
			c.CloseWrite()
			io.Copy(io.Discard, c)
		})
		core, logs := observer.New(zap.InfoLevel)
		h := startServerLog(t, listenerTOML("l", "p", `half_close_timeout = "1s"`)+poolTOML("p", "", banner.Addr)+noHealth, core)
		c := h.dial("l")
		if b, err := lbtest.ReadAllTimeout(t, c, 5*time.Second); err != nil || string(b) != "banner" {
			t.Fatalf("banner %q, %v", b, err)
		}
		start := <-finSent // the backend's FIN has passed through lbctl
		if end := accessEnd(t, logs, 15*time.Second); end != "half_close_timeout" {
			t.Fatalf("access log end %q, want half_close_timeout", end)
		}
		if d := time.Since(start); d < time.Second || d > 8*time.Second {
			t.Fatalf("connection ended %v after the backend's FIN; want about 1s", d)
		}
	})

	t.Run("0 = only idle_timeout applies", func(t *testing.T) {
		h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+noHealth)
		c := h.dial("l")
		c.Write([]byte("request"))
		c.CloseWrite()
		// Three times the timeout above: bytes still arrive, the connection
		// is open.
		start := time.Now()
		buf := make([]byte, 64)
		for time.Since(start) < 3*time.Second {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(buf); err != nil {
				t.Fatalf("half-closed connection ended after %v without half_close_timeout: %v", time.Since(start), err)
			}
		}
		if st := h.srv.Status(); st.Listeners[0].Active != 1 {
			t.Fatalf("active connections %d, want 1", st.Listeners[0].Active)
		}
	})
}
