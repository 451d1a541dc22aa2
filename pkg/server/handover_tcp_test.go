package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/proxyheader"
	"github.com/lbctl/lbctl/tlshello/tlshellotest"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// handoverPair is an old and a new server on the same inherited listening
// sockets, as the two processes of an upgrade.
type handoverPair struct {
	old, new *harness
	binds    map[string]string // listener name -> address
	toml     string
	socks    map[SocketKey]InheritedSocket
}

// handoverTOML: web (plain), prx (PROXY headers from 127.0.0.1) and tls
// (SNI a.example routed to pool q), each with a per-client limit so that
// the client table counts its connections.
func startHandoverPair(t *testing.T, p, q string) *handoverPair {
	t.Helper()
	socks := map[SocketKey]InheritedSocket{}
	binds := map[string]string{}
	for _, name := range []string{"web", "prx", "tls"} {
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		socks[NewSocketKey("tcp", ln.Addr().(*net.TCPAddr).AddrPort())] = ln
		binds[name] = ln.Addr().String()
	}
	toml := fmt.Sprintf(`
[listeners.web]
bind = %q
pool = "p"
max_connections_per_client = 100
[listeners.prx]
bind = %q
pool = "p"
accept_proxy_protocol = true
trusted_proxies = ["127.0.0.1"]
max_connections_per_client = 10
[listeners.tls]
bind = %q
pool = "p"
max_connections_per_client = 10
  [[listeners.tls.routes]]
  sni = ["a.example"]
  pool = "q"
`, binds["web"], binds["prx"], binds["tls"]) + poolTOML("p", "", p) + noHealth + poolTOML("q", "", q) +
		"[pools.q.health]\ncheck = \"none\"\n"
	hp := &handoverPair{binds: binds, toml: toml, socks: socks}
	hp.old = startWith(t, toml, nil, Options{Inherited: socks})
	return hp
}

// startNew starts the new server; from then on both accept on the
// sockets.
func (hp *handoverPair) startNew(t *testing.T) {
	t.Helper()
	hp.new = startWith(t, hp.toml, nil, Options{Inherited: hp.socks})
}

// active is the open connections of listener name.
func (h *harness) active(name string) int64 {
	h.srv.mu.Lock()
	defer h.srv.mu.Unlock()
	for _, l := range h.srv.listeners {
		if st := l.state.Load(); st != nil && st.name == name {
			return l.active.Load()
		}
	}
	h.t.Fatalf("no listener %s", name)
	return 0
}

// clientActive is the connections client holds in listener name's table.
func (h *harness) clientActive(name string, client netip.Addr) int {
	h.srv.mu.Lock()
	defer h.srv.mu.Unlock()
	for _, l := range h.srv.listeners {
		if st := l.state.Load(); st != nil && st.name == name {
			l.clients.mu.Lock()
			defer l.clients.mu.Unlock()
			return l.clients.clients[client].active
		}
	}
	return -1
}

// dupSend is an in-memory send: it hands duplicates of the batch's
// descriptors to adopt, as SCM_RIGHTS would to the new process.
func dupSend(t *testing.T, adopt func(HandoverBatch) error) func(HandoverBatch) error {
	return func(b HandoverBatch) error {
		files := make([]*os.File, len(b.Files))
		for i, f := range b.Files {
			raw, err := f.SyscallConn()
			if err != nil {
				return err
			}
			var fd int
			var derr error
			raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
			if derr != nil {
				return derr
			}
			files[i] = os.NewFile(uintptr(fd), "moved")
		}
		return adopt(HandoverBatch{Meta: b.Meta, Files: files})
	}
}

// stream is a client sending pseudo-random data through an echo backend
// until stopped, and hashing what it sent and what came back.
type stream struct {
	c        *net.TCPConn
	stop     chan struct{}
	back     atomic.Int64
	sent     hash.Hash
	nsent    int64
	werr     error
	result   chan streamResult
	writerWG sync.WaitGroup
}

type streamResult struct {
	n   int64
	sum []byte
	err error
}

