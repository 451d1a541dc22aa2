package lbtest

import (
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"
)

// Blackhole returns a loopback address that answers no connect: a socket
// listening with an accept queue of one connection that it never accepts,
// filled up. Linux then drops further SYNs, so a connect to it waits until
// its own timeout. Where the kernel accepts anyway, the test is skipped.
func Blackhole(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatalf("listen: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the accept queue (one connection with backlog 0; more if the
	// kernel queues more) and never accept, until a connect times out. A
	// timeout says the queue is full only if it is long against what a
	// loaded machine adds to a normal connect: 2s (the kernel's first SYN
	// retransmit, at 1s, is dropped as well).
	const dialTimeout = 2 * time.Second
	for range 8 {
		c, err := net.DialTimeout("tcp", addr, dialTimeout)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return addr
		}
		if err != nil {
			t.Fatalf("filling the accept queue of %s: %v", addr, err)
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("connects to a full accept queue succeed here; cannot simulate a connect timeout")
	return ""
}
