//go:build linux

package udpproxy_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/udpproxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// lateBackend answers "name|payload" at once, but holds the replies to
// datagrams starting with "late" until its late channel is closed.
type lateBackend struct {
	name  string
	conn  *net.UDPConn
	late  chan struct{}
	held  atomic.Int64
	wg    sync.WaitGroup
	once  sync.Once
	peers sync.Map // netip.AddrPort of each session socket that wrote
}

func newLateBackend(t *testing.T, name string) *lateBackend {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	b := &lateBackend{name: name, conn: c, late: make(chan struct{})}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(b.close)
	return b
}

func (b *lateBackend) addr() string { return b.conn.LocalAddr().String() }

func (b *lateBackend) serve() {
	defer b.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := b.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		b.peers.Store(from, true)
		reply := append([]byte(b.name+"|"), buf[:n]...)
		if bytes.HasPrefix(buf[:n], []byte("late")) {
			b.held.Add(1)
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				<-b.late
				b.conn.WriteToUDPAddrPort(reply, from)
			}()
			continue
		}
		b.conn.WriteToUDPAddrPort(reply, from)
	}
}

func (b *lateBackend) release() { b.once.Do(func() { close(b.late) }) }

func (b *lateBackend) close() {
	b.release()
	b.conn.Close()
	b.wg.Wait()
}

// side is one process's view of a shared listener socket: its own
// backends, metrics and Listener, as after an upgrade.
type side struct {
	l        *udpproxy.Listener
	m        *metrics.Metrics
	logs     *observer.ObservedLogs
	sessions atomic.Int64
	released atomic.Int64 // admissions given back
	admitted atomic.Int64
	done     chan struct{}
}

func newSide(t *testing.T, conn *net.UDPConn, hold bool, addrs ...string) *side {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	log := zap.New(core)
	sd := &side{m: metrics.New(prometheus.NewRegistry()), logs: logs, done: make(chan struct{})}
	targets := map[*balancer.Backend]*udpproxy.Target{}
	var members []balancer.Member
	for _, a := range addrs {
		b := balancer.NewBackend(a)
		members = append(members, balancer.Member{Backend: b, Weight: 1})
		targets[b] = &udpproxy.Target{Addr: a, Metrics: sd.m.ForUDP("udp", "pool", a), Sessions: &udpproxy.Registry{}}
	}
	pool, err := balancer.New(balancer.RoundRobin, members)
	if err != nil {
		t.Fatal(err)
	}
	p, err := udpproxy.New(udpproxy.Config{Listener: "udp", PoolName: "pool", Pool: pool, Targets: targets,
		IdleTimeout: 30 * time.Second, Rejections: sd.m.ForListener("udp", "udp"), Log: log, Access: log.Named("access")})
	if err != nil {
		t.Fatal(err)
	}
	sd.l = &udpproxy.Listener{Conn: conn, Proxy: func() *udpproxy.Proxy { return p }, Sessions: &sd.sessions, Hold: hold,
		Admit: func(netip.Addr, func() bool) func() {
			sd.admitted.Add(1)
			return func() { sd.released.Add(1) }
		}}
	go func() {
		defer close(sd.done)
		sd.l.Serve()
	}()
	return sd
}

// stop closes the side's socket and waits for Serve to return.
func (sd *side) stop(t *testing.T) {
	t.Helper()
	sd.l.Conn.Close()
	select {
	case <-sd.done:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after its socket closed")
	}
}

