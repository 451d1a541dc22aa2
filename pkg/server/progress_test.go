package server

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// TestSlowReaderKeepsFlowing: a fast backend and a slow client fill the
// backend socket's queue with megabytes. The transfer takes longer than
// idle_timeout, but bytes move all the time, so the connection must not be
// cut, and the byte counter must advance while it runs.
func TestSlowReaderKeepsFlowing(t *testing.T) {
	const size = 24 << 20 // more than every socket buffer on the way
	// Built before anything starts: with -race on a busy machine this
	// takes longer than the idle window below.
	payload := bytes.Repeat([]byte("z"), size)
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		c.Write(payload)
		c.CloseWrite()
		io.Copy(io.Discard, c)
	})
	h := startServer(t, listenerTOML("l", "p", `idle_timeout = "600ms"`)+poolTOML("p", "", be.Addr)+noHealth)
	c := h.dial("l")
	out := h.tcpSeries("l", "p", be.Addr).BytesOut
	buf := make([]byte, 64<<10)
	var got int
	midway := -1.0
	deadline := time.Now().Add(30 * time.Second)
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
		time.Sleep(8 * time.Millisecond) // a slow reader: about 8 MiB/s
	}
	if got != size {
		t.Fatalf("slow reader got %d of %d bytes: the connection was cut while bytes flowed", got, size)
	}
	if midway <= 0 || midway >= size {
		t.Fatalf("bytes_total out was %v halfway through a %d-byte transfer: it must advance while data flows", midway, size)
	}
}
