package tcpproxy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"github.com/prometheus/client_golang/prometheus"
)

// side is one process's view of a single-backend pool: its own Proxy,
// balancer backend and registry, as the old and the new lbctl would have.
type side struct {
	p   *tcpproxy.Proxy
	b   *balancer.Backend
	reg *tcpproxy.Registry
	// goDial: connections start with Start (the dial on the caller's
	// goroutine) instead of StartInLoop, as a listener does where the
	// event loop connects to the backend (Linux, plain listeners).
	goDial bool
}

func makeSide(tb testing.TB, backend string, idle, half time.Duration) *side {
	tb.Helper()
	m := metrics.New(prometheus.NewRegistry())
	b := balancer.NewBackend(backend)
	pool, err := balancer.New("round-robin", []balancer.Member{{Backend: b, Weight: 1}})
	if err != nil {
		tb.Fatal(err)
	}
	reg := &tcpproxy.Registry{}
	p := tcpproxy.New(tcpproxy.Config{
		Listener: "l", PoolName: "p", Pool: pool,
		Targets:        map[*balancer.Backend]*tcpproxy.Target{b: {Addr: backend, Metrics: m.ForTCP("l", "p", backend), Conns: reg}},
		ConnectTimeout: time.Second, IdleTimeout: idle, HalfCloseTimeout: half,
		Rejections: m.ForListener("tcp", "l"),
	})
	return &side{p: p, b: b, reg: reg}
}

// open connects a client through s and returns the client's end, the
// connection's handle and the channel its End arrives on.
func (s *side) open(t *testing.T) (*net.TCPConn, tcpproxy.Conn, chan tcpproxy.End) {
	t.Helper()
	ends := make(chan tcpproxy.End, 1)
	c := s.dial(t, func(e tcpproxy.End) { ends <- e })
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		return s.reg.Len() == 1, fmt.Sprintf("%d connections in the registry, want 1", s.reg.Len())
	})
	return c, s.reg.Conns(nil)[0], ends
}

// clientPair returns both ends of a loopback connection: the client's
// (closed when the test ends) and the one a listener accepted, for a
// proxy to serve.
func clientPair(t *testing.T) (client, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sc, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	return c, sc
}

// dial connects a client through s, whose proxy serves it as a listener
// would and calls done at its end, and returns the client's end.
func (s *side) dial(t *testing.T, done func(tcpproxy.End)) *net.TCPConn {
	t.Helper()
	c, sc := clientPair(t)
	peer := c.LocalAddr().(*net.TCPAddr).AddrPort()
	if s.goDial || !s.p.StartInLoop(context.Background(), sc, peer, done) {
		s.p.Start(context.Background(), sc, peer, done)
	}
	return c
}

// move detaches h and adopts it on to; it returns the moved state and
// the channel the adopted connection's End arrives on.
func move(t *testing.T, h tcpproxy.Conn, from chan tcpproxy.End, to *side) (tcpproxy.State, chan tcpproxy.End) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := h.Detach(ctx)
	if err != nil {
		t.Fatal("detach:", err)
	}
	if e := <-from; e != tcpproxy.EndMoved {
		t.Fatalf("old side ended %v, want moved", e)
	}
	client, backend := fileConn(t, d.Client), fileConn(t, d.Backend)
	ends := make(chan tcpproxy.End, 1)
	to.p.Adopt(context.Background(), client, backend, to.b, d.State, func(e tcpproxy.End) { ends <- e })
	return d.State, ends
}

// fileConn turns a detached socket into a connection, as the new process
// does with a received descriptor, and closes f.
func fileConn(t *testing.T, f *os.File) *net.TCPConn {
	t.Helper()
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

func waitEnd(t *testing.T, ends chan tcpproxy.End, want tcpproxy.End) {
	t.Helper()
	select {
	case e := <-ends:
		if e != want {
			t.Fatalf("ended %v, want %v", e, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("did not end (want %v)", want)
	}
}

// pattern is n deterministic pseudo-random bytes.
func pattern(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed)})
	r.Read(b)
	return b
}

// TestDetachEchoBothWays moves a connection between two Proxies while a
// client streams checksummed data through an echo backend: every byte
// arrives once, in order, both ways, and the new side ends it cleanly
// with the byte counts of its whole life. Once with the connect made by
// the event loop (a listener's usual way on Linux), once by Start's
// goroutine.
func TestDetachEchoBothWays(t *testing.T) {
	t.Run("loop connect", func(t *testing.T) { detachEchoBothWays(t, false) })
	t.Run("goroutine connect", func(t *testing.T) { detachEchoBothWays(t, true) })
}

