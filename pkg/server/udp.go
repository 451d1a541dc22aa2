package server

import (
	"errors"
	"net"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/udpproxy"
)

func (s *Server) buildUDPProxy(lc *config.Listener, p *pool, st *listenerState) (*udpproxy.Proxy, error) {
	return nil, errors.New("udp listeners are not served yet")
}

func (s *Server) bindUDP(lc *config.Listener) (*net.UDPConn, error) {
	return nil, errors.New("udp listeners are not served yet")
}

func (s *Server) serveUDP(l *listener) { close(l.done) }
