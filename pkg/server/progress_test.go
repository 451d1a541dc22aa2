package server

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// TestSlowReaderKeepsFlowing: a fast backend and a slow client fill the
// backend socket's queue with megabytes. The transfer takes more than twice
// idle_timeout, but bytes move all the time, so the connection must not be
// cut, and the byte counter must advance while it runs. idle_timeout is
// 150 times the read pacing: a reader descheduled for a second or two on a
// loaded machine is not idle.
func TestSlowReaderKeepsFlowing(t *testing.T) {
	const (
		size = 24 << 20 // more than every socket buffer on the way
		idle = 3 * time.Second
	)
	// Built before anything starts: with -race on a busy machine this
	// takes longer than the idle window below.
	payload := bytes.Repeat([]byte("z"), size)
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		c.Write(payload)
		c.CloseWrite()
		io.Copy(io.Discard, c)
	})
	h := startServer(t, listenerTOML("l", "p", fmt.Sprintf("idle_timeout = %q", idle))+poolTOML("p", "", be.Addr)+noHealth)
	c := h.dial("l")
	out := h.tcpSeries("l", "p", be.Addr).BytesOut
	buf := make([]byte, 64<<10)
	var got int
	midway := -1.0
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	for got < size && time.Now().Before(deadline) {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		got += n
		if err != nil {
			break
		}
		if midway < 0 && got >= size/2 {
			midway = counter(out)
		}
		time.Sleep(20 * time.Millisecond) // a slow reader, at most 3.2 MiB/s: 384 reads, at least 7.7 s
	}
	if got != size {
		t.Fatalf("slow reader got %d of %d bytes: the connection was cut while bytes flowed", got, size)
	}
	if d := time.Since(start); d < 2*idle {
		t.Fatalf("the slow read took %v, not twice idle_timeout: the test proves nothing", d)
	}
	if midway <= 0 || midway >= size {
		t.Fatalf("bytes_total out was %v halfway through a %d-byte transfer: it must advance while data flows", midway, size)
	}
}