func detachEchoBothWays(t *testing.T, goDial bool) {
	fds := lbtest.OpenFDs(t)
	sums := make(chan lbtest.Sum, 1)
	be := lbtest.NewTCP(t, lbtest.HashingEcho(sums))
	oldSide, newSide := makeSide(t, be.Addr, 0, 0), makeSide(t, be.Addr, 0, 0)
	oldSide.goDial = goDial
	c, h, ends := oldSide.open(t)

	const total = 8 << 20
	data := pattern(total, 1)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(c)
		got <- b
	}()
	halfway := make(chan struct{})
	var werr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for off := 0; off < total; off += 4096 {
			if off == total/2 {
				close(halfway)
			}
			if _, werr = c.Write(data[off : off+4096]); werr != nil {
				return
			}
		}
		c.CloseWrite()
	}()
	<-halfway
	st, newEnds := move(t, h, ends, newSide)
	wg.Wait()
	if werr != nil {
		t.Fatal("client write:", werr)
	}
	var b []byte
	select {
	case b = <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("echo did not finish")
	}
	if !bytes.Equal(b, data) {
		t.Fatalf("client got %d bytes back, want the %d sent, unchanged", len(b), total)
	}
	s := <-sums
	if s.N != total || s.SHA256 != sha256.Sum256(data) {
		t.Fatalf("backend got %d bytes (sum match %v), want %d", s.N, s.SHA256 == sha256.Sum256(data), total)
	}
	if st.BytesIn <= 0 || st.BytesIn >= total || st.Attempts != 1 || st.Backend != be.Addr || st.InEOF || st.OutEOF {
		t.Fatalf("moved state %+v: want a connection in mid-stream", st)
	}
	waitEnd(t, newEnds, tcpproxy.EndDone)
	if oldSide.b.Active() != 0 || newSide.b.Active() != 0 || newSide.reg.Len() != 0 {
		t.Fatalf("active old %d new %d, registry %d: want all 0", oldSide.b.Active(), newSide.b.Active(), newSide.reg.Len())
	}
	c.Close()
	be.Close()
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		n := lbtest.OpenFDs(t)
		return n <= fds, fmt.Sprintf("%d descriptors open, %d before", n, fds)
	})
}

// TestDetachBulkSplice moves a connection in the middle of a bulk upload:
// the clean point comes between two bursts, nothing is lost, and the new
// side splices the rest.
func TestDetachBulkSplice(t *testing.T) {
	sums := make(chan lbtest.Sum, 1)
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		h := sha256.New()
		n, err := io.Copy(h, c)
		var s lbtest.Sum
		copy(s.SHA256[:], h.Sum(nil))
		s.N, s.Err = n, err
		sums <- s
		c.Close()
	})
	oldSide, newSide := makeSide(t, be.Addr, time.Minute, 0), makeSide(t, be.Addr, time.Minute, 0)
	c, h, ends := oldSide.open(t)
	const total = 128 << 20
	data := pattern(1<<20, 2)
	sent := make(chan int64, 128)
	go func() {
		defer c.CloseWrite()
		for i := 0; i < total>>20; i++ {
			if _, err := c.Write(data); err != nil {
				return
			}
			sent <- int64(i+1) << 20
		}
	}()
	for n := range sent {
		if n >= 16<<20 {
			break
		}
	}
	st, newEnds := move(t, h, ends, newSide)
	if st.BytesIn == 0 || st.BytesIn >= total {
		t.Fatalf("moved after %d bytes, want in the middle of the %d", st.BytesIn, total)
	}
	nh := newSide.reg.Conns(nil)[0]
	var s lbtest.Sum
	select {
	case s = <-sums:
	case <-time.After(60 * time.Second):
		t.Fatal("upload did not finish")
	}
	want := sha256.New()
	for i := 0; i < total>>20; i++ {
		want.Write(data)
	}
	if s.N != total || !bytes.Equal(s.SHA256[:], want.Sum(nil)) {
		t.Fatalf("backend got %d bytes (sum match %v), want %d", s.N, bytes.Equal(s.SHA256[:], want.Sum(nil)), total)
	}
	c.Close()
	waitEnd(t, newEnds, tcpproxy.EndDone)
	if in, _ := tcpproxy.Bursts(nh); in == 0 && runtime.GOOS == "linux" {
		t.Fatal("the adopted connection never spliced")
	}
}

