package tcpproxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"golang.org/x/sys/unix"
)

// Accepts made by the event loops (ListenInLoop, accept_linux.go): the
// connections are served from the loop from the accept on, handed off or
// refused as the owner's Admit says, the listener pauses, resumes and
// stops, and nothing is left open.

// acceptRig is a listener on loopback whose connections a loop accepts for
// a loopRig's proxy; admit decides, as the owner's Admit (serve by default).
type acceptRig struct {
	ln      *net.TCPListener
	l       *tcpproxy.Listener
	r       *loopRig
	mu      sync.Mutex
	peers   []netip.AddrPort // Admit's, in order
	ends    chan tcpproxy.End
	decide  atomic.Value         // func(peer) string: "serve", "inspect", "handoff" or "refuse"
	router  tcpproxy.HelloRouter // for "inspect"
	handed  chan *net.TCPConn
	failing atomic.Int32
}

func newAcceptRig(t *testing.T, r *loopRig) *acceptRig {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	a := &acceptRig{ln: ln, r: r, ends: make(chan tcpproxy.End, 1000), handed: make(chan *net.TCPConn, 10)}
	a.decide.Store(func(netip.AddrPort) string { return "serve" })
	a.l = tcpproxy.ListenInLoop(ln, tcpproxy.ListenerHooks{
		Ctx: context.Background(),
		Admit: func(peer netip.AddrPort) tcpproxy.Admission {
			a.mu.Lock()
			a.peers = append(a.peers, peer)
			a.mu.Unlock()
			done := func(e tcpproxy.End) { a.ends <- e }
			switch a.decide.Load().(func(netip.AddrPort) string)(peer) {
			case "serve":
				return tcpproxy.Admission{Proxy: r.p, Done: done}
			case "inspect":
				return tcpproxy.Admission{Router: a.router, Done: done}
			case "handoff":
				return tcpproxy.Admission{Handoff: true}
			}
			return tcpproxy.Admission{}
		},
		Handoff: func(c *net.TCPConn, peer netip.AddrPort) { a.handed <- c },
		Failing: func(error) { a.failing.Add(1) },
	})
	if a.l == nil {
		ln.Close()
		if os.Getenv("LBCTL_TCP_DIAL") == "goroutines" || os.Getenv("LBCTL_TCP_ENGINE") == "goroutines" ||
			os.Getenv("LBCTL_TCP_ACCEPT") == "goroutines" {
			t.Skip("the environment turns loop accepts off")
		}
		t.Fatal("ListenInLoop declined: no event loop")
	}
	t.Cleanup(func() { a.l.Stop(); ln.Close() })
	return a
}

func (a *acceptRig) dial(t *testing.T) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, a.ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// stopAndCheck stops the listener, closes its socket and waits until no
// more sockets are open than base (openSockets before the test).
func (a *acceptRig) stopAndCheck(t *testing.T, base int) {
	t.Helper()
	a.l.Stop()
	a.ln.Close()
	socketsBackTo(t, base)
}

func (a *acceptRig) admitted() []netip.AddrPort {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]netip.AddrPort(nil), a.peers...)
}

