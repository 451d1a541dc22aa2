package tcpproxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// Connects made by the event loops (Proxy.StartInLoop, dial_linux.go):
// fail-over, the connect timeout, the end of a shutdown drain during a
// connect, the PROXY header, and no descriptor left behind.

// failures records the failed connects passive health checks hear of.
type failures struct {
	mu   sync.Mutex
	errs map[*balancer.Backend][]error
}

func (f *failures) ConnectFailed(b *balancer.Backend, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.errs == nil {
		f.errs = map[*balancer.Backend][]error{}
	}
	f.errs[b] = append(f.errs[b], err)
}

func (f *failures) of(b *balancer.Backend) []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]error(nil), f.errs[b]...)
}

// loopRig is a round-robin proxy over addrs whose connections the event
// loops connect.
type loopRig struct {
	p        *tcpproxy.Proxy
	m        *metrics.Metrics
	backends []*balancer.Backend
	passive  failures
	reg      *tcpproxy.Registry // every connection
}

func newLoopRig(t *testing.T, timeout time.Duration, retries int, header func(client, local netip.AddrPort) []byte, addrs ...string) *loopRig {
	t.Helper()
	r := &loopRig{m: metrics.New(prometheus.NewRegistry()), reg: &tcpproxy.Registry{}}
	var members []balancer.Member
	targets := map[*balancer.Backend]*tcpproxy.Target{}
	for _, a := range addrs {
		b := balancer.NewBackend(a)
		r.backends = append(r.backends, b)
		members = append(members, balancer.Member{Backend: b, Weight: 1})
		targets[b] = &tcpproxy.Target{Addr: a, Metrics: r.m.ForTCP("l", "p", a), Conns: r.reg}
	}
	pool, err := balancer.New("round-robin", members)
	if err != nil {
		t.Fatal(err)
	}
	r.p = tcpproxy.New(tcpproxy.Config{
		Listener: "l", PoolName: "p", Pool: pool, Targets: targets,
		ConnectTimeout: timeout, Retries: retries,
		Rejections: r.m.ForListener("tcp", "l"), Passive: &r.passive, HeaderFunc: header,
	})
	return r
}

// open connects a client and hands its accepted end to StartInLoop (with
// ctx); it returns the client's end and where the End arrives.
func (r *loopRig) open(t *testing.T, ctx context.Context) (*net.TCPConn, chan tcpproxy.End) {
	t.Helper()
	c, sc := clientPair(t)
	ends := make(chan tcpproxy.End, 1)
	if !r.p.StartInLoop(ctx, sc, c.LocalAddr().(*net.TCPAddr).AddrPort(), func(e tcpproxy.End) { ends <- e }) {
		if os.Getenv("LBCTL_TCP_DIAL") == "goroutines" || os.Getenv("LBCTL_TCP_ENGINE") == "goroutines" {
			t.Skip("the environment turns loop connects off")
		}
		t.Fatal("StartInLoop declined: no event loop")
	}
	return c, ends
}

// openSockets counts this process's open sockets. (Pipes are left out:
// the echo backends' io.Copy splices through pipes of Go's own, which
// stay open until a garbage collection.)
func openSockets(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// socketsBackTo waits until no more sockets are open than base.
func socketsBackTo(t *testing.T, base int) {
	t.Helper()
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		now := openSockets(t)
		return now <= base, fmt.Sprintf("%d sockets open, %d before", now, base)
	})
}

func waitEndIn(t *testing.T, ends chan tcpproxy.End, want tcpproxy.End, within time.Duration) {
	t.Helper()
	select {
	case got := <-ends:
		if got != want {
			t.Fatalf("end %v, want %v", got, want)
		}
	case <-time.After(within):
		t.Fatalf("no end within %v, want %v", within, want)
	}
}

// TestLoopDialFailsOver: a refused connect is retried on the next backend,
// held against the refusing one (metric, passive check, with Go's error
// text), and the client is served; bytes arrive intact both ways and no
// socket is left open.
func TestLoopDialFailsOver(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	dead := lbtest.ClosedPort(t)
	r := newLoopRig(t, 5*time.Second, 1, nil, dead, echo.Addr)
	base := openSockets(t)
	const n = 6
	for i := range n {
		c, ends := r.open(t, context.Background())
		msg := []byte(fmt.Sprintf("request %d", i))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		got, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("connection %d: got %q, %v; want %q", i, got, err, msg)
		}
		waitEndIn(t, ends, tcpproxy.EndDone, 10*time.Second)
		c.Close()
	}
	errs := r.passive.of(r.backends[0])
	if len(errs) != n/2 { // round robin: every other connection picks it first
		t.Fatalf("%d failed connects to the closed port, want %d", len(errs), n/2)
	}
	for _, err := range errs {
		if !errors.Is(err, unix.ECONNREFUSED) || !strings.Contains(err.Error(), "dial tcp "+dead+": connect: connection refused") {
			t.Fatalf("failure %q (%T), want Go's refused dial error", err, err)
		}
	}
	if got := testutil.ToFloat64(r.m.ConnectErrors.WithLabelValues("p", dead)); got != n/2 {
		t.Fatalf("connect errors of the closed port %v, want %d", got, n/2)
	}
	if got := r.passive.of(r.backends[1]); len(got) != 0 {
		t.Fatalf("failures held against the live backend: %v", got)
	}
	if got := testutil.ToFloat64(r.m.Bytes.WithLabelValues("l", "p", echo.Addr, "in")); got != float64(n*len("request 0")) {
		t.Fatalf("bytes in %v, want %d", got, n*len("request 0"))
	}
	socketsBackTo(t, base)
}

