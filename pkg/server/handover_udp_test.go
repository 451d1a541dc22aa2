//go:build linux

package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"golang.org/x/sys/unix"
)

// handoverPipe carries HandoverBatches from one Server to another over a
// unix SOCK_SEQPACKET pair with SCM_RIGHTS, as two processes would.
type handoverPipe struct {
	t    *testing.T
	a, b int
}

func newHandoverPipe(t *testing.T) *handoverPipe {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := &handoverPipe{t: t, a: fds[0], b: fds[1]}
	t.Cleanup(func() { unix.Close(p.a); unix.Close(p.b) })
	return p
}

// pass sends b through the pair and returns what the other end reads: the
// same Meta, and new descriptors for the same sockets.
func (p *handoverPipe) pass(b HandoverBatch) (HandoverBatch, error) {
	if len(b.Files) > MaxHandoverFiles {
		return HandoverBatch{}, fmt.Errorf("%d files in one batch", len(b.Files))
	}
	fds := make([]int, len(b.Files))
	for i, f := range b.Files {
		fds[i] = int(f.Fd())
	}
	if err := unix.Sendmsg(p.a, b.Meta, unix.UnixRights(fds...), nil, 0); err != nil {
		return HandoverBatch{}, err
	}
	buf := make([]byte, 1<<20)
	oob := make([]byte, unix.CmsgSpace(4*MaxHandoverFiles))
	n, oobn, flags, _, err := unix.Recvmsg(p.b, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return HandoverBatch{}, err
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		return HandoverBatch{}, errors.New("batch truncated")
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return HandoverBatch{}, err
	}
	out := HandoverBatch{Meta: buf[:n]}
	for _, m := range msgs {
		rights, err := unix.ParseUnixRights(&m)
		if err != nil {
			return HandoverBatch{}, err
		}
		for _, fd := range rights {
			out.Files = append(out.Files, os.NewFile(uintptr(fd), "passed"))
		}
	}
	return out, nil
}

// TestUDPHandover moves 100 UDP sessions from one Server to another that
// shares its listener socket (inherited by both, as after an upgrade)
// while each session exchanges numbered datagrams: under 0.1 % lost, each
// keeps its backend and its backend socket, and the new Server serves
// them, and new clients, after the old one has shut down.
func TestUDPHandover(t *testing.T) {
	const clients, before, after = 100, 10, 30
	b1 := lbtest.NewUDP(t, "b1", lbtest.UDPTagged("b1"))
	b2 := lbtest.NewUDP(t, "b2", lbtest.UDPTagged("b2"))
	inh, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer inh.Close()
	addr := inh.LocalAddr().(*net.UDPAddr).AddrPort()
	toml := fmt.Sprintf("[listeners.dns]\nprotocol = \"udp\"\nbind = %q\npool = \"p\"\nidle_timeout = \"30s\"\n", addr.String()) +
		poolTOML("p", "", b1.Addr, b2.Addr) + noHealth
	inherited := map[SocketKey]InheritedSocket{NewSocketKey("udp", addr): inh}
	old := startWith(t, toml, nil, Options{Inherited: inherited})

	results := make([]lbtest.PingPongResult, clients)
	var (
		wg      sync.WaitGroup
		started sync.WaitGroup
		moved   = make(chan struct{})
	)
	started.Add(clients)
	for i := range clients {
		c := udpClient(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = lbtest.PingPong{Conn: c, To: addr, ID: fmt.Sprint(i), Wait: 2 * time.Second,
				Before: before, Started: started.Done, Moved: moved, After: after}.Run()
		}()
	}
	started.Wait()
	peersBefore := map[netip.AddrPort]bool{}
	for _, b := range []*lbtest.UDPBackend{b1, b2} {
		for p := range b.Peers() {
			peersBefore[p] = true
		}
	}

	nu := startWith(t, toml, nil, Options{Inherited: inherited, HoldUDP: true})
	pipe := newHandoverPipe(t)
	batches := 0
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := old.srv.DetachUDP(ctx, func(b HandoverBatch) error {
		batches++
		got, err := pipe.pass(b)
		if err != nil {
			return err
		}
		return nu.srv.AdoptUDP(got)
	})
	if err != nil || n != clients {
		t.Fatalf("DetachUDP: %d moved, %v; want %d", n, err, clients)
	}
	nu.srv.ReleaseUDP()
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer scancel()
	t0 := time.Now()
	old.srv.Shutdown(sctx)
	if d := time.Since(t0); d > time.Second {
		t.Errorf("the old server took %v to shut down with no session left", d)
	}
	close(moved)
	wg.Wait()

	var sent, lost int
	for i, r := range results {
		sent += r.Sent
		lost += len(r.Missing)
		if r.Err != nil {
			t.Errorf("client %d: %v", i, r.Err)
		}
	}
	t.Logf("%d sessions moved in %d batch(es); %d datagrams each way, %d lost", n, batches, sent, lost)
	if lost*1000 >= sent {
		t.Errorf("%d of %d datagrams lost (≥ 0.1 %%)", lost, sent)
	}
	for p := range b1.Peers() {
		if !peersBefore[p] {
			t.Errorf("backend b1 heard from a new socket %v: a session changed socket", p)
		}
	}
	for p := range b2.Peers() {
		if !peersBefore[p] {
			t.Errorf("backend b2 heard from a new socket %v: a session changed socket", p)
		}
	}
	var active float64
	for _, b := range []*lbtest.UDPBackend{b1, b2} {
		active += counter(nu.m.UDPSessionsActive.WithLabelValues("dns", "p", b.Addr))
	}
	if active != clients {
		t.Errorf("the new server has %v sessions active, want %d", active, clients)
	}
	// A new client is served by the new server alone.
	if got := udpExchange(udpClient(t), addr, []byte("new"), 5*time.Second); !bytes.HasSuffix(got, []byte("|new")) {
		t.Errorf("a new client after the handover got %q", got)
	}
}

