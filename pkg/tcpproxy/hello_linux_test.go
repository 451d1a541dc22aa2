package tcpproxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"github.com/lbctl/lbctl/tlshello"
	"github.com/lbctl/lbctl/tlshello/tlshellotest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// ClientHellos read by the loop that accepted the client (hello_linux.go):
// the hello routes the connection and reaches the backend first, whatever
// its shape; a client without a complete, valid hello in time is refused
// and counted; one still sending holds no goroutine; nothing is left open.

// testRouter is a HelloRouter over fixed proxies: Route gives the proxy
// named by the hello's server name (nil for names it does not know).
type testRouter struct {
	timeout time.Duration
	proxies map[string]*tcpproxy.Proxy
	mu      sync.Mutex
	names   []string // Route's, in order
	refused chan error
}

func newTestRouter(timeout time.Duration, proxies map[string]*tcpproxy.Proxy) *testRouter {
	return &testRouter{timeout: timeout, proxies: proxies, refused: make(chan error, 1000)}
}

func (r *testRouter) InspectTimeout() time.Duration { return r.timeout }

func (r *testRouter) Route(h *tlshello.Hello, _ netip.AddrPort) *tcpproxy.Proxy {
	r.mu.Lock()
	r.names = append(r.names, h.ServerName)
	r.mu.Unlock()
	return r.proxies[h.ServerName]
}

func (r *testRouter) Refused(err error, _ netip.AddrPort) { r.refused <- err }

func (r *testRouter) routed() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.names...)
}

// newHelloRig is an acceptRig whose loop reads every client's hello and
// routes it with router.
func newHelloRig(t *testing.T, r *loopRig, router *testRouter) *acceptRig {
	t.Helper()
	a := newAcceptRig(t, r)
	a.router = router
	a.decide.Store(func(netip.AddrPort) string { return "inspect" })
	return a
}

func hello(t *testing.T, name string) []byte {
	t.Helper()
	b, err := tlshellotest.Hello(&tls.Config{ServerName: name, InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// closedByProxy waits until the proxy closed c (EOF or a reset), and
// returns what c received meanwhile.
func closedByProxy(t *testing.T, c *net.TCPConn, within time.Duration) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	got, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("not closed by the proxy within %v", within)
	}
	return got
}

// TestLoopHelloRoutes: hellos in one write, in pieces, in one-byte
// records, and followed by the client's next bytes, are routed on their
// name, reach the backend first and unchanged, count as bytes in, and the
// connection is served in the loop. A first backend that refuses the
// connect gets nothing; the next one gets the same bytes.
func TestLoopHelloRoutes(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	dead := lbtest.ClosedPort(t)
	r := newLoopRig(t, 5*time.Second, 1, nil, dead, echo.Addr)
	router := newTestRouter(10*time.Second, map[string]*tcpproxy.Proxy{"a.test": r.p})
	base := openSockets(t)
	a := newHelloRig(t, r, router)
	h := hello(t, "a.test")
	cases := []struct {
		name   string
		wire   []byte
		pieces int
	}{
		{"one write", h, 1},
		{"three pieces", h, 3},
		{"one-byte records in pieces", tlshellotest.Reframe(h, 1), 7},
	}
	var sent int
	for _, tc := range cases {
		c := a.dial(t)
		c.SetNoDelay(true)
		step := (len(tc.wire) + tc.pieces - 1) / tc.pieces
		for rest := tc.wire; len(rest) > 0; {
			k := min(step, len(rest))
			if _, err := c.Write(rest[:k]); err != nil {
				t.Fatal(err)
			}
			rest = rest[k:]
			if len(rest) > 0 {
				time.Sleep(5 * time.Millisecond) // separate segments, not synchronisation
			}
		}
		// The hello's echo comes back: the connection is established,
		// and served by the loop.
		back := make([]byte, len(tc.wire))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, back); err != nil || !bytes.Equal(back, tc.wire) {
			t.Fatalf("%s: the backend echoed %d bytes (%v), want the %d-byte hello unchanged", tc.name, len(back), err, len(tc.wire))
		}
		handles := r.reg.Conns(nil)
		if len(handles) != 1 || !tcpproxy.InLoop(handles[0]) {
			t.Fatalf("%s: %d connections registered, want 1 served in the loop", tc.name, len(handles))
		}
		c.Write([]byte("after"))
		c.CloseWrite()
		rest, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
		if err != nil || string(rest) != "after" {
			t.Fatalf("%s: after the hello the client got %q (%v)", tc.name, rest, err)
		}
		waitEndIn(t, a.ends, tcpproxy.EndDone, 10*time.Second)
		c.Close()
		sent += len(tc.wire) + len("after")
	}
	// The hello and what follows it in one write: the loop reads both,
	// and both go to the backend in order.
	c := a.dial(t)
	c.Write(append(append([]byte(nil), h...), "early"...))
	c.CloseWrite()
	got, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
	if want := string(h) + "early"; err != nil || string(got) != want {
		t.Fatalf("hello and bytes in one write: %d bytes echoed (%v), want %d", len(got), err, len(want))
	}
	waitEndIn(t, a.ends, tcpproxy.EndDone, 10*time.Second)
	c.Close()
	sent += len(h) + len("early")

	if names := router.routed(); len(names) != len(cases)+1 || names[0] != "a.test" {
		t.Fatalf("Route saw %q, want a.test %d times", names, len(cases)+1)
	}
	if in := testutil.ToFloat64(r.m.Bytes.WithLabelValues("l", "p", echo.Addr, "in")); in != float64(sent) {
		t.Fatalf("bytes in %v, want %d (the hellos and what followed)", in, sent)
	}
	if got := testutil.ToFloat64(r.m.ConnectErrors.WithLabelValues("p", dead)); got < 1 {
		t.Fatalf("connect errors of the closed port %v: no connect failed over", got)
	}
	if len(router.refused) != 0 {
		t.Fatalf("%d refusals, want none: %v", len(router.refused), <-router.refused)
	}
	a.stopAndCheck(t, base)
}

