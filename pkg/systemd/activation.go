package systemd

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/coreos/go-systemd/v22/activation"
)

// Inherited returns the sockets the service manager passed to this process
// (socket activation, sd_listen_fds(3)): the descriptors from 3 on, when
// $LISTEN_PID is this process and $LISTEN_FDS counts them. It unsets
// $LISTEN_PID, $LISTEN_FDS and $LISTEN_FDNAMES, so nothing started later
// inherits them.
//
// The map is keyed as server.Options.Inherited wants: "tcp|IP:PORT" for a
// listening TCP socket (*net.TCPListener), "udp|IP:PORT" for a UDP socket
// (*net.UDPConn), the address written as config.Listener.Bind writes it
// (netip.AddrPort.String: "127.0.0.1:8080", "[::]:53"). A listener whose
// bind is that address uses the socket instead of binding one.
//
// A descriptor that is neither (a connected socket from Accept=yes, a unix
// socket, a FIFO) is closed and named in the error, which is returned along
// with the usable sockets: the caller decides whether that is fatal. The map
// is empty, never nil, without socket activation.
func Inherited() (map[string]any, error) {
	out := map[string]any{}
	var errs []error
	for _, f := range activation.Files(true) {
		key, sock, err := adopt(f)
		f.Close() // adopt made its own copy
		if err != nil {
			errs = append(errs, fmt.Errorf("inherited %s: %w", f.Name(), err))
			continue
		}
		if _, dup := out[key]; dup {
			closeSocket(sock)
			errs = append(errs, fmt.Errorf("inherited %s: a second socket for %s", f.Name(), key))
			continue
		}
		out[key] = sock
	}
	return out, errors.Join(errs...)
}

// adopt turns an inherited descriptor into a *net.TCPListener or a
// *net.UDPConn (each with its own copy of the descriptor) and its key.
func adopt(f *os.File) (string, any, error) {
	listening, err := isListening(f)
	if err != nil {
		return "", nil, err
	}
	if listening {
		ln, err := net.FileListener(f)
		if err != nil {
			return "", nil, err
		}
		if tl, ok := ln.(*net.TCPListener); ok {
			return "tcp|" + canonical(tl.Addr().(*net.TCPAddr).AddrPort()), tl, nil
		}
		ln.Close()
		return "", nil, fmt.Errorf("a listening %s socket, want TCP", ln.Addr().Network())
	}
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return "", nil, errors.New("neither a listening TCP socket nor a UDP socket (Accept=yes in the .socket unit?)")
	}
	if uc, ok := pc.(*net.UDPConn); ok {
		return "udp|" + canonical(uc.LocalAddr().(*net.UDPAddr).AddrPort()), uc, nil
	}
	pc.Close()
	return "", nil, fmt.Errorf("a %s datagram socket, want UDP", pc.LocalAddr().Network())
}

// canonical writes a socket address as config.Listener.Bind does; an IPv4
// address seen through an IPv6-mapped form is written as IPv4.
func canonical(ap netip.AddrPort) string {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

func closeSocket(sock any) {
	switch s := sock.(type) {
	case *net.TCPListener:
		s.Close()
	case *net.UDPConn:
		s.Close()
	}
}
