package server

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
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

// TestConnectionSocketOptions: on a connection through lbctl, the socket
// accepted from the client has keep-alive and TCP_NODELAY on, the socket
// dialed to the backend TCP_NODELAY on and keep-alive off (as HAProxy and
// nginx by default; docs/reference.md). The two sockets are found among
// this process's descriptors by their addresses.
//
// A listening socket lbctl binds is plain TCP (IPPROTO_TCP).
//
// The same holds on a listening socket lbctl did not bind (inherited from
// the service manager without keep-alive): the accepted sockets get
// lbctl's settings all the same.
func TestConnectionSocketOptions(t *testing.T) {
	t.Run("bound", func(t *testing.T) { testSocketOptions(t, false) })
	t.Run("inherited", func(t *testing.T) { testSocketOptions(t, true) })
}

func testSocketOptions(t *testing.T, inherit bool) {
	backendPeer := make(chan string, 1)
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		backendPeer <- c.RemoteAddr().String() // lbctl's dialed socket
		lbtest.Echo(c)
	})
	var h *harness
	if inherit {
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}) // keep-alive off
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ap := ln.Addr().(*net.TCPAddr).AddrPort()
		toml := "[listeners.l]\nbind = \"" + ap.String() + "\"\npool = \"p\"\n" + poolTOML("p", "", be.Addr) + noHealth
		h = startWith(t, toml, nil, Options{Inherited: map[SocketKey]InheritedSocket{NewSocketKey("tcp", ap): ln}})
	} else {
		h = startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+noHealth)
	}
	c := h.dial("l")
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("echo through lbctl: %v", err)
	}
	dialed := <-backendPeer
	accepted := c.RemoteAddr().String() // lbctl's listener; its peer is c
	check := func(side string, fd int) {
		for _, o := range []struct {
			name       string
			level, opt int
			want       int
		}{
			{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
			{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, map[string]int{"client": 1, "backend": 0}[side]},
		} {
			if v, err := unix.GetsockoptInt(fd, o.level, o.opt); err != nil || (v != 0) != (o.want != 0) {
				t.Errorf("%s side socket: %s = %d (%v), want %d", side, o.name, v, err, o.want)
			}
		}
	}
	found := map[string]bool{}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		la, err1 := unix.Getsockname(fd)
		pa, err2 := unix.Getpeername(fd)
		if err1 == nil && err2 != nil && sockString(la) == accepted && !inherit {
			// lbctl's listening socket: plain TCP, not Go's default
			// MPTCP, whose accept path every connection would cross.
			found["listener"] = true
			if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || v != unix.IPPROTO_TCP {
				t.Errorf("listening socket: SO_PROTOCOL = %d (%v), want IPPROTO_TCP (%d)", v, err, unix.IPPROTO_TCP)
			}
		}
		if err1 != nil || err2 != nil {
			continue
		}
		switch local, peer := sockString(la), sockString(pa); {
		case local == dialed && peer == be.Addr:
			found["backend"] = true
			check("backend", fd)
		case local == accepted && peer == c.LocalAddr().String():
			found["client"] = true
			check("client", fd)
		}
	}
	if !found["client"] || !found["backend"] || (!inherit && !found["listener"]) {
		t.Fatalf("sockets found among this process's descriptors: %v, want client, backend and (bound) listener", found)
	}
}

// sockString is an IPv4 socket address as "ip:port"; "" for other kinds.
func sockString(sa unix.Sockaddr) string {
	if a, ok := sa.(*unix.SockaddrInet4); ok {
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	}
	return ""
}
