package server

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// These tests run a real server whose pools follow a real dnsmasq (A and
// SRV records) or a real etcd, with real backends on loopback addresses:
// all of 127.0.0.0/8 is loopback on Linux, so DNS records can name distinct
// IPs at one port.

// liveMargin is what a loaded machine may add to a promised delay; the
// measured delay is logged.
const liveMargin = 2 * time.Second

// namedEcho answers a connection with its name and a newline, then echoes:
// a connection that tells which backend serves it and stays up.
func namedEcho(name string) lbtest.Handler {
	return func(c *net.TCPConn) {
		c.Write([]byte(name + "\n"))
		io.Copy(c, c)
		c.CloseWrite()
	}
}

// portOn returns a port free on every one of ips a moment ago.
func portOn(t *testing.T, ips ...string) int {
	t.Helper()
next:
	for range 20 {
		ln, err := net.Listen("tcp", ips[0]+":0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		for _, ip := range ips[1:] {
			l, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, port))
			if err != nil {
				continue next
			}
			l.Close()
		}
		return port
	}
	t.Fatalf("no port free on all of %v", ips)
	return 0
}

// liveConn is a client connection through listener l with the name of the
// namedEcho backend serving it.
type liveConn struct {
	c    net.Conn
	r    *bufio.Reader
	name string
}

func dialNamed(t *testing.T, h *harness, l string) *liveConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", h.addr(l), 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	lc := &liveConn{c: c, r: bufio.NewReader(c)}
	name, err := lc.r.ReadString('\n')
	if err != nil {
		c.Close()
		return lc // rejected: no backend
	}
	lc.name = strings.TrimSuffix(name, "\n")
	return lc
}

// served dials l once and returns the name of the backend, "" if rejected.
func servedName(t *testing.T, h *harness, l string) string {
	t.Helper()
	lc := dialNamed(t, h, l)
	lc.c.Close()
	return lc.name
}

