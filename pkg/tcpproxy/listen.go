package tcpproxy

import (
	"context"
	"net"
	"net/netip"
)

// ListenerHooks is what a Listener asks its owner. Admit and Handoff run
// on the loop's goroutine, between two events of every connection the loop
// serves: they must not block.
type ListenerHooks struct {
	// Ctx ends the connections the loop starts (a shutdown's drain), as
	// StartInLoop's ctx.
	Ctx context.Context
	// Admit decides on a connection just accepted from peer. It returns
	// the Proxy to serve it from the loop (whose LoopConnects must be
	// true) and its done callback; or handoff, for a connection the
	// loop cannot serve (a PROXY header to read, a server name to route
	// on), which then goes to Handoff; or neither: refused, closed at
	// once.
	Admit func(peer netip.AddrPort) (p *Proxy, done func(End), handoff bool)
	// Handoff takes a connection Admit handed off.
	Handoff func(c *net.TCPConn, peer netip.AddrPort)
	// Failing is told of the first failed accept of an episode (out of
	// descriptors, most often): the loop then backs off, from 5 ms
	// doubling to 1 s between tries. Recovered is told when an accept
	// succeeds again, with the number of failed tries. Both may be nil.
	Failing   func(err error)
	Recovered func(failures int)
}
