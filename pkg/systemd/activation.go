package systemd

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/coreos/go-systemd/v22/activation"
)

// Socket is one socket the service manager passed, open and owned by the
// caller.
type Socket struct {
	Protocol string         // "tcp": a listening TCP socket; "udp": a UDP socket
	Addr     netip.AddrPort // its local address; an IPv4 address never in its IPv6-mapped form
	// Conn is a *net.TCPListener ("tcp") or a *net.UDPConn ("udp"), with
	// its own copy of the descriptor.
	Conn interface {
		File() (*os.File, error)
		Close() error
	}
}

// String returns "tcp|127.0.0.1:8080", as logs show a socket.
func (s Socket) String() string { return s.Protocol + "|" + s.Addr.String() }

// Inherited returns the sockets the service manager passed to this process
// (socket activation, sd_listen_fds(3)): the descriptors from 3 on, when
// $LISTEN_PID is this process and $LISTEN_FDS counts them, in that order.
// It unsets $LISTEN_PID, $LISTEN_FDS and $LISTEN_FDNAMES, so nothing
// started later inherits them.
//
// Each socket carries the protocol and address a listener's bind must
// match to use it instead of binding one (config.Listener.Bind writes the
// address as netip.AddrPort.String does: "127.0.0.1:8080", "[::]:53").
//
// A descriptor that is neither a listening TCP socket nor a UDP socket (a
// connected socket from Accept=yes, a unix socket, a FIFO), or a second
// socket for the same protocol and address, is closed and named in the
// error, which is returned along with the usable sockets: the caller
// decides whether that is fatal. Without socket activation there are none.
func Inherited() ([]Socket, error) {
	var out []Socket
	seen := map[string]bool{}
	var errs []error
	for _, f := range activation.Files(true) {
		sock, err := adopt(f)
		f.Close() // adopt made its own copy
		if err != nil {
			errs = append(errs, fmt.Errorf("inherited %s: %w", f.Name(), err))
			continue
		}
		if seen[sock.String()] {
			sock.Conn.Close()
			errs = append(errs, fmt.Errorf("inherited %s: a second socket for %s", f.Name(), sock))
			continue
		}
		seen[sock.String()] = true
		out = append(out, sock)
	}
	return out, errors.Join(errs...)
}

// adopt turns an inherited descriptor into a Socket with its own copy of
// the descriptor.
func adopt(f *os.File) (Socket, error) {
	listening, err := isListening(f)
	if err != nil {
		return Socket{}, err
	}
	if listening {
		ln, err := net.FileListener(f)
		if err != nil {
			return Socket{}, err
		}
		if tl, ok := ln.(*net.TCPListener); ok {
			return Socket{Protocol: "tcp", Addr: canonical(tl.Addr().(*net.TCPAddr).AddrPort()), Conn: tl}, nil
		}
		ln.Close()
		return Socket{}, fmt.Errorf("a listening %s socket, want TCP", ln.Addr().Network())
	}
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return Socket{}, errors.New("neither a listening TCP socket nor a UDP socket (Accept=yes in the .socket unit?)")
	}
	if uc, ok := pc.(*net.UDPConn); ok {
		return Socket{Protocol: "udp", Addr: canonical(uc.LocalAddr().(*net.UDPAddr).AddrPort()), Conn: uc}, nil
	}
	pc.Close()
	return Socket{}, fmt.Errorf("a %s datagram socket, want UDP", pc.LocalAddr().Network())
}

// canonical writes an IPv4 address seen through an IPv6-mapped form as
// IPv4, as config.Listener.Bind does.
func canonical(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
