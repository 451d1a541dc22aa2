package server

import (
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
)

// listenBacklog0 listens on 127.0.0.1 with an accept queue of one
// connection and never accepts; it returns the address. Once that queue is
// full, Linux drops further SYNs, so connects to it time out.
func listenBacklog0(t *testing.T) string {
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
	in4, ok := sa.(*syscall.SockaddrInet4)
	if !ok {
		t.Fatalf("getsockname: %T", sa)
	}
	return net.JoinHostPort(netip.AddrFrom4(in4.Addr).String(), strconv.Itoa(in4.Port))
}