func startStream(t *testing.T, addr string, seed byte) *stream {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := &stream{c: c.(*net.TCPConn), stop: make(chan struct{}), sent: sha256.New(), result: make(chan streamResult, 1)}
	chunk := make([]byte, 16<<10)
	for i := range chunk {
		chunk[i] = byte(i*7) ^ seed
	}
	s.writerWG.Add(1)
	go func() {
		defer s.writerWG.Done()
		for i := 0; ; i++ {
			select {
			case <-s.stop:
				s.werr = s.c.CloseWrite()
				return
			default:
			}
			chunk[0] = byte(i) // every chunk differs
			if _, err := s.c.Write(chunk); err != nil {
				s.werr = err
				return
			}
			s.sent.Write(chunk)
			s.nsent += int64(len(chunk))
		}
	}()
	go func() {
		h := sha256.New()
		buf := make([]byte, 32<<10)
		var n int64
		for {
			k, err := s.c.Read(buf)
			h.Write(buf[:k])
			n += int64(k)
			s.back.Store(n)
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				s.result <- streamResult{n, h.Sum(nil), err}
				return
			}
		}
	}()
	return s
}

// startStreams starts n streams to addr (seeds 0..n-1) and waits until
// every one has had 64 KiB echoed back.
func startStreams(t *testing.T, addr string, n int) []*stream {
	t.Helper()
	streams := make([]*stream, n)
	for i := range streams {
		streams[i] = startStream(t, addr, byte(i))
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		for i, s := range streams {
			if s.back.Load() < 64<<10 {
				return false, fmt.Sprintf("stream %d: %d bytes back", i, s.back.Load())
			}
		}
		return true, ""
	})
	return streams
}