// TestDetachHalfClosed moves a connection whose client has finished
// sending: the client-to-backend direction stays finished, its half-close
// timer resumes with the time it had left, and the backend's answer, sent
// after the move, arrives whole.
func TestDetachHalfClosed(t *testing.T) {
	reply := pattern(2<<20, 3)
	gotReq := make(chan []byte, 1)
	answer := make(chan struct{})
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c) // until the client's EOF
		gotReq <- b
		c.Write(reply[:1<<20])
		<-answer
		c.Write(reply[1<<20:])
		c.Close()
	})
	const half = 30 * time.Second
	oldSide, newSide := makeSide(t, be.Addr, 0, half), makeSide(t, be.Addr, 0, half)
	c, h, ends := oldSide.open(t)
	c.Write([]byte("request"))
	c.CloseWrite()
	if b := <-gotReq; string(b) != "request" {
		t.Fatalf("backend got %q", b)
	}
	first := make([]byte, 1<<20)
	if _, err := io.ReadFull(c, first); err != nil {
		t.Fatal(err)
	}
	st, newEnds := move(t, h, ends, newSide)
	if !st.InEOF || st.OutEOF || !st.HalfCloseArmed || st.HalfCloseLeft <= 0 || st.HalfCloseLeft >= half {
		t.Fatalf("moved state %+v: want the client's side finished and the half-close timer running", st)
	}
	if st.BytesIn != 7 || st.BytesOut != 1<<20 {
		t.Fatalf("moved bytes in %d out %d, want 7 and %d", st.BytesIn, st.BytesOut, 1<<20)
	}
	close(answer)
	rest, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
	if err != nil || !bytes.Equal(append(first, rest...), reply) {
		t.Fatalf("client got %d bytes (%v), want the %d of the reply", len(first)+len(rest), err, len(reply))
	}
	waitEnd(t, newEnds, tcpproxy.EndDone)
}

// TestDetachIdle moves a connection on which nothing moves: it goes on
// answering afterwards, and its idle clock continues (the new side's
// idle_timeout counts from the last byte, not from the move).
func TestDetachIdle(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	const idle = time.Hour
	oldSide, newSide := makeSide(t, be.Addr, idle, 0), makeSide(t, be.Addr, idle, 0)
	c, h, ends := oldSide.open(t)
	echo := func(msg string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte(msg))
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(c, b); err != nil || string(b) != msg {
			t.Fatalf("echo %q: %q, %v", msg, b, err)
		}
	}
	echo("before")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := h.Detach(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitEnd(t, ends, tcpproxy.EndMoved)
	if d.State.Idle <= 0 || d.State.BytesIn != 6 || d.State.BytesOut != 6 {
		t.Fatalf("moved state %+v", d.State)
	}
	nc, nb := fileConn(t, d.Client), fileConn(t, d.Backend)
	newEnds := make(chan tcpproxy.End, 1)
	newSide.p.Adopt(context.Background(), nc, nb, newSide.b, d.State, func(e tcpproxy.End) { newEnds <- e })
	echo("after")

	// Moved once more, as if it had been idle for all but the last 300ms
	// of the idle_timeout: it ends idle soon, not an hour after the move.
	nh := newSide.reg.Conns(nil)[0]
	if d, err = nh.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	waitEnd(t, newEnds, tcpproxy.EndMoved)
	if d.State.BytesIn != 11 || d.State.BytesOut != 11 {
		t.Fatalf("moved again with bytes in %d out %d, want 11 each", d.State.BytesIn, d.State.BytesOut)
	}
	st := d.State
	st.Idle = idle - 300*time.Millisecond
	third := makeSide(t, be.Addr, idle, 0)
	nc, nb = fileConn(t, d.Client), fileConn(t, d.Backend)
	thirdEnds := make(chan tcpproxy.End, 1)
	third.p.Adopt(context.Background(), nc, nb, third.b, st, func(e tcpproxy.End) { thirdEnds <- e })
	waitEnd(t, thirdEnds, tcpproxy.EndIdle)
}

