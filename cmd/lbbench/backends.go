package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// backendAddrs lists the loopback servers every target forwards to. The
// backends run in their own process (lbbench backends) so that their CPU
// time never counts as the proxy's.
type backendAddrs struct {
	Echo []string `json:"echo"` // TCP: every byte read is written back
	Sink []string `json:"sink"` // TCP: every byte read is discarded
	UDP  []string `json:"udp"`  // UDP: every datagram is sent back to its sender
}

// backendSet owns the listeners of one backend process.
type backendSet struct {
	addrs backendAddrs
	lns   []net.Listener
	pcs   []net.PacketConn
	wg    sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// startBackends listens on n echo, n sink and n UDP echo servers on
// 127.0.0.1 with ports chosen by the kernel. The TCP ones are plain TCP,
// as the servers behind a balancer are (Go's listeners are MPTCP by
// default, whose accept path every proxy's connect would cross).
func startBackends(n int) (*backendSet, error) {
	b := &backendSet{conns: make(map[net.Conn]struct{})}
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	for i := 0; i < n; i++ {
		for _, kind := range []string{"echo", "sink"} {
			ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
			if err != nil {
				b.Close()
				return nil, fmt.Errorf("listen %s backend: %w", kind, err)
			}
			b.lns = append(b.lns, ln)
			if kind == "echo" {
				b.addrs.Echo = append(b.addrs.Echo, ln.Addr().String())
				b.serve(ln, echoConn)
			} else {
				b.addrs.Sink = append(b.addrs.Sink, ln.Addr().String())
				b.serve(ln, sinkConn)
			}
		}
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("listen udp backend: %w", err)
		}
		_ = pc.(*net.UDPConn).SetReadBuffer(4 << 20)
		_ = pc.(*net.UDPConn).SetWriteBuffer(4 << 20)
		b.pcs = append(b.pcs, pc)
		b.addrs.UDP = append(b.addrs.UDP, pc.LocalAddr().String())
		// Two readers per socket keep up with both cores.
		for r := 0; r < 2; r++ {
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				udpEcho(pc.(*net.UDPConn))
			}()
		}
	}
	return b, nil
}

func (b *backendSet) serve(ln net.Listener, handle func(net.Conn)) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // EMFILE and friends: keep serving
			}
			b.mu.Lock()
			b.conns[c] = struct{}{}
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				handle(c)
				b.mu.Lock()
				delete(b.conns, c)
				b.mu.Unlock()
				c.Close()
			}()
		}
	}()
}

// Close stops every server and waits for their goroutines.
func (b *backendSet) Close() {
	for _, ln := range b.lns {
		ln.Close()
	}
	for _, pc := range b.pcs {
		pc.Close()
	}
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// echoConn writes back what it reads until EOF, then closes. A small buffer
// keeps 8,000 idle connections cheap; requests are 64 bytes.
func echoConn(c net.Conn) {
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// sinkConn reads and discards until EOF.
func sinkConn(c net.Conn) {
	buf := make([]byte, 256<<10)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

func udpEcho(pc *net.UDPConn) {
	buf := make([]byte, 2048)
	for {
		n, addr, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		_, _ = pc.WriteToUDPAddrPort(buf[:n], addr)
	}
}

// runBackends is the "lbbench backends" child: it prints its addresses as
// one JSON line on stdout, then serves until stdin closes (the parent died
// or is done) or a SIGTERM/SIGINT arrives.
func runBackends(n int) error {
	b, err := startBackends(n)
	if err != nil {
		return err
	}
	defer b.Close()
	if err := json.NewEncoder(os.Stdout).Encode(b.addrs); err != nil {
		return fmt.Errorf("write addresses: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
		close(done)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-done:
	case <-sig:
	}
	return nil
}