// TestLoopDialEveryConnectFails: with every connect refused the client is
// closed, the End says backend_unavailable and the refusal is counted;
// with no eligible backend, no_backend.
func TestLoopDialEveryConnectFails(t *testing.T) {
	r := newLoopRig(t, 5*time.Second, 1, nil, lbtest.ClosedPort(t), lbtest.ClosedPort(t))
	c, ends := r.open(t, context.Background())
	waitEndIn(t, ends, tcpproxy.EndBackendUnavailable, 10*time.Second)
	if got, err := lbtest.ReadAllTimeout(t, c, 5*time.Second); len(got) != 0 || err != nil {
		t.Fatalf("client read %q, %v; want EOF", got, err)
	}
	if got := testutil.ToFloat64(r.m.Rejected.WithLabelValues("l", "backend_unavailable")); got != 1 {
		t.Fatalf("backend_unavailable rejections %v, want 1", got)
	}
	for _, b := range r.backends {
		if len(r.passive.of(b)) != 1 || b.Active() != 0 {
			t.Fatalf("%s: %d failures, %d active; want 1 and 0", b, len(r.passive.of(b)), b.Active())
		}
		b.SetAdmin(balancer.Disabled)
	}
	_, ends = r.open(t, context.Background())
	waitEndIn(t, ends, tcpproxy.EndNoBackend, 10*time.Second)
	if got := testutil.ToFloat64(r.m.Rejected.WithLabelValues("l", "no_backend")); got != 1 {
		t.Fatalf("no_backend rejections %v, want 1", got)
	}
}

// TestLoopDialTimeout: a connect that gets no answer fails after the
// connect timeout, as a timeout, and the next backend serves.
func TestLoopDialTimeout(t *testing.T) {
	hole := lbtest.Blackhole(t)
	echo := lbtest.NewTCP(t, lbtest.Echo)
	const timeout = 300 * time.Millisecond
	r := newLoopRig(t, timeout, 1, nil, hole, echo.Addr)
	start := time.Now()
	c, ends := r.open(t, context.Background()) // round robin: the first pick is the hole
	if _, err := c.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	got, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
	if err != nil || string(got) != "late" {
		t.Fatalf("got %q, %v", got, err)
	}
	if took := time.Since(start); took < timeout {
		t.Fatalf("served after %v, before the connect timeout %v", took, timeout)
	}
	waitEndIn(t, ends, tcpproxy.EndDone, 10*time.Second)
	errs := r.passive.of(r.backends[0])
	if len(errs) != 1 || !errors.Is(errs[0], os.ErrDeadlineExceeded) || !strings.Contains(errs[0].Error(), "i/o timeout") {
		t.Fatalf("failures of the unanswering backend %v, want one timeout", errs)
	}
	if n := r.backends[0].Active(); n != 0 {
		t.Fatalf("the timed-out backend has %d active, want 0", n)
	}
}

// TestLoopDialShutdownAborts: the end of a shutdown drain while a connect
// is under way ends the connection at once (EndShutdown), without holding
// the connect against the backend.
func TestLoopDialShutdownAborts(t *testing.T) {
	hole := lbtest.Blackhole(t)
	r := newLoopRig(t, time.Minute, 0, nil, hole)
	ctx, cancel := context.WithCancel(context.Background())
	c, ends := r.open(t, ctx)
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		return r.backends[0].Active() == 1, "the connect has not started"
	})
	cancel()
	waitEndIn(t, ends, tcpproxy.EndShutdown, 5*time.Second)
	if got, err := lbtest.ReadAllTimeout(t, c, 5*time.Second); len(got) != 0 || err != nil {
		t.Fatalf("client read %q, %v; want EOF", got, err)
	}
	if errs := r.passive.of(r.backends[0]); len(errs) != 0 || r.backends[0].Active() != 0 {
		t.Fatalf("after the abort: failures %v, %d active; want none", errs, r.backends[0].Active())
	}
	if got := testutil.ToFloat64(r.m.Rejected.WithLabelValues("l", "backend_unavailable")); got != 0 {
		t.Fatalf("a shutdown counted as %v rejections", got)
	}
}