// finish checks, once the stream was stopped, that every byte came back,
// once and unchanged, and that the stream ended with FIN (no reset).
func (s *stream) finish(t *testing.T) {
	t.Helper()
	s.writerWG.Wait()
	if s.werr != nil {
		t.Fatalf("client write: %v", s.werr)
	}
	select {
	case r := <-s.result:
		if r.err != nil || r.n != s.nsent || !bytes.Equal(r.sum, s.sent.Sum(nil)) {
			t.Fatalf("echo: %d bytes back (%v, sums match %v), %d sent", r.n, r.err, bytes.Equal(r.sum, s.sent.Sum(nil)), s.nsent)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("echo did not end: %d of %d bytes back", s.back.Load(), s.nsent)
	}
}

// TestHandoverTCP moves every established connection of one server to
// another on the same sockets while streams run both ways: nothing is
// reset, lost or redialed, the new server counts them (listener, client
// table, backend gauge), and a connection waiting for its PROXY header or
// its TLS hello moves once it has reached its backend.
func TestHandoverTCP(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	beQ := lbtest.NewTCP(t, lbtest.Echo)
	hp := startHandoverPair(t, be.Addr, beQ.Addr)
	const n = 12
	streams := startStreams(t, hp.binds["web"], n)
	// Two connections before their proxy: no PROXY header, no hello yet.
	pc, err := net.Dial("tcp", hp.binds["prx"])
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	tc, err := net.Dial("tcp", hp.binds["tls"])
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		a, b := hp.old.active("prx"), hp.old.active("tls")
		return a == 1 && b == 1, fmt.Sprintf("old server: prx %d, tls %d open, want 1 each", a, b)
	})
	hp.startNew(t)

	type detached struct {
		moved int
		err   error
	}
	res := make(chan detached, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		m, err := hp.old.srv.DetachTCP(ctx, dupSend(t, hp.new.srv.AdoptTCP))
		res <- detached{m, err}
	}()
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		a, b := hp.new.active("web"), hp.old.active("web")
		return a == n && b == 0, fmt.Sprintf("web: %d open in the new server, %d in the old", a, b)
	})
	select {
	case r := <-res:
		t.Fatalf("DetachTCP returned (%d, %v) before the PROXY and TLS connections reached their proxy", r.moved, r.err)
	default:
	}

	// Now they complete their first phase, in the old server, and move.
	src := netip.MustParseAddrPort("192.0.2.7:4000")
	pc.Write(append(proxyheader.AppendV1(nil, src, netip.MustParseAddrPort("192.0.2.1:80")), "proxied"...))
	hello, err := tlshellotest.Hello(&tls.Config{ServerName: "a.example", InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	tc.Write(hello)
	var r detached
	select {
	case r = <-res:
	case <-time.After(20 * time.Second):
		t.Fatal("DetachTCP did not return")
	}
	if r.err != nil || r.moved != n+2 {
		t.Fatalf("DetachTCP: %d moved, %v; want %d", r.moved, r.err, n+2)
	}
	for _, name := range []string{"web", "prx", "tls"} {
		if a := hp.old.active(name); a != 0 {
			t.Errorf("old server: %d connections on %s, want 0", a, name)
		}
	}
	if a, b, c := hp.new.active("web"), hp.new.active("prx"), hp.new.active("tls"); a != n || b != 1 || c != 1 {
		t.Errorf("new server: web %d prx %d tls %d open, want %d, 1, 1", a, b, c, n)
	}
	if got := hp.new.clientActive("web", netip.MustParseAddr("127.0.0.1")); got != n {
		t.Errorf("new server's client table: 127.0.0.1 holds %d on web, want %d", got, n)
	}
	if got := hp.new.clientActive("prx", src.Addr()); got != 1 {
		t.Errorf("new server's client table: the PROXY source holds %d on prx, want 1", got)
	}
	gauge := func(h *harness, l, pool, b string) float64 {
		return testutil.ToFloat64(h.m.ConnectionsActive.WithLabelValues(l, pool, b))
	}
	if g, o := gauge(hp.new, "web", "p", be.Addr), gauge(hp.old, "web", "p", be.Addr); g != n || o != 0 {
		t.Errorf("lbctl_connections_active web/p: new %v old %v, want %d and 0", g, o, n)
	}
	if g := gauge(hp.new, "tls", "q", beQ.Addr); g != 1 {
		t.Errorf("lbctl_connections_active tls/q: %v, want 1 (the route's pool)", g)
	}

	// Everything flows on through the new server, and ends cleanly.
	for _, s := range streams {
		close(s.stop)
	}
	for _, s := range streams {
		s.finish(t)
	}
	pc.Write([]byte(" and moved"))
	pc.(*net.TCPConn).CloseWrite()
	if b, err := lbtest.ReadAllTimeout(t, pc, 10*time.Second); err != nil || string(b) != "proxied and moved" {
		t.Fatalf("PROXY connection: %q, %v", b, err)
	}
	tc.Write([]byte("after the hello"))
	tc.(*net.TCPConn).CloseWrite()
	if b, err := lbtest.ReadAllTimeout(t, tc, 10*time.Second); err != nil || !bytes.Equal(b, append(hello, "after the hello"...)) {
		t.Fatalf("TLS connection: %d bytes back, %v; want the hello and the payload", len(b), err)
	}
	if a, q := be.Accepted(), beQ.Accepted(); a != n+1 || q != 1 {
		t.Fatalf("backends accepted %d and %d connections, want %d and 1: a moved connection was dialed again", a, q, n+1)
	}
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		a := hp.new.active("web") + hp.new.active("prx") + hp.new.active("tls")
		return a == 0, fmt.Sprintf("%d open in the new server after the streams ended", a)
	})
	if got := hp.new.clientActive("prx", src.Addr()); got != 0 {
		t.Errorf("the PROXY source still holds %d after its connection ended", got)
	}
}

// TestHandoverTCPSendFails: when the new process cannot take a batch,
// its connections come back to the old server and go on there, intact.
func TestHandoverTCPSendFails(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	hp := startHandoverPair(t, be.Addr, be.Addr)
	const n = 4
	streams := startStreams(t, hp.binds["web"], n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	broken := errors.New("new process gone")
	moved, err := hp.old.srv.DetachTCP(ctx, func(HandoverBatch) error { return broken })
	if !errors.Is(err, broken) || moved != 0 {
		t.Fatalf("DetachTCP: %d moved, %v; want 0 and the send error", moved, err)
	}
	if a := hp.old.active("web"); a != n {
		t.Fatalf("old server: %d connections on web after the failed handover, want %d", a, n)
	}
	// They still flow: more comes back after the failure.
	mark := make([]int64, n)
	for i, s := range streams {
		mark[i] = s.back.Load()
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		for i, s := range streams {
			if s.back.Load() <= mark[i]+64<<10 {
				return false, fmt.Sprintf("stream %d: %d bytes back, %d at the failure", i, s.back.Load(), mark[i])
			}
		}
		return true, ""
	})
	for _, s := range streams {
		close(s.stop)
	}
	for _, s := range streams {
		s.finish(t)
	}
	if a := be.Accepted(); a != n {
		t.Fatalf("backend accepted %d connections, want %d", a, n)
	}
}