// TestLoopHelloRefuses: a client that is not TLS, closes in the middle
// of its hello, or is too slow, is closed and reported to Refused with
// tlshello's reason; a name no route takes is closed without a report;
// none reaches a backend, and each done is called without an End.
func TestLoopHelloRefuses(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	r := newLoopRig(t, 5*time.Second, 0, nil, echo.Addr)
	const timeout = 500 * time.Millisecond
	router := newTestRouter(timeout, map[string]*tcpproxy.Proxy{"a.test": r.p})
	base := openSockets(t)
	a := newHelloRig(t, r, router)
	pq := hello(t, "a.test")

	cases := []struct {
		name string
		send func(c *net.TCPConn)
		want error // nil: closed without a report
	}{
		{"plain HTTP", func(c *net.TCPConn) { c.Write([]byte("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")) }, tlshello.ErrNotTLS},
		{"closed mid-hello", func(c *net.TCPConn) { c.Write(pq[:len(pq)/2]); c.CloseWrite() }, tlshello.ErrTruncated},
		{"closed before a byte", func(c *net.TCPConn) { c.CloseWrite() }, tlshello.ErrTruncated},
		{"declares 64 KiB", func(c *net.TCPConn) { c.Write([]byte{0x16, 3, 1, 0, 4, 1, 1, 0, 0}) }, tlshello.ErrTooLarge},
		{"half a hello, then nothing", func(c *net.TCPConn) { c.Write(pq[:len(pq)/2]) }, tlshello.ErrTimeout},
		{"no route", func(c *net.TCPConn) { c.Write(hello(t, "nowhere.test")) }, nil},
	}
	for _, tc := range cases {
		start := time.Now() // before the dial: the loop may accept, and start the timer, before DialTCP returns
		c := a.dial(t)
		tc.send(c)
		if got := closedByProxy(t, c, 10*time.Second); len(got) != 0 {
			t.Fatalf("%s: the client got %q", tc.name, got)
		}
		c.Close()
		if tc.want == tlshello.ErrTimeout && time.Since(start) < timeout {
			t.Fatalf("%s: closed after %v, before the %v inspect timeout", tc.name, time.Since(start), timeout)
		}
		waitEndIn(t, a.ends, 0, 10*time.Second)
		if tc.want == nil {
			continue
		}
		select {
		case err := <-router.refused:
			if !errors.Is(err, tc.want) {
				t.Fatalf("%s: refused with %v, want %v", tc.name, err, tc.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: not reported to Refused", tc.name)
		}
	}
	if len(router.refused) != 0 {
		t.Fatalf("a refusal too many: %v", <-router.refused)
	}
	if n := echo.Accepted(); n != 0 {
		t.Fatalf("the backend accepted %d connections, want none", n)
	}
	a.stopAndCheck(t, base)
}

// TestLoopHelloLeavesLoop: a hello with what followed it over
// maxLoopPrelude, or a route whose proxy no loop connects for (a target
// by host name), goes on from the goroutine path with the same bytes.
func TestLoopHelloLeavesLoop(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	r := newLoopRig(t, 5*time.Second, 0, nil, echo.Addr)
	_, port, _ := net.SplitHostPort(echo.Addr)
	byName := newLoopRig(t, 5*time.Second, 0, nil, "localhost:"+port)
	router := newTestRouter(10*time.Second, map[string]*tcpproxy.Proxy{"a.test": r.p, "name.test": byName.p})
	base := openSockets(t)
	a := newHelloRig(t, r, router)
	big := bytes.Repeat([]byte("x"), 12<<10)
	for _, tc := range []struct {
		name string
		wire []byte
	}{
		{"hello and 12 KiB in one write", append(hello(t, "a.test"), big...)},
		{"a target by host name", hello(t, "name.test")},
	} {
		c := a.dial(t)
		if _, err := c.Write(tc.wire); err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("tail"))
		c.CloseWrite()
		got, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
		if want := string(tc.wire) + "tail"; err != nil || string(got) != want {
			t.Fatalf("%s: %d bytes echoed (%v), want %d in order", tc.name, len(got), err, len(want))
		}
		waitEndIn(t, a.ends, tcpproxy.EndDone, 10*time.Second)
		c.Close()
	}
	a.stopAndCheck(t, base)
}

// TestLoopHelloLeavesOutOfDescriptors: a client that must leave the loop
// after its hello (12 KiB follow it) when the process is out of
// descriptors is reset, not closed, so that it cannot take a cut stream
// for a complete one; it counts as a promote failure, blames no backend
// (the end is the client's), and the next client is served.
func TestLoopHelloLeavesOutOfDescriptors(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	r := newLoopRig(t, 5*time.Second, 0, nil, echo.Addr)
	router := newTestRouter(10*time.Second, map[string]*tcpproxy.Proxy{"a.test": r.p})
	base := openSockets(t)
	a := newHelloRig(t, r, router)
	wire := append(hello(t, "a.test"), bytes.Repeat([]byte("x"), 12<<10)...)
	before := tcpproxy.PromoteFailures()
	logs := tcpproxy.ObserveLeaveLog(t)
	lift := tcpproxy.FailDups(t, 0, -1)
	c := a.dial(t)
	if _, err := c.Write(wire); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) || len(got) != 0 {
		t.Fatalf("read %d bytes, then %v: want a reset and nothing", len(got), err)
	}
	c.Close()
	waitEndIn(t, a.ends, tcpproxy.EndLocalResource, 10*time.Second)
	if n := tcpproxy.PromoteFailures() - before; n != 1 {
		t.Fatalf("%d promote failures counted, want 1", n)
	}
	if l := logs.FilterMessageSnippet("could not leave the loop").All(); len(l) != 1 ||
		l[0].ContextMap()["connection"] != "reset" || !strings.Contains(fmt.Sprint(l[0].ContextMap()["error"]), "too many open files") {
		t.Fatalf("logged %+v, want one warning that the connection was reset for want of descriptors", l)
	}
	lift()
	c = a.dial(t)
	if _, err := c.Write(wire); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	got, err = lbtest.ReadAllTimeout(t, c, 10*time.Second)
	if err != nil || !bytes.Equal(got, wire) {
		t.Fatalf("after the fault: %d bytes echoed (%v), want %d", len(got), err, len(wire))
	}
	waitEndIn(t, a.ends, tcpproxy.EndDone, 10*time.Second)
	c.Close()
	a.stopAndCheck(t, base)
}