// TestDetachStuckPeer: a client that stops reading while lbctl holds
// bytes for it keeps the connection from a clean point. The detach gives
// up when its context ends, and the connection goes on in place, intact.
func TestDetachStuckPeer(t *testing.T) {
	const total = 16 << 20
	data := pattern(1<<20, 4)
	gotReq := make(chan string, 1)
	beConn := make(chan *net.TCPConn, 1)
	var beDone atomic.Bool
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		beConn <- c
		for i := 0; i < total>>20; i++ {
			if _, err := c.Write(data); err != nil {
				return
			}
		}
		beDone.Store(true)
		b, _ := io.ReadAll(c)
		gotReq <- string(b)
		c.Close()
	})
	oldSide := makeSide(t, be.Addr, 0, 0)
	c, h, ends := oldSide.open(t)
	c.SetReadBuffer(64 << 10)
	bc := <-beConn
	// The client reads nothing: wait until the transfer really stalled.
	// The direction holding bytes (busy odd) is not enough on a loaded
	// machine, where a direction waiting on a slow backend's next write,
	// or not yet scheduled, holds the same value for a while: the client's
	// receive queue and the backend's send queue must both hold bytes
	// (lbctl reads no more from the backend: its own write to the client
	// is stuck), all three unchanged over four looks 250 ms apart.
	type look struct {
		busy      uint32
		cin, bout int
	}
	var prev look
	same := 0
	lbtest.Until(t, 30*time.Second, func() (bool, string) {
		var l look
		l.busy = tcpproxy.OutBusy(h)
		l.cin, _ = lbtest.SockQueues(c)
		_, l.bout = lbtest.SockQueues(bc)
		if l.busy&1 == 1 && l.cin > 0 && (l.bout > 0 || beDone.Load()) && l == prev {
			same++
		} else {
			same = 0
		}
		prev = l
		if same >= 3 {
			return true, ""
		}
		time.Sleep(250 * time.Millisecond)
		return false, fmt.Sprintf("busy %d, client queue %d, backend queue %d, backend done %v", l.busy, l.cin, l.bout, beDone.Load())
	})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := h.Detach(ctx); !errors.Is(err, tcpproxy.ErrNotDetached) {
		t.Fatalf("detach of a stuck connection: %v, want ErrNotDetached", err)
	}
	c.Write([]byte("still here"))
	c.CloseWrite()
	got, err := lbtest.ReadAllTimeout(t, c, 30*time.Second)
	if err != nil || len(got) != total {
		t.Fatalf("client got %d bytes, %v; want %d", len(got), err, total)
	}
	for off := 0; off < total; off += 1 << 20 {
		if !bytes.Equal(got[off:off+1<<20], data) {
			t.Fatalf("bytes at %d differ", off)
		}
	}
	if s := <-gotReq; s != "still here" {
		t.Fatalf("backend got %q", s)
	}
	waitEnd(t, ends, tcpproxy.EndDone)
}

// TestDetachEchoBulk moves a connection that carries bulk data both ways
// through an echo backend, so that the sockets on both sides stay full:
// the backend stops reading while its replies wait, and a direction that
// stopped for the detach would hold up the other's write for good. The
// connection still reaches a clean point, and every byte arrives.
func TestDetachEchoBulk(t *testing.T) {
	sums := make(chan lbtest.Sum, 1)
	be := lbtest.NewTCP(t, lbtest.HashingEcho(sums))
	from, to := makeSide(t, be.Addr, 0, 0), makeSide(t, be.Addr, 0, 0)
	c, h, ends := from.open(t)
	const total = 96 << 20
	data := pattern(1<<20, 5)
	want := sha256.New()
	for i := 0; i < total>>20; i++ {
		want.Write(data)
	}
	back := make(chan []byte, 1)
	var got atomic.Int64
	go func() {
		hs := sha256.New()
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			hs.Write(buf[:n])
			got.Add(int64(n))
			if err != nil {
				back <- hs.Sum(nil)
				return
			}
		}
	}()
	go func() {
		for i := 0; i < total>>20; i++ {
			if _, err := c.Write(data); err != nil {
				return
			}
		}
		c.CloseWrite()
	}()
	lbtest.Until(t, 20*time.Second, func() (bool, string) {
		return got.Load() >= 8<<20, fmt.Sprintf("%d bytes back", got.Load())
	})
	st, newEnds := move(t, h, ends, to)
	if st.BytesIn == 0 || st.BytesIn >= total {
		t.Fatalf("moved after %d bytes in, want in the middle of the %d", st.BytesIn, total)
	}
	select {
	case sum := <-back:
		if got.Load() != total || !bytes.Equal(sum, want.Sum(nil)) {
			t.Fatalf("client got %d bytes back (sum match %v), want %d", got.Load(), bytes.Equal(sum, want.Sum(nil)), total)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("echo did not finish: %d of %d bytes back", got.Load(), total)
	}
	waitEnd(t, newEnds, tcpproxy.EndDone)
}