// TestLoopAcceptServes: connections accepted by a loop reach the backend
// and back, concurrently, each admitted once with the client's address,
// none handed off, and no socket is left open once they ended.
func TestLoopAcceptServes(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	r := newLoopRig(t, 5*time.Second, 0, nil, echo.Addr)
	base := openSockets(t)
	a := newAcceptRig(t, r)
	const n = 150 // more than one batch (acceptBatch) may wait at once
	clients := make([]*net.TCPConn, n)
	for i := range clients {
		clients[i] = a.dial(t)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := fmt.Sprintf("hello from %d", i)
			c.Write([]byte(msg))
			c.CloseWrite()
			got, err := lbtest.ReadAllTimeout(t, c, 20*time.Second)
			if err != nil || string(got) != msg {
				errs <- fmt.Errorf("client %d got %q, %v; want %q", i, got, err, msg)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := 0; i < n; i++ {
		waitEndIn(t, a.ends, tcpproxy.EndDone, 10*time.Second)
	}
	peers := map[netip.AddrPort]bool{}
	for _, p := range a.admitted() {
		peers[p] = true
	}
	for i, c := range clients {
		if p := c.LocalAddr().(*net.TCPAddr).AddrPort(); !peers[p] {
			t.Errorf("client %d (%v) was not admitted with its address; admitted %v", i, p, a.admitted())
		}
	}
	if len(a.admitted()) != n || len(a.handed) != 0 {
		t.Fatalf("%d admitted, %d handed off; want %d, 0", len(a.admitted()), len(a.handed), n)
	}
	for _, c := range clients {
		c.Close()
	}
	a.stopAndCheck(t, base)
}

// TestLoopAcceptHandoffAndRefuse: a connection Admit hands off arrives at
// Handoff as a *net.TCPConn that carries its bytes, with the listener's
// keep-alive settings (not Go's own); one Admit refuses is closed at once.
func TestLoopAcceptHandoffAndRefuse(t *testing.T) {
	r := newLoopRig(t, 5*time.Second, 0, nil, lbtest.ClosedPort(t))
	a := newAcceptRig(t, r)
	// The listener's keep-alive, as pkg/server sets it, inherited by the
	// sockets it accepts.
	rc, _ := a.ln.SyscallConn()
	rc.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
		unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 77)
	})
	a.decide.Store(func(netip.AddrPort) string { return "handoff" })
	c := a.dial(t)
	var hc *net.TCPConn
	select {
	case hc = <-a.handed:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection was not handed off")
	}
	defer hc.Close()
	if hc.RemoteAddr().String() != c.LocalAddr().String() {
		t.Fatalf("handed off connection's peer %v, want %v", hc.RemoteAddr(), c.LocalAddr())
	}
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	hc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(hc, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("handed off connection read %q, %v", buf, err)
	}
	hrc, _ := hc.SyscallConn()
	var on, idle int
	hrc.Control(func(fd uintptr) {
		on, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		idle, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
	})
	if on != 1 || idle != 77 {
		t.Fatalf("keep-alive %d idle %d, want the listener's 1 and 77", on, idle)
	}

	a.decide.Store(func(netip.AddrPort) string { return "refuse" })
	c2 := a.dial(t)
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c2.Read(buf); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("refused connection read %d, %v; want it closed", n, err)
	}
	if got := len(a.admitted()); got != 2 {
		t.Fatalf("%d admissions, want 2", got)
	}
}

// TestLoopAcceptPauseResume: a paused listener accepts nothing, while the
// kernel completes connections into its queue; once resumed they are all
// served, and after Stop the socket is the owner's to close (Err says so).
func TestLoopAcceptPauseResume(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	r := newLoopRig(t, 5*time.Second, 0, nil, echo.Addr)
	a := newAcceptRig(t, r)
	<-a.l.Pause()
	var clients []*net.TCPConn
	for i := 0; i < 3; i++ {
		c := a.dial(t) // completed by the kernel's backlog
		c.Write([]byte{byte('a' + i)})
		clients = append(clients, c)
	}
	// Nothing may be admitted while paused: a window, since what is
	// checked is that nothing happens.
	time.Sleep(300 * time.Millisecond)
	if n := len(a.admitted()); n != 0 {
		t.Fatalf("%d connections admitted while paused", n)
	}
	a.l.Resume()
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil || b[0] != byte('a'+i) {
			t.Fatalf("client %d after resume: %q %v", i, b, err)
		}
	}
	if a.l.Err() != nil {
		t.Fatalf("Err() = %v while serving", a.l.Err())
	}
	a.l.Stop()
	a.ln.Close()
	if !errors.Is(a.l.Err(), net.ErrClosed) {
		t.Fatalf("Err() = %v after close, want net.ErrClosed", a.l.Err())
	}
	a.l.Resume() // after Stop: nothing (the descriptor may be another's now)
	if _, err := net.DialTimeout("tcp", a.ln.Addr().String(), 5*time.Second); err == nil {
		t.Fatal("a connection was made to a stopped and closed listener")
	}
}

// TestLoopAcceptProxyHeaderAndBulk: the PROXY header of a connection a
// loop accepted names the listener's address (the client socket is a bare
// descriptor until it leaves the loop), and a bulk transfer then moves it
// to the splicing path with every byte in order and both sockets closed
// at the end.
func TestLoopAcceptProxyHeaderAndBulk(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	header := func(client, local netip.AddrPort) []byte {
		return []byte("HDR " + client.String() + " " + local.String() + "\n")
	}
	r := newLoopRig(t, 5*time.Second, 0, header, echo.Addr)
	base := openSockets(t)
	a := newAcceptRig(t, r)
	c := a.dial(t)
	data := pattern(8<<20, 9)
	go func() {
		c.Write(data)
		c.CloseWrite()
	}()
	got, err := lbtest.ReadAllTimeout(t, c, 30*time.Second)
	hdr := "HDR " + c.LocalAddr().String() + " " + c.RemoteAddr().String() + "\n"
	if err != nil || !bytes.HasPrefix(got, []byte(hdr)) || !bytes.Equal(got[len(hdr):], data) {
		t.Fatalf("echoed %d bytes (header %q), %v; want the header %q and %d bytes", len(got), got[:min(len(got), len(hdr))], err, hdr, len(data))
	}
	waitEndIn(t, a.ends, tcpproxy.EndDone, 10*time.Second)
	c.Close()
	a.stopAndCheck(t, base)
}

