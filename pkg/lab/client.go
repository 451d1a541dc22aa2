package lab

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// Flow is one client connection (TCP) or exchange (UDP) and who served it.
type Flow struct {
	Client netip.Addr
	Port   uint16 // the client's port (UDP flows; TCP: 0, any)
	// Via is "router" for a flow to VIP, which the router's ECMP sends
	// to an instance, or the name of the instance dialled directly at
	// its own address.
	Via      string
	Instance string // who served it; "" if it failed
	Backend  string // b1, b2, b3; "" if it failed
	Start    time.Time
	End      time.Time
	Err      error
}

// flowTimeout bounds each connection (connect and reply) and each UDP
// exchange attempt.
const flowTimeout = 3 * time.Second

// tcpFlow connects from src to dst:TCPPort and reads the backend's line.
// It runs on a thread in the client's namespace (netns.workers).
func (l *Lab) tcpFlow(src, dst netip.Addr, via string) Flow {
	f := Flow{Client: src, Via: via, Start: time.Now()}
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: flowTimeout}
	c, err := d.Dial("tcp4", netip.AddrPortFrom(dst, TCPPort).String())
	if err == nil {
		c.SetDeadline(time.Now().Add(flowTimeout))
		var b []byte
		b, err = io.ReadAll(io.LimitReader(c, 128))
		c.Close()
		if err == nil {
			f.Backend, f.Instance, err = l.reply(string(b))
		} else {
			err = fmt.Errorf("read after %q: %w", b, err)
		}
	}
	f.End, f.Err = time.Now(), err
	return f
}

// flowSpec is a TCP flow to make: from a client address to VIP (via
// "router") or to an instance's own address.
type flowSpec struct {
	src, dst netip.Addr
	via      string
}

// tcpFlows makes the flows, k at a time, from the client's namespace, and
// returns them in the order of specs.
func (l *Lab) tcpFlows(specs []flowSpec, k int) ([]Flow, error) {
	out := make([]Flow, len(specs))
	jobs := make(chan func())
	go func() {
		defer close(jobs)
		for i, s := range specs {
			jobs <- func() { out[i] = l.tcpFlow(s.src, s.dst, s.via) }
		}
	}()
	return out, l.client.workers(k, jobs)
}

// udpFlow is a client UDP socket, bound to a client address and a port of
// its own for the lab's life: one flow (5-tuple) to VIP:UDPPort.
type udpFlow struct {
	conn   *net.UDPConn
	client netip.AddrPort
}

// OpenUDP opens n UDP flows, from the first n client addresses (an
// ephemeral port each), kept until Close: ExchangeUDP sends on them.
func (l *Lab) OpenUDP(n int) error {
	return l.client.do(func() error {
		for i := range n {
			c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(l.clients[i], 0)))
			if err != nil {
				return err
			}
			l.udp = append(l.udp, &udpFlow{conn: c, client: c.LocalAddr().(*net.UDPAddr).AddrPort()})
		}
		return nil
	})
}

// ExchangeUDP sends one datagram on each UDP flow (at most 3 tries of
// flowTimeout/3 each) and returns who answered each.
func (l *Lab) ExchangeUDP() []Flow {
	out := make([]Flow, len(l.udp))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i, u := range l.udp {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			out[i] = l.udpExchange(u)
		}()
	}
	wg.Wait()
	return out
}

func (l *Lab) udpExchange(u *udpFlow) Flow {
	f := Flow{Client: u.client.Addr(), Port: u.client.Port(), Via: "router", Start: time.Now()}
	buf := make([]byte, 128)
	dst := netip.AddrPortFrom(VIP, UDPPort)
	var err error
	for range 3 {
		if _, err = u.conn.WriteToUDPAddrPort([]byte("which?"), dst); err != nil {
			break
		}
		u.conn.SetReadDeadline(time.Now().Add(flowTimeout / 3))
		var n int
		var from netip.AddrPort
		n, from, err = u.conn.ReadFromUDPAddrPort(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err == nil && from != dst {
			err = fmt.Errorf("reply from %v, not %v", from, dst)
		}
		if err == nil {
			f.Backend, f.Instance, err = l.reply(string(buf[:n]))
		}
		break
	}
	f.End, f.Err = time.Now(), err
	return f
}
