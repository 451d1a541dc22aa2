package server

import (
	"fmt"
	"net"
)

// Sockets inherited from the service manager (socket activation) are kept
// open for the life of the process. Each bind takes a duplicate, so a
// reload that removes a socket-activated listener closes only its
// duplicate, and a later reload that brings the listener back gets a
// working socket again.

// inheritedTCP returns a listener on a duplicate of the inherited TCP socket
// for bind, or nil when none was inherited.
func (s *Server) inheritedTCP(bind string) (*net.TCPListener, error) {
	inh, ok := s.opts.Inherited[listenerKey("tcp", bind)].(*net.TCPListener)
	if !ok {
		return nil, nil
	}
	f, err := inh.File()
	if err != nil {
		return nil, fmt.Errorf("duplicate inherited socket %s: %w", bind, err)
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
	inh, ok := s.opts.Inherited[listenerKey("udp", bind)].(*net.UDPConn)
	if !ok {
		return nil, nil
	}
	f, err := inh.File()
	if err != nil {
		return nil, fmt.Errorf("duplicate inherited socket %s: %w", bind, err)
	}
	defer f.Close()
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("inherited socket %s: %w", bind, err)
	}
	return pc.(*net.UDPConn), nil
}