// TestLoopDialProxyHeader: the PROXY header goes first, uncounted, and
// the payload follows.
func TestLoopDialProxyHeader(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	header := func(client, local netip.AddrPort) []byte {
		return []byte("HDR " + client.String() + " " + local.String() + "\n")
	}
	r := newLoopRig(t, 5*time.Second, 0, header, echo.Addr)
	c, ends := r.open(t, context.Background())
	c.Write([]byte("payload"))
	c.CloseWrite()
	got, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := "HDR " + c.LocalAddr().String() + " " + c.RemoteAddr().String() + "\npayload"
	if string(got) != want {
		t.Fatalf("backend got (echoed) %q, want %q", got, want)
	}
	waitEndIn(t, ends, tcpproxy.EndDone, 10*time.Second)
	if in := testutil.ToFloat64(r.m.Bytes.WithLabelValues("l", "p", echo.Addr, "in")); in != float64(len("payload")) {
		t.Fatalf("bytes in %v, want %d (the header is not payload)", in, len("payload"))
	}
}

// TestLoopDialBulkEcho: a connection the loop connected leaves it for the
// splicing path in both directions (its backend socket becomes a
// *net.TCPConn) and every byte arrives in order.
func TestLoopDialBulkEcho(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	r := newLoopRig(t, 5*time.Second, 0, nil, echo.Addr)
	base := openSockets(t)
	c, ends := r.open(t, context.Background())
	data := pattern(8<<20, 3)
	go func() {
		c.Write(data)
		c.CloseWrite()
	}()
	got, err := lbtest.ReadAllTimeout(t, c, 30*time.Second)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("echoed %d bytes (equal %v), %v; want %d", len(got), bytes.Equal(got, data), err, len(data))
	}
	waitEndIn(t, ends, tcpproxy.EndDone, 10*time.Second)
	c.Close()
	socketsBackTo(t, base)
}

// TestLoopDialPrelude: a connection whose first bytes the listener read
// (a ClientHello) is connected by the loop, which writes the PROXY header
// and then those bytes first, again to the next backend when a connect
// fails; they count as bytes in. A prelude over maxLoopPrelude is left to
// StartWith.
func TestLoopDialPrelude(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	dead := lbtest.ClosedPort(t)
	header := func(client, local netip.AddrPort) []byte { return []byte("HDR\n") }
	r := newLoopRig(t, 5*time.Second, 1, header, dead, echo.Addr)
	base := openSockets(t)
	hello := bytes.Repeat([]byte("h"), 5000)
	for i := range 2 { // one of them tries the closed port first
		c, sc := clientPair(t)
		ends := make(chan tcpproxy.End, 1)
		pre := &tcpproxy.Prelude{Data: hello, SNI: "example.test"}
		if !r.p.StartInLoopWith(context.Background(), sc, c.LocalAddr().(*net.TCPAddr).AddrPort(), pre,
			func(e tcpproxy.End) { ends <- e }) {
			if os.Getenv("LBCTL_TCP_DIAL") == "goroutines" || os.Getenv("LBCTL_TCP_ENGINE") == "goroutines" {
				t.Skip("the environment turns loop connects off")
			}
			t.Fatal("StartInLoopWith declined a prelude of common size")
		}
		c.Write([]byte("payload"))
		c.CloseWrite()
		got, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
		if want := "HDR\n" + string(hello) + "payload"; err != nil || string(got) != want {
			t.Fatalf("connection %d: backend got (echoed) %d bytes %v, want the header, the %d-byte prelude and the payload",
				i, len(got), err, len(hello))
		}
		waitEndIn(t, ends, tcpproxy.EndDone, 10*time.Second)
		c.Close()
	}
	if got := testutil.ToFloat64(r.m.ConnectErrors.WithLabelValues("p", dead)); got != 1 {
		t.Fatalf("connect errors of the closed port %v, want 1", got)
	}
	if in := testutil.ToFloat64(r.m.Bytes.WithLabelValues("l", "p", echo.Addr, "in")); in != float64(2*(len(hello)+len("payload"))) {
		t.Fatalf("bytes in %v, want %d (prelude and payload, not the header)", in, 2*(len(hello)+len("payload")))
	}
	socketsBackTo(t, base)

	_, sc := clientPair(t)
	defer sc.Close()
	big := &tcpproxy.Prelude{Data: make([]byte, 9<<10)}
	if r.p.StartInLoopWith(context.Background(), sc, netip.AddrPort{}, big, func(tcpproxy.End) {}) {
		t.Fatal("StartInLoopWith took a 9 KiB prelude; the loop writes at most maxLoopPrelude")
	}
}
