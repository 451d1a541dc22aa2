package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// fullBacklog listens on loopback with a backlog of 1, never accepts, and
// fills the accept queue: from then on the kernel drops every SYN to it, so
// a connect there stays pending until it times out. stop closes the
// listener (pending connects then fail at their next SYN).
func fullBacklog(t *testing.T) (addr string, stop func()) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() { once.Do(func() { syscall.Close(fd) }) }
	t.Cleanup(stop)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr = fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// A dial that times out says the queue is full only if the timeout is
	// long against what a loaded machine adds to a normal connect: 2s
	// (the kernel's first SYN retransmit, at 1s, is dropped as well).
	for range 8 {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return addr, stop // the queue is full
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("the accept queue of a backlog-1 listener never filled")
	return "", nil
}

// TestLeastConnectionsCountsPendingConnects (issue 11, defect 6): a
// backend whose connects hang (its accept queue is full) must count from
// the moment it is picked. Otherwise it keeps the lowest count and draws
// new connections all through connect_timeout while a healthy backend
// idles.
func TestLeastConnectionsCountsPendingConnects(t *testing.T) {
	slow, closeSlow := fullBacklog(t)
	fast := lbtest.NewTCP(t, lbtest.Named("fast"))
	h := startServer(t, listenerTOML("l", "p", "")+
		poolTOML("p", "algorithm = \"least-connections\"\nconnect_timeout = \"20s\"\nretries = 0", slow, fast.Addr)+noHealth)

	// One connection at a time, each served to its end (lbctl's too)
	// before the next, so the fast backend has no active connection when
	// the next is placed. A connection placed on the slow backend gets no
	// answer: 3 s (well within connect_timeout) says so.
	const n = 8
	var toSlow int
	for i := range n {
		c := h.dial("l")
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b := make([]byte, 16)
		k, err := c.Read(b)
		switch {
		case err == nil && string(b[:k]) == "fast":
			lbtest.ReadAllTimeout(t, c, 5*time.Second) // to its end
			c.Close()
			lbtest.Until(t, 10*time.Second, func() (bool, string) {
				for _, b := range h.srv.Status().Pools[0].Backends {
					if b.Address == fast.Addr {
						return b.Active == 0, fmt.Sprintf("the fast backend has %d active connections after its client closed", b.Active)
					}
				}
				return false, "no fast backend in the status"
			})
		case errors.Is(err, os.ErrDeadlineExceeded):
			toSlow++ // left open: its connect is still pending
		default:
			t.Fatalf("connection %d: %q, %v", i, b[:k], err)
		}
		if toSlow > 2 {
			break
		}
	}
	closeSlow() // pending connects fail at their next SYN; the drain is short
	if toSlow > 2 {
		t.Fatalf("the backend whose connects hang drew %d connections of the first few; want at most 2", toSlow)
	}
	if got := fast.Accepted(); got < n-2 {
		t.Fatalf("the healthy backend served %d of %d connections", got, n)
	}
}
