package lbtest

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// UDPHandler answers one datagram: it returns the replies to send back to
// its sender (none, one or several).
type UDPHandler func(req []byte) [][]byte

// UDPBackend is a UDP server on loopback that answers every datagram with
// a UDPHandler and remembers who sent what.
type UDPBackend struct {
	Addr string
	Name string
	conn *net.UDPConn
	h    UDPHandler
	done chan struct{}

	received atomic.Int64
	mu       sync.Mutex
	peers    map[netip.AddrPort]int // datagrams by source
}

// NewUDP starts a UDP backend on 127.0.0.1 with an ephemeral port. It is
// reading when NewUDP returns, and is closed in t.Cleanup.
func NewUDP(t testing.TB, name string, h UDPHandler) *UDPBackend {
	t.Helper()
	return NewUDPAt(t, "127.0.0.1:0", name, h)
}

// NewUDPAt starts a UDP backend on addr ("[::1]:0" for IPv6).
func NewUDPAt(t testing.TB, addr, name string, h UDPHandler) *UDPBackend {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatalf("udp backend %s: %v", addr, err)
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		t.Fatalf("udp backend listen %s: %v", addr, err)
	}
	c.SetReadBuffer(4 << 20)
	b := &UDPBackend{Addr: c.LocalAddr().String(), Name: name, conn: c, h: h, done: make(chan struct{}),
		peers: map[netip.AddrPort]int{}}
	go b.serve()
	t.Cleanup(b.Close)
	return b
}

func (b *UDPBackend) serve() {
	defer close(b.done)
	buf := make([]byte, 65535)
	for {
		n, from, err := b.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return // closed
		}
		b.received.Add(1)
		b.mu.Lock()
		b.peers[from]++
		b.mu.Unlock()
		for _, r := range b.h(buf[:n]) {
			b.conn.WriteToUDPAddrPort(r, from)
		}
	}
}

// Close stops the backend and waits for its goroutine. Its port then
// answers ICMP port unreachable.
func (b *UDPBackend) Close() {
	b.conn.Close()
	<-b.done
}

// Received is the number of datagrams received so far.
func (b *UDPBackend) Received() int64 { return b.received.Load() }

// Peers returns the number of datagrams received from each source address.
func (b *UDPBackend) Peers() map[netip.AddrPort]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[netip.AddrPort]int, len(b.peers))
	for k, v := range b.peers {
		out[k] = v
	}
	return out
}

// UDPEcho sends every datagram back unchanged.
func UDPEcho(req []byte) [][]byte { return [][]byte{append([]byte(nil), req...)} }

// UDPSilent answers nothing: a backend that never replies (its datagrams
// are counted, and no ICMP error comes back).
func UDPSilent([]byte) [][]byte { return nil }

// UDPTagged answers every datagram with name, "|" and the datagram, so a
// client can tell which backend answered which request.
func UDPTagged(name string) UDPHandler {
	return func(req []byte) [][]byte {
		return [][]byte{append([]byte(name+"|"), req...)}
	}
}

// UDPRepeat answers every datagram n times with UDPTagged's reply.
func UDPRepeat(name string, n int) UDPHandler {
	return func(req []byte) [][]byte {
		out := make([][]byte, n)
		for i := range out {
			out[i] = append([]byte(name+"|"), req...)
		}
		return out
	}
}

// ClosedUDPPort returns a loopback address where no UDP socket listens, so
// datagrams sent there draw ICMP port unreachable. network is "udp4" or
// "udp6".
func ClosedUDPPort(t testing.TB, network string) string {
	t.Helper()
	host := "127.0.0.1:0"
	if network == "udp6" {
		host = "[::1]:0"
	}
	c, err := net.ListenPacket(network, host)
	if err != nil {
		t.Fatalf("closed udp port: %v", err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

// UDPExchange sends req from c to addr and returns the first reply, or nil
// after timeout.
func UDPExchange(t testing.TB, c *net.UDPConn, addr netip.AddrPort, req []byte, timeout time.Duration) []byte {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(req, addr); err != nil {
		t.Fatalf("udp send to %s: %v", addr, err)
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 65535)
	n, _, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}
