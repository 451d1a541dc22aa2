package server

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// TCP keep-alive toward clients: Go's defaults (15 s idle, 15 s interval,
// 9 probes), set once on the listening socket. Linux copies them to every
// accepted socket, which saves four setsockopt calls per connection.
var keepAliveOpts = [...][3]int{
	{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
	{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 15},
	{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15},
	{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 9},
}

func tcpListenConfig() net.ListenConfig {
	return net.ListenConfig{
		KeepAlive: -1, // accepted sockets inherit the listener's settings below
		Control: func(_, _ string, c syscall.RawConn) error {
			return setKeepAliveRaw(c)
		},
	}
}

// setKeepAlive sets keepAliveOpts on a listening socket lbctl did not bind
// itself (inherited from the service manager or an older lbctl), so that
// the sockets accepted from it have them too: an event loop's accept4
// (tcpproxy.ListenInLoop) sets nothing more, where Go's Accept turned its
// own keep-alive on.
func setKeepAlive(ln *net.TCPListener) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	return setKeepAliveRaw(rc)
}

// setKeepAliveRaw sets keepAliveOpts on a socket.
func setKeepAliveRaw(c syscall.RawConn) error {
	var err error
	cerr := c.Control(func(fd uintptr) {
		for _, o := range keepAliveOpts {
			if e := unix.SetsockoptInt(int(fd), o[0], o[1], o[2]); e != nil && err == nil {
				err = e
			}
		}
	})
	if cerr != nil {
		return cerr
	}
	return err
}