// TestLoopHelloShutdown: a shutdown's drain (the listener's Ctx) closes
// the clients still sending their hello at once, reported as canceled.
func TestLoopHelloShutdown(t *testing.T) {
	router := newTestRouter(time.Minute, nil)
	base := openSockets(t)
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admitted := make(chan struct{}, 10)
	ends := make(chan tcpproxy.End, 10)
	l := tcpproxy.ListenInLoop(ln, tcpproxy.ListenerHooks{Ctx: ctx,
		Admit: func(netip.AddrPort) tcpproxy.Admission {
			admitted <- struct{}{}
			return tcpproxy.Admission{Router: router, Done: func(e tcpproxy.End) { ends <- e }}
		}})
	if l == nil {
		ln.Close()
		t.Skip("no event loop accepts here")
	}
	pq := hello(t, "a.test")
	const n = 3
	clients := make([]*net.TCPConn, n)
	for i := range clients {
		c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(pq[:10])
		clients[i] = c
		<-admitted
	}
	cancel()
	for i, c := range clients {
		closedByProxy(t, c, 10*time.Second)
		c.Close()
		waitEndIn(t, ends, 0, 10*time.Second)
		select {
		case err := <-router.refused:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("client %d refused with %v, want context.Canceled", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("client %d: not reported", i)
		}
	}
	l.Stop()
	ln.Close()
	socketsBackTo(t, base)
}

// TestLoopHelloWaitersHoldNoGoroutine: clients that have sent part of
// their hello cost the proxy no goroutine while it waits for the rest
// (on the goroutine path each held one), and are all served once it
// comes.
func TestLoopHelloWaitersHoldNoGoroutine(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	r := newLoopRig(t, 5*time.Second, 0, nil, echo.Addr)
	router := newTestRouter(time.Minute, map[string]*tcpproxy.Proxy{"a.test": r.p})
	a := newHelloRig(t, r, router)
	h := hello(t, "a.test")
	base := runtime.NumGoroutine()
	const n = 100
	clients := make([]*net.TCPConn, n)
	for i := range clients {
		clients[i] = a.dial(t)
		clients[i].Write(h[:len(h)/2])
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		return len(a.admitted()) == n, fmt.Sprintf("%d of %d admitted", len(a.admitted()), n)
	})
	if grew := runtime.NumGoroutine() - base; grew > n/4 {
		t.Fatalf("%d goroutines more for %d clients sending their hello: want none per client", grew, n)
	}
	for i, c := range clients {
		c.Write(h[len(h)/2:])
		c.Write([]byte(strings.Repeat("!", i%7)))
		c.CloseWrite()
	}
	for i, c := range clients {
		got, err := lbtest.ReadAllTimeout(t, c, 20*time.Second)
		if want := string(h) + strings.Repeat("!", i%7); err != nil || string(got) != want {
			t.Fatalf("client %d: %d bytes echoed (%v), want %d", i, len(got), err, len(want))
		}
	}
	for i := 0; i < n; i++ {
		waitEndIn(t, a.ends, tcpproxy.EndDone, 10*time.Second)
	}
}

