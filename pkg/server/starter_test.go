package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// TestStarters: accepted connections are set up by starter goroutines
// that serve one connection after another (listener.go, startTCP). A burst
// of connections whose set-up waits (for a PROXY header) runs a starter
// each, so the accept loop keeps accepting; once they are set up,
// maxWaitingStarters stay to wait for the next ones; later connections are
// set up by those same goroutines, none started anew; and none outlives
// the server.
func TestStarters(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	h := startServer(t, listenerTOML("l", "p", "accept_proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_protocol_timeout = \"30s\"\n")+
		poolTOML("p", "", be.Addr)+noHealth)
	hello := []byte("PROXY TCP4 192.0.2.1 127.0.0.1 1234 80\r\nx")
	echo := func(c *net.TCPConn) {
		t.Helper()
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("echo through lbctl: %v", err)
		}
	}

	const burst = 3 * maxWaitingStarters
	conns := make([]*net.TCPConn, burst)
	for i := range conns {
		conns[i] = h.dial("l") // no header yet: its starter waits for it
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		n := len(starterIDs())
		return n >= burst, fmt.Sprintf("%d starter goroutines, want one per pending connection (%d)", n, burst)
	})
	for _, c := range conns {
		echo(c)
	}
	var idle []string
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		idle = starterIDs()
		return len(idle) == maxWaitingStarters, fmt.Sprintf("%d starter goroutines after the burst, want %d", len(idle), maxWaitingStarters)
	})

	for range 2 * maxWaitingStarters {
		c := h.dial("l")
		echo(c)
		c.Close()
	}
	if now := starterIDs(); !slices.Equal(now, idle) {
		t.Errorf("starter goroutines %v after one connection after another, want the same as before them: %v", now, idle)
	}

	ctx, cancel := context.WithTimeout(context.Background(), cleanupDrain)
	defer cancel()
	h.srv.Shutdown(ctx)
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		n := len(starterIDs())
		return n == 0, fmt.Sprintf("%d starter goroutines after Shutdown", n)
	})
}

// starterIDs returns the ids of the goroutines running Server.starter,
// sorted.
func starterIDs() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var ids []string
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if !bytes.Contains(g, []byte("pkg/server.(*Server).starter(")) {
			continue
		}
		id, _, _ := strings.Cut(strings.TrimPrefix(string(g), "goroutine "), " ")
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
