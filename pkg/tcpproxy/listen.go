package tcpproxy

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/lbctl/lbctl/tlshello"
)

// Admission is a Listener's Admit's decision on one connection.
type Admission struct {
	// Proxy serves the connection from the loop (its LoopConnects must
	// be true).
	Proxy *Proxy
	// Router, instead of Proxy: the loop reads the client's TLS
	// ClientHello, then Router picks the proxy (hello_linux.go).
	Router HelloRouter
	// Done is called once a connection served (Proxy or Router) has
	// ended, or was refused.
	Done func(End)
	// Handoff is set for a connection the loop cannot serve (a PROXY
	// header to read), which then goes to Handoff.
	Handoff bool
	// None of the three: refused, closed at once.
}

// ListenerHooks is what a Listener asks its owner. Admit and Handoff run
// on the loop's goroutine, between two events of every connection the loop
// serves: they must not block.
type ListenerHooks struct {
	// Ctx ends the connections the loop starts (a shutdown's drain), as
	// StartInLoop's ctx.
	Ctx context.Context
	// Admit decides on a connection just accepted from peer (Admission).
	Admit func(peer netip.AddrPort) Admission
	// Handoff takes a connection Admit handed off.
	Handoff func(c *net.TCPConn, peer netip.AddrPort)
	// Failing is told of the first failed accept of an episode (out of
	// descriptors, most often): the loop then backs off, from 5 ms
	// doubling to 1 s between tries. Recovered is told when an accept
	// succeeds again, with the number of failed tries. Both may be nil.
	Failing   func(err error)
	Recovered func(failures int)
}

// HelloRouter routes a listener's connections on their TLS ClientHello
// (Admission.Router). Its methods run on the loop's goroutine and must not
// block.
type HelloRouter interface {
	// InspectTimeout is how long a client has, from its accept, to send
	// its whole ClientHello.
	InspectTimeout() time.Duration
	// Route picks the proxy for a connection whose hello is h; nil
	// refuses it (no route matched and there is no default: Route counts
	// and logs that).
	Route(h *tlshello.Hello, peer netip.AddrPort) *Proxy
	// Refused is told of a connection closed without a complete, valid
	// hello: err wraps one of tlshello's errors (ErrTimeout at the
	// inspect timeout), or context.Canceled for a shutdown.
	Refused(err error, peer netip.AddrPort)
}
