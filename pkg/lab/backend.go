package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Backend is one of the lab's three backends: a TCP listener on port
// TCPPort and a UDP socket on UDPPort of its address, in the backends'
// namespace. Each answers with one line, "NAME PEER\n": its name and the
// address the connection or datagram came from, an instance's address,
// which tells who served the flow.
type Backend struct {
	Name string     // b1, b2, b3
	Addr netip.Addr // 10.77.9.11, .12, .13
	tcp  *net.TCPListener
	udp  *net.UDPConn
	wg   sync.WaitGroup
}

func (l *Lab) startBackends() error {
	for i := range 3 {
		b := &Backend{Name: fmt.Sprintf("b%d", i+1), Addr: netip.AddrFrom4([4]byte{10, 77, 9, byte(11 + i)})}
		err := l.backendNS.do(func() error {
			ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(b.Addr, TCPPort)))
			if err != nil {
				return err
			}
			b.tcp = ln
			b.udp, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.Addr, UDPPort)))
			if err != nil {
				ln.Close()
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("backend %s: %w", b.Name, err)
		}
		l.Backends = append(l.Backends, b)
		b.wg.Add(2)
		go b.serveTCP()
		go b.serveUDP()
	}
	return nil
}

// serveTCP answers each connection with its line and closes it (the
// instance's health checks too: they connect and close).
func (b *Backend) serveTCP() {
	defer b.wg.Done()
	for {
		c, err := b.tcp.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer c.Close()
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			peer := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			c.Write([]byte(b.Name + " " + peer.String() + "\n"))
		}()
	}
}

// serveUDP answers each datagram with its line, to the sender.
func (b *Backend) serveUDP() {
	defer b.wg.Done()
	buf := make([]byte, 2048)
	out := make([]byte, 0, 64)
	for {
		_, peer, err := b.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		out = append(append(append(out[:0], b.Name...), ' '), peer.Addr().Unmap().String()...)
		out = append(out, '\n')
		b.udp.WriteToUDPAddrPort(out, peer)
	}
}

func (b *Backend) close() {
	b.tcp.Close()
	b.udp.Close()
	b.wg.Wait()
}

// reply is a parsed backend line: the backend's name and the instance
// that served.
func (l *Lab) reply(line string) (backend, instance string, err error) {
	name, peer, ok := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
	if !ok || !strings.HasSuffix(line, "\n") {
		return "", "", fmt.Errorf("incomplete reply %q", line)
	}
	in := l.instanceAt(peer)
	if in == nil {
		return "", "", fmt.Errorf("reply %q from no instance", line)
	}
	return name, in.Name, nil
}