// TestLoopHelloClientDuringConnect: what the client does while the loop
// connects after its hello (the first backend tried is a black hole,
// given up after 300 ms, then an echo): bytes and a FIN sent meanwhile
// arrive once connected, a reset ends the connection as the client's
// error, and a shutdown ends it once, as a shutdown, with nothing left
// open.
func TestLoopHelloClientDuringConnect(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	hole := lbtest.Blackhole(t)
	r := newLoopRig(t, 300*time.Millisecond, 1, nil, hole, echo.Addr)
	router := newTestRouter(10*time.Second, map[string]*tcpproxy.Proxy{"a.test": r.p})
	base := openSockets(t)
	a := newHelloRig(t, r, router)
	h := hello(t, "a.test")
	routedBy := func(n int) {
		t.Helper()
		lbtest.Until(t, 10*time.Second, func() (bool, string) {
			return len(router.routed()) >= n, fmt.Sprintf("%d hellos routed, want %d", len(router.routed()), n)
		})
	}
	// Round robin: every other connection tries the black hole first.
	for i := 0; i < 4; i++ {
		c := a.dial(t)
		c.Write(h)
		c.Write([]byte("after"))
		c.CloseWrite()
		got, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
		if err != nil || string(got) != string(h)+"after" {
			t.Fatalf("connection %d: %d bytes echoed (%v), want the hello and what followed", i, len(got), err)
		}
		waitEndIn(t, a.ends, tcpproxy.EndDone, 10*time.Second)
		c.Close()
	}
	for i := 0; i < 2; i++ {
		c := a.dial(t)
		c.Write(h)
		routedBy(5 + i)
		c.SetLinger(0)
		c.Close() // a reset, while connecting or just connected
		waitEndIn(t, a.ends, tcpproxy.EndClientError, 10*time.Second)
	}
	if got := testutil.ToFloat64(r.m.ConnectErrors.WithLabelValues("p", hole)); got < 2 {
		t.Fatalf("%v connects to the black hole timed out, want at least 2: the clients did not act during a connect", got)
	}
	a.stopAndCheck(t, base)

	// A shutdown while the only backend does not answer.
	r = newLoopRig(t, 10*time.Second, 0, nil, hole)
	router = newTestRouter(10*time.Second, map[string]*tcpproxy.Proxy{"a.test": r.p})
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ends := make(chan tcpproxy.End, 10)
	l := tcpproxy.ListenInLoop(ln, tcpproxy.ListenerHooks{Ctx: ctx,
		Admit: func(netip.AddrPort) tcpproxy.Admission {
			return tcpproxy.Admission{Router: router, Done: func(e tcpproxy.End) { ends <- e }}
		}})
	if l == nil {
		ln.Close()
		t.Skip("no event loop accepts here")
	}
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	c.Write(h)
	lbtest.Until(t, 10*time.Second, func() (bool, string) { return len(router.routed()) == 1, "hello not routed" })
	cancel()
	closedByProxy(t, c, 10*time.Second)
	c.Close()
	waitEndIn(t, ends, tcpproxy.EndShutdown, 10*time.Second)
	l.Stop()
	ln.Close()
	socketsBackTo(t, base)
	if len(ends) != 0 || len(router.refused) != 0 {
		t.Fatalf("after the shutdown: %d more ends, %d refusals; want none", len(ends), len(router.refused))
	}
}