// TestDetachAdopt moves sessions between two Listeners sharing one socket
// (a duplicate, as two processes do) while clients exchange numbered
// datagrams: none is lost, each session keeps its backend and its backend
// socket, a reply held by a backend during the move reaches its client
// through the new Listener, and the counters carry on.
func TestDetachAdopt(t *testing.T) {
	fds := lbtest.OpenFDs(t)
	b1, b2 := newLateBackend(t, "b1"), newLateBackend(t, "b2")

	oldConn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f, err := oldConn.File()
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	newConn := pc.(*net.UDPConn)
	addr := oldConn.LocalAddr().(*net.UDPAddr).AddrPort()

	old := newSide(t, oldConn, false, b1.addr(), b2.addr())
	nu := newSide(t, newConn, true, b1.addr(), b2.addr())

	// Each client exchanges at least minBefore datagrams before the move
	// and after datagrams after it, one at a time (a reply lost is a
	// datagram lost: nothing is dropped for lack of buffer).
	const clients, minBefore, after = 16, 20, 50
	results := make([]lbtest.PingPongResult, clients)
	var (
		wg      sync.WaitGroup
		started sync.WaitGroup
		moved   = make(chan struct{})
	)
	var conns []*net.UDPConn
	for range clients {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	started.Add(clients)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = lbtest.PingPong{Conn: c, To: addr, ID: fmt.Sprintf("c%d", i), Wait: 3 * time.Second,
				Before: minBefore, Started: started.Done, Moved: moved, After: after}.Run()
		}()
	}
	// The late client: its query is held by the backend across the move.
	lateC := client(t, "127.0.0.1")
	if _, err := lateC.WriteToUDPAddrPort([]byte("late-1"), addr); err != nil {
		t.Fatal(err)
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		n := b1.held.Load() + b2.held.Load()
		return n == 1, fmt.Sprintf("%d late queries held", n)
	})
	started.Wait() // every client is exchanging

	peersBefore := map[string]bool{}
	for _, b := range []*lateBackend{b1, b2} {
		b.peers.Range(func(k, _ any) bool { peersBefore[k.(netip.AddrPort).String()] = true; return true })
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hs, err := old.l.Detach(ctx)
	if err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if len(hs) != clients+1 {
		t.Fatalf("Detach returned %d sessions, want %d", len(hs), clients+1)
	}
	if n := old.l.Len(); n != 0 {
		t.Errorf("old listener keeps %d sessions after Detach", n)
	}
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		return old.sessions.Load() == 0 && old.released.Load() == old.admitted.Load(),
			fmt.Sprintf("old side: %d sessions, %d of %d admissions released", old.sessions.Load(), old.released.Load(), old.admitted.Load())
	})
	// The late reply leaves the backend now: nobody reads its session's
	// socket, so it waits there.
	var lateH *udpproxy.Handoff
	for i := range hs {
		if hs[i].Client == lateC.LocalAddr().(*net.UDPAddr).AddrPort() {
			lateH = &hs[i]
		}
	}
	if lateH == nil {
		t.Fatal("the late client's session was not detached")
	}
	b1.release()
	b2.release()
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		n := queued(t, lateH.File)
		return n > 0, fmt.Sprintf("%d bytes queued in the late session's socket", n)
	})

	n, err := nu.l.Adopt(hs)
	if err != nil || n != clients+1 {
		t.Fatalf("Adopt: %d adopted, %v", n, err)
	}
	nu.l.Release()
	close(moved)

	reply, _ := receive(lateC, 5*time.Second)
	if name, payload := tag(t, reply); string(payload) != "late-1" || name != backendName(lateH.Backend, b1, b2) {
		t.Errorf("late reply %q, want late-1 from %s", reply, lateH.Backend)
	}
	wg.Wait()
	for i, r := range results {
		if r.Err != nil || len(r.Missing) > 0 || r.Sent < minBefore+after {
			t.Errorf("client %d: sent %d, missing %v, error %v", i, r.Sent, r.Missing, r.Err)
		}
	}
	// Every session kept its backend socket: the backends saw no new one.
	for _, b := range []*lateBackend{b1, b2} {
		b.peers.Range(func(k, _ any) bool {
			if !peersBefore[k.(netip.AddrPort).String()] {
				t.Errorf("backend %s heard from a new socket %v after the move", b.name, k)
			}
			return true
		})
	}
	if got := nu.l.Len(); got != clients+1 {
		t.Errorf("new listener has %d sessions, want %d", got, clients+1)
	}
	if got, adm := nu.sessions.Load(), nu.admitted.Load(); got != clients+1 || adm != clients+1 {
		t.Errorf("new side counts %d sessions and %d admissions, want %d", got, adm, clients+1)
	}
	var gauge float64
	for _, b := range []*lateBackend{b1, b2} {
		gauge += testutil.ToFloat64(nu.m.UDPSessionsActive.WithLabelValues("udp", "pool", b.addr()))
	}
	if gauge != clients+1 {
		t.Errorf("lbctl_udp_sessions_active on the new side %v, want %d", gauge, clients+1)
	}
	if lines := old.logs.FilterLoggerName("access").Len(); lines != 0 {
		t.Errorf("the old side logged %d access lines for sessions that moved", lines)
	}

	for _, c := range conns {
		c.Close()
	}
	lateC.Close()
	old.stop(t)
	nu.stop(t)
	// The counters carried on: each client's access line counts all of it.
	lines := nu.logs.FilterLoggerName("access").All()
	if len(lines) != clients+1 {
		t.Fatalf("%d access lines, want %d", len(lines), clients+1)
	}
	sent := map[string]int64{lateC.LocalAddr().String(): 1}
	for i, c := range conns {
		sent[c.LocalAddr().String()] = int64(results[i].Sent)
	}
	for _, e := range lines {
		ctx := e.ContextMap()
		in, out := ctx["datagrams_in"].(int64), ctx["datagrams_out"].(int64)
		if want := sent[fmt.Sprint(ctx["client"])]; in != want || out != want || ctx["end"] != string(udpproxy.EndShutdown) {
			t.Errorf("access line %v: datagrams in %d out %d end %v, want %d each way, shutdown", ctx["client"], in, out, ctx["end"], want)
		}
	}
	b1.close()
	b2.close()
	if got := lbtest.OpenFDs(t); got != fds {
		t.Errorf("%d descriptors open after the test, %d before", got, fds)
	}
}

