package udpproxy_test

import (
	"net"
	"sync"
	"testing"
	"time"
)

// benchEcho is an echo backend that does not allocate per datagram, so a
// benchmark's allocs/op are lbctl's.
func benchEcho(b *testing.B) string {
	b.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	c.SetWriteBuffer(4 << 20)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	b.Cleanup(func() { c.Close(); wg.Wait() })
	return c.LocalAddr().String()
}

// BenchmarkUDPForward is one request and its reply through lbctl per op,
// on an open session: the per-datagram path both ways (target: 0 allocs/op).
func BenchmarkUDPForward(b *testing.B) {
	for _, size := range []int{64, 1400} {
		b.Run(byteSize(size), func(b *testing.B) {
			r := newRig(b, rigOpts{}, benchEcho(b))
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(r.addr))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			req, resp := make([]byte, size), make([]byte, 65536)
			exchange := func() {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				if _, err := c.Read(resp); err != nil {
					b.Fatal(err)
				}
			}
			c.SetReadDeadline(time.Now().Add(time.Minute))
			exchange() // open the session
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				exchange()
			}
		})
	}
}

// BenchmarkUDPDirect is BenchmarkUDPForward's exchange without lbctl: the
// baseline that lbctl's cost adds to.
func BenchmarkUDPDirect(b *testing.B) {
	c, err := net.Dial("udp", benchEcho(b))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req, resp := make([]byte, 64), make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(time.Minute))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(resp); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUDPForwardParallel keeps several clients busy at once, each
// with its own session: throughput rather than latency.
func BenchmarkUDPForwardParallel(b *testing.B) {
	r := newRig(b, rigOpts{}, benchEcho(b))
	b.SetParallelism(4)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(r.addr))
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		req, resp := make([]byte, 64), make([]byte, 65536)
		for pb.Next() {
			c.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := c.Write(req); err != nil {
				b.Error(err)
				return
			}
			if _, err := c.Read(resp); err != nil {
				// A datagram lost under load: count it and go on.
				continue
			}
		}
	})
}

func byteSize(n int) string {
	switch {
	case n >= 1000:
		return "1400B"
	default:
		return "64B"
	}
}
