package server

import (
	"fmt"
	"net"
	"os"
)

// Sockets inherited from the service manager (socket activation) are kept
// open for the life of the process. Each bind takes a duplicate, so a
// reload that removes a socket-activated listener closes only its
// duplicate, and a later reload that brings the listener back gets a
// working socket again.

// inheritedFile returns a duplicate of the socket inherited for protocol
// and bind, or nil when none was inherited. The caller closes it.
func (s *Server) inheritedFile(protocol, bind string) (*os.File, error) {
	c, ok := s.opts.Inherited[listenerKey(protocol, bind)].(interface{ File() (*os.File, error) })
	if !ok {
		return nil, nil
	}
	f, err := c.File()
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