// TestUDPHandoverSendFails: when a batch cannot be passed (the new process
// died), DetachUDP takes its sessions back and the listener reads again:
// each session goes on with its backend socket, and none is counted twice.
func TestUDPHandoverSendFails(t *testing.T) {
	be := lbtest.NewUDP(t, "b1", lbtest.UDPTagged("b1"))
	h := startUDPServer(t, udpListenerTOML("dns", "p", "")+poolTOML("p", "", be.Addr)+noHealth, nil)
	addr := h.udpAddr("dns")
	var cs []*net.UDPConn
	for i := range 5 {
		c := udpClient(t)
		if got := udpExchange(c, addr, fmt.Appendf(nil, "a%d", i), 5*time.Second); string(got) != fmt.Sprintf("b1|a%d", i) {
			t.Fatalf("client %d: %q", i, got)
		}
		cs = append(cs, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	calls := 0
	n, err := h.srv.DetachUDP(ctx, func(b HandoverBatch) error {
		calls++
		if len(b.Files) != len(cs) {
			t.Errorf("batch of %d files, want %d", len(b.Files), len(cs))
		}
		return errors.New("peer gone")
	})
	if err == nil || n != 0 || calls != 1 {
		t.Fatalf("DetachUDP with a failing send: %d moved, %v, %d calls", n, err, calls)
	}
	for i, c := range cs {
		if got := udpExchange(c, addr, fmt.Appendf(nil, "b%d", i), 5*time.Second); string(got) != fmt.Sprintf("b1|b%d", i) {
			t.Errorf("client %d after the failed handover: %q", i, got)
		}
	}
	if peers := len(be.Peers()); peers != len(cs) {
		t.Errorf("the backend heard from %d sockets, want %d: the sessions kept theirs", peers, len(cs))
	}
	if got := counter(h.m.UDPSessionsActive.WithLabelValues("dns", "p", be.Addr)); got != float64(len(cs)) {
		t.Errorf("%v sessions active, want %d", got, len(cs))
	}
}

// TestUDPHandoverBatches: the sessions of two listeners go in batches of
// at most MaxHandoverFiles, each of one listener, and each is adopted on
// the listener of its name and address.
func TestUDPHandoverBatches(t *testing.T) {
	counts := map[string]int{"a": MaxHandoverFiles + 8, "b": 3}
	be := lbtest.NewUDP(t, "b1", lbtest.UDPTagged("b1"))
	inherited := map[SocketKey]InheritedSocket{}
	addrs := map[string]netip.AddrPort{}
	toml := poolTOML("p", "", be.Addr) + noHealth
	for _, name := range []string{"a", "b"} {
		inh, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer inh.Close()
		addrs[name] = inh.LocalAddr().(*net.UDPAddr).AddrPort()
		inherited[NewSocketKey("udp", addrs[name])] = inh
		toml += fmt.Sprintf("[listeners.%s]\nprotocol = \"udp\"\nbind = %q\npool = \"p\"\n", name, addrs[name])
	}
	old := startWith(t, toml, nil, Options{Inherited: inherited})
	type cl struct {
		c        *net.UDPConn
		listener string
	}
	var cs []cl
	for name, n := range counts {
		for i := range n {
			c := udpClient(t)
			if got := udpExchange(c, addrs[name], fmt.Appendf(nil, "%s%d", name, i), 5*time.Second); got == nil {
				t.Fatalf("client %d of %s: no reply", i, name)
			}
			cs = append(cs, cl{c, name})
		}
	}
	nu := startWith(t, toml, nil, Options{Inherited: inherited, HoldUDP: true})
	pipe := newHandoverPipe(t)
	var sizes []int
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := old.srv.DetachUDP(ctx, func(b HandoverBatch) error {
		sizes = append(sizes, len(b.Files))
		got, err := pipe.pass(b)
		if err != nil {
			return err
		}
		return nu.srv.AdoptUDP(got)
	})
	if want := counts["a"] + counts["b"]; err != nil || n != want {
		t.Fatalf("DetachUDP: %d moved, %v; want %d", n, err, want)
	}
	nu.srv.ReleaseUDP()
	if len(sizes) != 3 || sizes[0]+sizes[1]+sizes[2] != n {
		t.Errorf("batches of %v sessions, want 3 batches (252 + 8 of a, 3 of b in some order)", sizes)
	}
	for _, s := range sizes {
		if s > MaxHandoverFiles {
			t.Errorf("a batch of %d sessions", s)
		}
	}
	before := be.Peers()
	for i, c := range cs {
		want := fmt.Sprintf("b1|again%d", i)
		if got := udpExchange(c.c, addrs[c.listener], fmt.Appendf(nil, "again%d", i), 5*time.Second); string(got) != want {
			t.Fatalf("client %d of %s after the handover: %q, want %q", i, c.listener, got, want)
		}
	}
	if after := be.Peers(); len(after) != len(before) {
		t.Errorf("the backend heard from %d sockets after the handover, %d before: sessions changed socket", len(after), len(before))
	}
	for name, want := range counts {
		if got := counter(nu.m.UDPSessionsActive.WithLabelValues(name, "p", be.Addr)); got != float64(want) {
			t.Errorf("listener %s of the new server: %v sessions active, want %d", name, got, want)
		}
	}
}
