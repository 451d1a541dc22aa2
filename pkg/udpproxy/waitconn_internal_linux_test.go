package udpproxy

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// A listener with no session waits on its socket, where Go's poller
// reports datagrams and the close at once, with no timer; with a session
// it waits on its epoll set. And a held listener never waits on its
// socket, which it must not read.
func TestLoopWaitsOnConnWhenIdle(t *testing.T) {
	l := oneBackendListener(t)
	serveIdle(t, l)
	exchangeOne(t, l)
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		return !l.onConn.Load(), "the loop waits on its socket with a session open"
	})

	// Held with its session detached: no session, but the socket is not
	// its to read.
	hs, err := l.Detach(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		h.File.Close()
	}
	if len(hs) != 1 {
		t.Fatalf("detached %d sessions, want 1", len(hs))
	}
	time.Sleep(200 * time.Millisecond) // time for a wrong turn
	if l.onConn.Load() {
		t.Error("the held loop waits on its socket")
	}
	l.Release()
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		return l.onConn.Load(), "the released idle loop does not wait on its socket"
	})
}

// oneBackendListener is a listener on a loopback port, not yet served,
// whose proxy has one backend that tags its replies "a|".
func oneBackendListener(t *testing.T) *Listener {
	t.Helper()
	p, _ := oneBackendProxy(t)
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return &Listener{Conn: conn, Proxy: func() *Proxy { return p }}
}

// serveIdle serves l on a goroutine, and returns once its loop, with no
// session yet, waits on its socket. stop closes l's socket and returns once
// Serve has; the test's end calls it too.
func serveIdle(t *testing.T, l *Listener) (stop func()) {
	t.Helper()
	served := make(chan struct{})
	go func() {
		defer close(served)
		l.Serve()
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			l.Conn.Close()
			<-served
		})
	}
	t.Cleanup(stop)
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		return l.onConn.Load(), "the idle loop does not wait on its socket"
	})
	return stop
}

// exchangeOne sends "1" to l from a new client socket (closed at the
// test's end), which opens a session, and checks the reply of l's one
// backend.
func exchangeOne(t *testing.T, l *Listener) {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	to := l.Conn.LocalAddr().(*net.UDPAddr).AddrPort()
	if reply := lbtest.UDPExchange(t, c, to, []byte("1"), 5*time.Second); string(reply) != "a|1" {
		t.Fatalf("reply %q", reply)
	}
}
