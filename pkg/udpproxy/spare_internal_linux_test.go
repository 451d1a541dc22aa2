package udpproxy

import (
	"net"
	"os"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/sparepoll"
)

// TestLoopStartsSparePoller: a listener's loop accounts its turns with
// package sparepoll: busy (here with the first datagram, after it waited
// on its socket, idle), with another loop parked on a ready descriptor, it
// starts a spare poller (the policy itself is sparepoll's test); and it
// gives its slot back when it ends.
func TestLoopStartsSparePoller(t *testing.T) {
	p, _ := oneBackendProxy(t)
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	l := &Listener{Conn: conn, Proxy: func() *Proxy { return p }}
	l.sp.SetAfter(0) // before the loop runs: from then on it is the loop's
	// Another loop, parked on a descriptor that is ready.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	w.Write([]byte("x"))
	var other sparepoll.Loop
	other.Park(int(r.Fd()))
	defer other.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		l.Serve()
	}()
	closed := false
	defer func() {
		if !closed {
			conn.Close()
			<-served
		}
	}()
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		return l.onConn.Load(), "the idle loop does not wait on its socket"
	})

	before := sparepoll.Started()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	to := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	if reply := lbtest.UDPExchange(t, c, to, []byte("1"), 5*time.Second); string(reply) != "a|1" {
		t.Fatalf("reply %q", reply)
	}
	if n := sparepoll.Started() - before; n < 1 {
		t.Fatal("the busy loop, another loop parked and ready, started no spare poller")
	}
	closed = true
	conn.Close()
	<-served
	if l.sp.Registered() {
		t.Fatal("the loop ended holding its slot")
	}
}