// TestLoopAcceptBacksOff: an accept that fails (out of descriptors) takes
// the socket out of the loop's set and tries again from a timer, told to
// the owner once; a try that then finds nothing queued puts the socket
// back in the set, so the next connection is served; the first accept
// that succeeds ends the episode (Recovered). The failure here comes
// right after a successful accept, with nothing queued, as accept4 fails
// when the process has no descriptor left.
func TestLoopAcceptBacksOff(t *testing.T) {
	t.Run("accept fails", func(t *testing.T) { testLoopAcceptBacksOff(t, false) })
	t.Run("then the set refuses the socket", func(t *testing.T) { testLoopAcceptBacksOff(t, true) })
}

func testLoopAcceptBacksOff(t *testing.T, failWatch bool) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	r := newLoopRig(t, 5*time.Second, 0, nil, echo.Addr)
	a := newAcceptRig(t, r)
	recovered := make(chan int, 10)
	a.l.Stop()
	a.l = tcpproxy.ListenInLoop(a.ln, tcpproxy.ListenerHooks{
		Ctx: context.Background(),
		Admit: func(peer netip.AddrPort) tcpproxy.Admission {
			return tcpproxy.Admission{Proxy: r.p, Done: func(e tcpproxy.End) { a.ends <- e }}
		},
		Failing:   func(error) { a.failing.Add(1) },
		Recovered: func(n int) { recovered <- n },
	})
	calls := tcpproxy.FailAccepts(t, 1, 1) // the accept after the first fails
	if failWatch {
		// and the retry's return of the socket to the set, once: the
		// retry after that must put it back.
		tcpproxy.FailWatches(t, 1)
	}
	echoOnce := func(c *net.TCPConn, msg string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte(msg))
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(c, b); err != nil || string(b) != msg {
			t.Fatalf("echo of %q: %q %v", msg, b, err)
		}
	}
	echoOnce(a.dial(t), "first")
	// The back-off's retry (5 ms after the failure) finds the queue
	// empty: the third accept4; the next connection must still be
	// accepted.
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		return a.failing.Load() == 1 && calls() >= 3, fmt.Sprintf("%d failures told, %d accept4 calls; want 1, 3", a.failing.Load(), calls())
	})
	echoOnce(a.dial(t), "second")
	select {
	case n := <-recovered:
		want := 1
		if failWatch {
			want = 2
		}
		if n != want {
			t.Fatalf("recovered after %d failures, want %d", n, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the end of the episode was not told")
	}
	if n := a.failing.Load(); n != 1 {
		t.Fatalf("%d failures told, want 1", n)
	}
}

// TestLoopAcceptIPv6: over IPv6 loopback, the loop accepts (the peer
// admitted is the client's address and port), connects to an IPv6
// backend and proxies.
func TestLoopAcceptIPv6(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skip("no IPv6 loopback:", err)
	}
	echo := lbtest.NewTCPAt(t, "[::1]:0", lbtest.Echo)
	r := newLoopRig(t, 5*time.Second, 0, nil, echo.Addr)
	peers := make(chan netip.AddrPort, 1)
	ends := make(chan tcpproxy.End, 1)
	l := tcpproxy.ListenInLoop(ln, tcpproxy.ListenerHooks{Ctx: context.Background(),
		Admit: func(peer netip.AddrPort) tcpproxy.Admission {
			peers <- peer
			return tcpproxy.Admission{Proxy: r.p, Done: func(e tcpproxy.End) { ends <- e }}
		}})
	if l == nil {
		ln.Close()
		t.Skip("no event loop accepts here")
	}
	defer func() { l.Stop(); ln.Close() }()
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("over v6"))
	c.CloseWrite()
	got, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
	if err != nil || string(got) != "over v6" {
		t.Fatalf("echoed %q, %v", got, err)
	}
	if p, want := <-peers, c.LocalAddr().(*net.TCPAddr).AddrPort(); p != want {
		t.Fatalf("admitted %v, want the client's %v", p, want)
	}
	waitEndIn(t, ends, tcpproxy.EndDone, 10*time.Second)
}