// echo sends msg on the connection and reads it back.
func (lc *liveConn) echo(t *testing.T, msg string) {
	t.Helper()
	if _, err := lc.c.Write([]byte(msg)); err != nil {
		t.Fatalf("write %q to %s: %v", msg, lc.name, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(lc.r, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo of %q from %s: %q %v", msg, lc.name, buf, err)
	}
}

// waitServed polls new connections until one is served by name and
// returns how long that took from start.
func waitServed(t *testing.T, h *harness, l, name string, start time.Time, within time.Duration) time.Duration {
	t.Helper()
	var took time.Duration
	lbtest.Until(t, within+liveMargin-time.Since(start), func() (bool, string) {
		got := servedName(t, h, l)
		took = time.Since(start)
		return got == name, fmt.Sprintf("served by %q, want %q", got, name)
	})
	if took > within {
		t.Logf("first connection to %s after %v: over the promised %v (loaded machine?)", name, took, within)
	}
	return took
}

// onlyServedBy opens n connections and fails unless name serves them all.
func onlyServedBy(t *testing.T, h *harness, l, name string, n int) {
	t.Helper()
	for i := range n {
		if got := servedName(t, h, l); got != name {
			t.Fatalf("connection %d served by %q, want %q only", i, got, name)
		}
	}
}

// TestDNSSourceLive: a pool fed by a dns source (interval 1s) asking a real
// dnsmasq. A new A record serves within interval + 1s; a removed one takes
// no new connection within interval + 1s while its established connection
// goes on until drain_timeout (3s) and is then reset; dnsmasq stopped, the
// pool is unchanged and the failure metric moves.
func TestDNSSourceLive(t *testing.T) {
	t.Parallel()
	const interval = time.Second
	const drain = 3 * time.Second
	port := portOn(t, "127.0.0.2", "127.0.0.3")
	a := lbtest.NewTCPAt(t, fmt.Sprintf("127.0.0.2:%d", port), namedEcho("a"))
	b := lbtest.NewTCPAt(t, fmt.Sprintf("127.0.0.3:%d", port), namedEcho("b"))
	ns := lbtest.NewDnsmasq(t, "127.0.0.2 web.lbctl.test")
	h := startServer(t, listenerTOML("l", "p", "")+fmt.Sprintf(`[pools.p]
drain_timeout = "3s"
[[pools.p.discover]]
type = "dns"
name = "web.lbctl.test"
port = %d
resolver = %q
interval = "1s"
`, port, ns.Addr())+noHealth)
	source := "dns:web.lbctl.test"

	start := time.Now()
	d := waitServed(t, h, "l", "a", start, interval+time.Second)
	t.Logf("a (at start) served after %v", d)

	// A new record.
	ns.SetHosts("127.0.0.2 web.lbctl.test\n127.0.0.3 web.lbctl.test")
	d = waitServed(t, h, "l", "b", time.Now(), interval+time.Second)
	t.Logf("new record b served after %v (promise: interval + 1s = %v)", d, interval+time.Second)
	if st, ok := backendOf(h, "p", b.Addr); !ok || st.Source != source {
		t.Fatalf("b in status: %+v %v", st, ok)
	}

	// An established connection to a, then a's record removed.
	var held *liveConn
	for range 10 {
		if lc := dialNamed(t, h, "l"); lc.name == "a" {
			held = lc
			break
		} else {
			lc.c.Close()
		}
	}
	if held == nil {
		t.Fatal("no connection to a in 10 (round robin over a and b)")
	}
	held.echo(t, "before")
	ns.SetHosts("127.0.0.3 web.lbctl.test")
	removedAfter := time.Now() // a is in the pool until dnsmasq serves the new file
	lbtest.Until(t, interval+time.Second+liveMargin, func() (bool, string) {
		st, ok := backendOf(h, "p", a.Addr)
		return ok && st.Removing, fmt.Sprintf("a: %+v %v", st, ok)
	})
	d = time.Since(removedAfter)
	t.Logf("removed record a removing after %v (promise: interval + 1s)", d)
	acceptedA := a.Accepted()
	onlyServedBy(t, h, "l", "b", 10)
	if n := a.Accepted(); n != acceptedA {
		t.Fatalf("a accepted %d connections after its removal", n-acceptedA)
	}
	held.echo(t, "during the drain")
	_, err := held.r.ReadByte()
	resetAt := time.Since(removedAfter)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read on the draining connection: %v, want ECONNRESET at drain_timeout", err)
	}
	if resetAt < drain {
		t.Fatalf("reset %v after the record went, before drain_timeout %v", resetAt, drain)
	}
	t.Logf("established connection to a reset %v after the record went (drain_timeout %v)", resetAt, drain)
	lbtest.Eventually(t, 5*time.Second, func() bool {
		_, ok := backendOf(h, "p", a.Addr)
		return !ok
	}, "a still in status after its drain")

	// dnsmasq stopped: the pool is unchanged, the failure metric moves.
	failures := h.m.DiscoveryRefreshes.WithLabelValues("p", source, "failure")
	before := counter(failures)
	ns.Stop()
	lbtest.Until(t, 15*time.Second, func() (bool, string) {
		n := counter(failures)
		return n > before, fmt.Sprintf("failures %v, was %v", n, before)
	})
	st := poolStatus(h, "p")
	if len(st.Backends) != 1 || st.Backends[0].Address != b.Addr || st.Backends[0].Removing {
		t.Fatalf("pool while dnsmasq is down: %+v", st.Backends)
	}
	onlyServedBy(t, h, "l", "b", 5)
}

// TestDNSSourceSlowStart: a new A record of a pool with slow_start enters
// at a reduced weight: its share of new connections grows from below half
// to half (two equal backends) once slow_start has passed.
func TestDNSSourceSlowStart(t *testing.T) {
	t.Parallel()
	const slowStart = 3 * time.Second
	port := portOn(t, "127.0.0.4", "127.0.0.5")
	lbtest.NewTCPAt(t, fmt.Sprintf("127.0.0.4:%d", port), namedEcho("a"))
	b := lbtest.NewTCPAt(t, fmt.Sprintf("127.0.0.5:%d", port), namedEcho("b"))
	ns := lbtest.NewDnsmasq(t, "127.0.0.4 web.lbctl.test")
	h := startServer(t, listenerTOML("l", "p", "")+fmt.Sprintf(`[pools.p]
slow_start = "3s"
[[pools.p.discover]]
type = "dns"
name = "web.lbctl.test"
port = %d
resolver = %q
interval = "1s"
`, port, ns.Addr())+noHealth)
	waitServed(t, h, "l", "a", time.Now(), 2*time.Second)

	ns.SetHosts("127.0.0.4 web.lbctl.test\n127.0.0.5 web.lbctl.test")
	added := time.Now()
	lbtest.Until(t, 2*time.Second+liveMargin, func() (bool, string) {
		_, ok := backendOf(h, "p", b.Addr)
		return ok, "b not in the pool yet"
	})
	share := func(n int) int {
		got := 0
		for range n {
			if servedName(t, h, "l") == "b" {
				got++
			}
		}
		return got
	}
	early := share(20)
	elapsed := time.Since(added)
	if elapsed < slowStart/2 && early >= 10 {
		t.Errorf("b served %d of 20 connections within %v of joining, want fewer than half during slow_start %v", early, elapsed, slowStart)
	}
	lbtest.Eventually(t, slowStart+liveMargin, func() bool {
		h.srv.mu.Lock()
		defer h.srv.mu.Unlock()
		be := h.srv.pools["p"].byAddr[netip.MustParseAddrPort(b.Addr)]
		return be != nil && be.b.WeightScale() == 1000
	}, "b's slow start never ended")
	late := share(20)
	if late < 9 || late > 11 {
		t.Errorf("b served %d of 20 connections after slow_start, want half", late)
	}
	t.Logf("b's share: %d/20 in its first %v, %d/20 after slow_start %v", early, elapsed, late, slowStart)
}
