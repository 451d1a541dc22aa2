package tcpproxy_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"github.com/prometheus/client_golang/prometheus"
)

// TestRegistryKill: Kill resets every established connection of the
// backend on both sides (the client and the backend see ECONNRESET), each
// ends with EndKilled, and the registry is empty afterwards.
func TestRegistryKill(t *testing.T) {
	backendErrs := make(chan error, 3)
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		c.Write([]byte("x")) // the client knows it is connected
		_, err := io.Copy(io.Discard, c)
		backendErrs <- err
	})
	reg := &tcpproxy.Registry{}
	m := metrics.New(prometheus.NewRegistry())
	b := balancer.NewBackend(be.Addr)
	pool, err := balancer.New(balancer.RoundRobin, []balancer.Member{{Backend: b, Weight: 1}})
	if err != nil {
		t.Fatal(err)
	}
	p := tcpproxy.New(tcpproxy.Config{
		Listener: "l", PoolName: "p", Pool: pool, ConnectTimeout: time.Second,
		Targets:    map[*balancer.Backend]*tcpproxy.Target{b: {Addr: be.Addr, Metrics: m.ForTCP("l", "p", be.Addr), Conns: reg}},
		Rejections: m.ForListener("tcp", "l"),
	})
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const n = 3
	ends := make(chan tcpproxy.End, n)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range n {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			p.Start(context.Background(), c, c.RemoteAddr().(*net.TCPAddr).AddrPort(), func(e tcpproxy.End) { ends <- e })
		}
	}()
	defer wg.Wait()
	var clients []*net.TCPConn
	for range n {
		c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("read the backend's first byte: %v", err)
		}
		clients = append(clients, c)
	}
	lbtest.Eventually(t, 5*time.Second, func() bool { return reg.Len() == n }, "registry holds the connections")
	if got := reg.Kill(tcpproxy.EndKilled); got != n {
		t.Fatalf("Kill = %d, want %d", got, n)
	}
	for _, c := range clients {
		_, err := c.Read(make([]byte, 1))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client read after kill: %v, want ECONNRESET", err)
		}
	}
	for range n {
		if e := <-ends; e != tcpproxy.EndKilled {
			t.Errorf("end %v, want killed", e)
		}
		if err := <-backendErrs; !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("backend read after kill: %v, want ECONNRESET", err)
		}
	}
	if reg.Len() != 0 || b.Active() != 0 {
		t.Fatalf("after the kill: registry %d, active %d, want 0, 0", reg.Len(), b.Active())
	}
	if got := reg.Kill(tcpproxy.EndKilled); got != 0 {
		t.Fatalf("second Kill = %d, want 0", got)
	}
	if tcpproxy.EndKilled.String() != "killed" || tcpproxy.EndDrainTimeout.String() != "drain_timeout" {
		t.Fatalf("end names %q %q", tcpproxy.EndKilled, tcpproxy.EndDrainTimeout)
	}
}