// backendName is the name a lateBackend tags its replies with.
func backendName(addr string, bs ...*lateBackend) string {
	for _, b := range bs {
		if b.addr() == addr {
			return b.name
		}
	}
	return "?"
}

// queued returns the bytes waiting in a socket's receive queue.
func queued(t *testing.T, f *os.File) int {
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n
}

// TestHoldDetachTakeBack: a held listener reads nothing (the datagram
// waits in its socket), a Listener takes back the sessions it detached
// (a handover that failed) and serves them on the same backend socket
// once released, and a held listener's Serve returns when its socket
// closes.
func TestHoldDetachTakeBack(t *testing.T) {
	fds := lbtest.OpenFDs(t)
	be := newLateBackend(t, "b1")
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	sd := newSide(t, conn, true, be.addr())
	c := client(t, "127.0.0.1")
	waitQueued := func(what string) {
		t.Helper()
		lbtest.Until(t, 5*time.Second, func() (bool, string) {
			f, err := conn.File()
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			n := queued(t, f)
			return n > 0, fmt.Sprintf("%s: %d bytes queued in the listener socket", what, n)
		})
	}
	if _, err := c.WriteToUDPAddrPort([]byte("q1"), addr); err != nil {
		t.Fatal(err)
	}
	waitQueued("held from the start")
	heard := 0
	be.peers.Range(func(any, any) bool { heard++; return true })
	if heard != 0 || sd.l.Len() != 0 {
		t.Fatalf("a held listener forwarded: %d sessions, the backend heard from %d sockets", sd.l.Len(), heard)
	}
	sd.l.Release()
	if reply, _ := receive(c, 5*time.Second); string(reply) != "b1|q1" {
		t.Fatalf("after Release: reply %q", reply)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hs, err := sd.l.Detach(ctx)
	if err != nil || len(hs) != 1 {
		t.Fatalf("Detach: %d sessions, %v", len(hs), err)
	}
	if _, err := c.WriteToUDPAddrPort([]byte("q2"), addr); err != nil {
		t.Fatal(err)
	}
	waitQueued("detached")
	if n, err := sd.l.Adopt(hs); n != 1 || err != nil {
		t.Fatalf("taking the session back: %d, %v", n, err)
	}
	sd.l.Release()
	if reply, _ := receive(c, 5*time.Second); string(reply) != "b1|q2" {
		t.Fatalf("after taking back: reply %q", reply)
	}
	peers := 0
	be.peers.Range(func(any, any) bool { peers++; return true })
	if peers != 1 {
		t.Errorf("the backend heard from %d sockets, want 1: the session kept its socket", peers)
	}
	if got := sd.sessions.Load(); got != 1 {
		t.Errorf("%d sessions counted, want 1", got)
	}

	hs, err = sd.l.Detach(ctx)
	if err != nil || len(hs) != 1 {
		t.Fatalf("second Detach: %d sessions, %v", len(hs), err)
	}
	hs[0].File.Close()
	sd.stop(t) // held: Serve returns all the same
	c.Close()
	be.close()
	if got := lbtest.OpenFDs(t); got != fds {
		t.Errorf("%d descriptors open after the test, %d before", got, fds)
	}
}
