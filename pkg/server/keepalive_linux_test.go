package server

import (
	"context"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAcceptedSocketsKeepAlive: the keep-alive settings put on the
// listening socket reach every accepted connection.
func TestAcceptedSocketsKeepAlive(t *testing.T) {
	lc := tcpListenConfig()
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, _ := c.(*net.TCPConn).SyscallConn()
	raw.Control(func(fd uintptr) {
		for _, o := range keepAliveOpts {
			if v, err := unix.GetsockoptInt(int(fd), o[0], o[1]); err != nil || v != o[2] {
				t.Errorf("accepted socket option %d/%d = %d (%v), want %d", o[0], o[1], v, err, o[2])
			}
		}
	})
}