// TestHandoverTCPRemovedPool: a connection to a pool an earlier reload
// removed is in no pool's registry. It is not moved and goes on in the old
// server, and DetachTCP does not wait for it until its context ends, only
// as long as an accepted connection can take to reach its proxy.
func TestHandoverTCPRemovedPool(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	extra := "connect_timeout = \"100ms\"\nretries = 0\n[pools.%s.health]\ncheck = \"none\"\n"
	h := startServer(t, listenerTOML("web", "gone", "")+poolTOML("gone", fmt.Sprintf(extra, "gone"), be.Addr))
	c := h.dial("web")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	echo := func(msg string) {
		t.Helper()
		c.Write([]byte(msg))
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(c, b); err != nil || string(b) != msg {
			t.Fatalf("echo %q: %q, %v", msg, b, err)
		}
	}
	echo("before")
	reload(t, h, listenerTOML("web", "p", "")+poolTOML("p", fmt.Sprintf(extra, "p"), be.Addr))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	moved, err := h.srv.DetachTCP(ctx, func(HandoverBatch) error { return errors.New("nothing is to be sent") })
	if err != nil || moved != 0 {
		t.Fatalf("DetachTCP: %d moved, %v", moved, err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("DetachTCP took %v: it waited for the unseen connection until its context ended", d)
	}
	echo("after")
}

// TestHandoverTCPStopsOneBatchAtATime: a detached connection moves no
// byte until the new server adopts it, so DetachTCP stops connections a
// batch or two at a time (detachAhead), not all at once: while the first
// batch is being sent (here: the new server is slow to take it), the
// connections beyond detachAhead still flow in the old server. (Stopping
// them all at the first scan froze every connection for the whole
// handover, 13 to 21 s for a few thousand connections in the soak: short
// connections timed out waiting for their FIN.)
func TestHandoverTCPStopsOneBatchAtATime(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	hp := startHandoverPair(t, be.Addr, be.Addr)
	const extra = 30
	n := detachAhead + extra
	// From four client addresses: web takes 100 connections per client.
	conns := make([]*net.TCPConn, n)
	msg := []byte("ping")
	for i := range conns {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%4))}, Timeout: 10 * time.Second}
		c, err := d.Dial("tcp", hp.binds["web"])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c.(*net.TCPConn)
		if err := pingEcho(conns[i], msg, 10*time.Second); err != nil {
			t.Fatalf("connection %d before the handover: %v", i, err)
		}
	}
	hp.startNew(t)
	// During the first send, before the new server adopts anything: every
	// connection gets a ping; those still in the old server answer.
	var answered atomic.Int32
	pending := make([]bool, n)
	first := true
	adopt := dupSend(t, hp.new.srv.AdoptTCP)
	send := func(b HandoverBatch) error {
		if first {
			first = false
			var wg sync.WaitGroup
			for i, c := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := pingEcho(c, msg, 3*time.Second); err == nil {
						answered.Add(1)
					} else {
						pending[i] = true // its echo comes once it is adopted
					}
				}()
			}
			wg.Wait()
		}
		return adopt(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	moved, err := hp.old.srv.DetachTCP(ctx, send)
	if err != nil || moved != n {
		t.Fatalf("DetachTCP: %d moved, %v; want %d", moved, err, n)
	}
	if a := answered.Load(); a < extra {
		t.Errorf("during the first batch's send, %d of %d connections answered in the old server, want at least %d (those beyond detachAhead)", a, n, extra)
	}
	// Every connection is whole in the new server.
	for i, c := range conns {
		if pending[i] {
			got := make([]byte, len(msg))
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("connection %d: the echo sent during the handover: %q, %v", i, got, err)
			}
		}
		if err := pingEcho(c, []byte("after"), 10*time.Second); err != nil {
			t.Fatalf("connection %d after the handover: %v", i, err)
		}
	}
	if a := hp.new.active("web"); a != int64(n) {
		t.Errorf("new server: %d connections on web, want %d", a, n)
	}
}

// pingEcho writes msg to c and reads it back within d.
func pingEcho(c *net.TCPConn, msg []byte, d time.Duration) error {
	c.SetDeadline(time.Now().Add(d))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}
