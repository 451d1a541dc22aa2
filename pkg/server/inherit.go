package server

import (
	"fmt"
	"net"
	"net/netip"
	"os"
)

// Sockets inherited from the service manager (socket activation) are kept
// open for the life of the process. Each bind takes a duplicate, so a
// reload that removes a socket-activated listener closes only its
// duplicate, and a later reload that brings the listener back gets a
// working socket again.

// SocketKey names a socket by what a listener binds: its protocol and its
// local address. Make one with NewSocketKey, so an inherited socket and
// the listener that binds it agree on the address's form.
type SocketKey struct {
	Protocol string         // "tcp" or "udp"
	Addr     netip.AddrPort // an IPv4 address never in its IPv6-mapped form
}

// NewSocketKey returns the key of the socket bound to addr for protocol,
// writing an IPv4-mapped IPv6 address as IPv4 (as config.Listener.Bind
// does).
func NewSocketKey(protocol string, addr netip.AddrPort) SocketKey {
	return SocketKey{Protocol: protocol, Addr: netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())}
}

// String returns "tcp|127.0.0.1:8080", as logs show a socket.
func (k SocketKey) String() string { return k.Protocol + "|" + k.Addr.String() }

// InheritedSocket is a socket inherited from the service manager: a
// listening *net.TCPListener for "tcp", a *net.UDPConn for "udp". The
// server only takes duplicates of it with File; the caller keeps it open
// for the life of the process.
type InheritedSocket interface {
	File() (*os.File, error)
}

// inheritedFile returns a duplicate of the socket inherited for protocol
// and bind, or nil when none was inherited. The caller closes it.
func (s *Server) inheritedFile(protocol, bind string) (*os.File, error) {
	ap, err := netip.ParseAddrPort(bind)
	if err != nil {
		return nil, nil // not an address a socket can have been inherited for
	}
	sock := s.opts.Inherited[NewSocketKey(protocol, ap)]
	if sock == nil {
		return nil, nil
	}
	f, err := sock.File()
	if err != nil {
		return nil, fmt.Errorf("duplicate inherited socket %s: %w", bind, err)
	}
	return f, nil
}

// inheritedTCP returns a listener on a duplicate of the inherited TCP socket
// for bind, or nil when none was inherited.
func (s *Server) inheritedTCP(bind string) (*net.TCPListener, error) {
	f, err := s.inheritedFile("tcp", bind)
	if f == nil {
		return nil, err
	}
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("inherited socket %s: %w", bind, err)
	}
	return ln.(*net.TCPListener), nil
}

// inheritedUDP is inheritedTCP for UDP sockets.
func (s *Server) inheritedUDP(bind string) (*net.UDPConn, error) {
	f, err := s.inheritedFile("udp", bind)
	if f == nil {
		return nil, err
	}
	defer f.Close()
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("inherited socket %s: %w", bind, err)
	}
	return pc.(*net.UDPConn), nil
}
