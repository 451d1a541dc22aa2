package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// tag names the backend and the generation (one per start) that served a
// connection or a datagram, so a failure can be told apart: a stream cut
// because its backend was killed is the design's limit, any other failure
// is lbctl's fault.
type tag struct{ id, gen uint32 }

const tagLen = 8

func (t tag) append(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, t.id)
	return binary.BigEndian.AppendUint32(b, t.gen)
}

func parseTag(b []byte) tag {
	return tag{binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:])}
}

// backend is what the chaos loop kills and restarts.
type backend interface {
	name() string
	kill()
	restart() error
	// killed reports whether generation gen of the backend was killed.
	killed(gen uint32) bool
	isDown() bool
}

// generations is the kill bookkeeping shared by both kinds of backend.
type generations struct {
	mu   sync.Mutex
	gen  uint32
	down bool
}

func (g *generations) killed(gen uint32) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return gen < g.gen || gen == g.gen && g.down
}

func (g *generations) isDown() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.down
}

// tcpBackend is an echo server: on accept it sends its tag, then echoes
// every byte, and shuts its write side at EOF. Killing it closes the
// listener and resets every connection, as a crash would.
type tcpBackend struct {
	generations
	id    uint32
	addr  string
	ln    *net.TCPListener
	conns map[*net.TCPConn]struct{}
	wg    sync.WaitGroup
}

func startTCPBackend(id uint32) (*tcpBackend, error) {
	b := &tcpBackend{id: id, conns: map[*net.TCPConn]struct{}{}}
	if err := b.listen("127.0.0.1:0"); err != nil {
		return nil, err
	}
	b.addr = b.ln.Addr().String()
	return b, nil
}

func (b *tcpBackend) name() string { return fmt.Sprintf("tcp backend %d (%s)", b.id, b.addr) }

// listen binds addr (retrying while the old socket lingers) and serves.
// Called with b.mu not held.
func (b *tcpBackend) listen(addr string) error {
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; {
		if ln, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("tcp backend %d listen %s: %w", b.id, addr, err)
	}
	b.mu.Lock()
	b.ln = ln.(*net.TCPListener)
	b.down = false
	t := tag{b.id, b.gen}
	b.mu.Unlock()
	b.wg.Add(1)
	go b.serve(b.ln, t)
	return nil
}

func (b *tcpBackend) serve(ln *net.TCPListener, t tag) {
	defer b.wg.Done()
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		b.mu.Lock()
		if b.down || b.ln != ln {
			b.mu.Unlock()
			c.Close()
			continue
		}
		b.conns[c] = struct{}{}
		b.wg.Add(1)
		b.mu.Unlock()
		go func() {
			defer b.wg.Done()
			echoTCP(c, t)
			c.Close()
			b.mu.Lock()
			delete(b.conns, c)
			b.mu.Unlock()
		}()
	}
}

func echoTCP(c *net.TCPConn, t tag) {
	if _, err := c.Write(t.append(nil)); err != nil {
		return
	}
	if _, err := io.Copy(c, c); err != nil {
		return
	}
	c.CloseWrite()
}

func (b *tcpBackend) kill() {
	b.mu.Lock()
	if b.down {
		b.mu.Unlock()
		return
	}
	b.down = true
	b.ln.Close()
	for c := range b.conns {
		c.SetLinger(0)
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

func (b *tcpBackend) restart() error {
	b.mu.Lock()
	if !b.down {
		b.mu.Unlock()
		return nil
	}
	b.gen++
	b.mu.Unlock()
	return b.listen(b.addr)
}

// udpBackend answers every datagram with the datagram followed by its tag.
type udpBackend struct {
	generations
	id   uint32
	addr string
	conn *net.UDPConn
	done chan struct{}
}

func startUDPBackend(id uint32) (*udpBackend, error) {
	b := &udpBackend{id: id}
	if err := b.listen("127.0.0.1:0"); err != nil {
		return nil, err
	}
	b.addr = b.conn.LocalAddr().String()
	return b, nil
}

func (b *udpBackend) name() string { return fmt.Sprintf("udp backend %d (%s)", b.id, b.addr) }

func (b *udpBackend) listen(addr string) error {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	var c *net.UDPConn
	for deadline := time.Now().Add(5 * time.Second); ; {
		if c, err = net.ListenUDP("udp", ua); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("udp backend %d listen %s: %w", b.id, addr, err)
	}
	c.SetReadBuffer(4 << 20)
	c.SetWriteBuffer(4 << 20)
	b.mu.Lock()
	b.conn, b.down, b.done = c, false, make(chan struct{})
	t, done := tag{b.id, b.gen}, b.done
	b.mu.Unlock()
	go serveUDP(c, t, done)
	return nil
}

func serveUDP(c *net.UDPConn, t tag, done chan struct{}) {
	defer close(done)
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf[:len(buf)-tagLen])
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		c.WriteToUDPAddrPort(t.append(buf[:n]), from)
	}
}

func (b *udpBackend) kill() {
	b.mu.Lock()
	if b.down {
		b.mu.Unlock()
		return
	}
	b.down = true
	b.conn.Close()
	done := b.done
	b.mu.Unlock()
	<-done
}

func (b *udpBackend) restart() error {
	b.mu.Lock()
	if !b.down {
		b.mu.Unlock()
		return nil
	}
	b.gen++
	b.mu.Unlock()
	return b.listen(b.addr)
}
