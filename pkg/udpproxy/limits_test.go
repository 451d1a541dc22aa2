package udpproxy_test

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/udpproxy"
)

// pingBackend answers "ping..." datagrams and ignores every other one, so
// that a test chooses which sessions hear from their backend.
func pingBackend(t testing.TB) *lbtest.UDPBackend {
	return lbtest.NewUDP(t, "a", func(req []byte) [][]byte {
		if strings.HasPrefix(string(req), "ping") {
			return [][]byte{append([]byte("a|"), req...)}
		}
		return nil
	})
}

// send writes one datagram from c to the rig.
func (r *rig) send(c *net.UDPConn, payload string) {
	r.t.Helper()
	if _, err := c.WriteToUDPAddrPort([]byte(payload), r.addr); err != nil {
		r.t.Fatal(err)
	}
}

// ended returns the access log lines with end = end.
func (r *rig) ended(end udpproxy.End) []map[string]any {
	var out []map[string]any
	for _, l := range r.accessLines() {
		if f := l.ContextMap(); f["end"] == string(end) {
			out = append(out, f)
		}
	}
	return out
}

// A session whose backend has never replied ends after unreplied_timeout,
// however long idle_timeout is; a session whose backend replied stays.
func TestUnrepliedTimeout(t *testing.T) {
	const unreplied = time.Second
	be := pingBackend(t)
	r := newRig(t, rigOpts{tweak: func(c *udpproxy.Config) {
		c.IdleTimeout = time.Hour
		c.UnrepliedTimeout = unreplied
	}}, be.Addr)
	answered, ignored := client(t, "127.0.0.1"), client(t, "127.0.0.1")
	r.exchange(answered, []byte("ping 1"))
	start := time.Now() // before the session opens
	r.send(ignored, "hold")
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		n := len(r.ended(udpproxy.EndUnreplied))
		return n == 1, fmt.Sprintf("%d sessions ended unreplied, want 1", n)
	})
	if d := time.Since(start); d < unreplied {
		t.Errorf("the unreplied session ended after %v, before unreplied_timeout %v", d, unreplied)
	}
	if f := r.ended(udpproxy.EndUnreplied)[0]; f["client"] != ignored.LocalAddr().(*net.UDPAddr).AddrPort().String() {
		t.Errorf("ended %v, want the session of %s", f, ignored.LocalAddr())
	}
	if n := r.sessions.Load(); n != 1 {
		t.Errorf("%d sessions open, want the answered one", n)
	}
	if reply, _ := r.exchange(answered, []byte("ping 2")); string(reply) != "a|ping 2" {
		t.Errorf("answered session: reply %q", reply)
	}
	if n := r.backends[0].Total(); n != 2 {
		t.Errorf("%d sessions opened, want 2 (the answered one kept)", n)
	}
}

// setNOFILE sets this process's soft RLIMIT_NOFILE to cur until the test
// ends.
func setNOFILE(t *testing.T, cur uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("getrlimit: %v", err)
	}
	low := lim
	low.Cur = cur
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("setrlimit: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Errorf("restore rlimit: %v", err)
		}
	})
}

func TestDescriptorReserveRule(t *testing.T) {
	for _, tc := range []struct{ limit, reserve, sessions uint64 }{
		{0, 64, 0},
		{64, 64, 0},
		{256, 64, 192},
		{1024, 102, 922},
		{65536, 6553, 58983},
		{1 << 20, 104857, 943719},
	} {
		if r, s := udpproxy.DescriptorReserve(tc.limit), udpproxy.SessionDescriptors(tc.limit); r != tc.reserve || s != tc.sessions {
			t.Errorf("limit %d: reserve %d, sessions %d; want %d, %d", tc.limit, r, s, tc.reserve, tc.sessions)
		}
	}
}

// UDP sessions leave DescriptorReserve descriptors to the rest of the
// process: past their share, new sessions are refused, counted and logged
// once, while open ones keep working; once sessions end (here unreplied),
// new ones open again. The reserve is checked before Admit: a refused
// session never takes (and so never spends) its client's admission.
func TestDescriptorReserve(t *testing.T) {
	const limit, share = 70, 6 // SessionDescriptors(70) = 70 - 64
	be := pingBackend(t)
	var asked atomic.Int64
	admit := func(netip.Addr, func() bool) func() {
		asked.Add(1)
		return func() {}
	}
	r := newRig(t, rigOpts{admit: admit, tweak: func(c *udpproxy.Config) { c.UnrepliedTimeout = 2 * time.Second }}, be.Addr)
	answered := client(t, "127.0.0.1")
	holders := make([]*net.UDPConn, share+2)
	for i := range holders {
		holders[i] = client(t, "127.0.0.1")
	}
	if n := lbtest.OpenFDs(t); n+share >= limit {
		t.Skipf("%d descriptors open already: the limit of %d leaves too few", n, limit)
	}
	setNOFILE(t, limit)

	r.exchange(answered, []byte("ping 1"))
	for _, c := range holders {
		r.send(c, "hold")
	}
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		n := r.rejected("max_connections")
		return n == 3, fmt.Sprintf("%v refused, want 3 (%d sessions open)", n, r.sessions.Load())
	})
	if n := r.sessions.Load(); n != share {
		t.Errorf("%d sessions open, want %d", n, share)
	}
	if n := asked.Load(); n != share {
		t.Errorf("Admit asked %d times, want %d (the refused sessions must not be asked about)", n, share)
	}
	if reply, _ := r.exchange(answered, []byte("ping 2")); string(reply) != "a|ping 2" {
		t.Errorf("open session while refusing: reply %q", reply)
	}
	// The unanswered sessions end; the answered one and new ones carry on.
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		return r.sessions.Load() == 1, fmt.Sprintf("%d sessions open, want the answered one", r.sessions.Load())
	})
	if reply, _ := r.exchange(holders[len(holders)-1], []byte("ping 3")); string(reply) != "a|ping 3" {
		t.Errorf("new session after the refused ones: reply %q", reply)
	}
	warn := r.logs.FilterMessageSnippet("new sessions are refused").All()
	again := r.logs.FilterMessageSnippet("accepted again").All()
	if len(warn) != 1 || len(again) != 1 {
		t.Fatalf("logged %d refusal and %d recovery lines, want 1 each", len(warn), len(again))
	}
	if got := again[0].ContextMap()["refused"]; got != int64(3) {
		t.Errorf("recovery line says %v refused, want 3", got)
	}
}

// clientSet is a per-client table of a fixed capacity, as pkg/server keeps
// one: an entry per client IP holding sessions. A new client finding it
// full asks the listener to evict a session first.
type clientSet struct {
	mu      sync.Mutex
	max     int
	clients map[netip.Addr]int
	refused int
}

func (cs *clientSet) admit(client netip.Addr, evict func() bool) func() {
	cs.mu.Lock()
	full := cs.clients[client] == 0 && len(cs.clients) >= cs.max
	cs.mu.Unlock()
	if full {
		evict() // calls the evicted session's release, which takes cs.mu
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.clients[client] == 0 && len(cs.clients) >= cs.max {
		cs.refused++
		return nil
	}
	cs.clients[client]++
	var once sync.Once
	return func() {
		once.Do(func() {
			cs.mu.Lock()
			defer cs.mu.Unlock()
			if cs.clients[client]--; cs.clients[client] == 0 {
				delete(cs.clients, client)
			}
		})
	}
}

// A full table of clients does not lock a new client out: the session
// least worth keeping makes room, one whose backend never replied first,
// else the one quiet the longest; the others keep working.
func TestEvictionForNewClient(t *testing.T) {
	be := pingBackend(t)
	cs := &clientSet{max: 3, clients: map[netip.Addr]int{}}
	r := newRig(t, rigOpts{admit: cs.admit, tweak: func(c *udpproxy.Config) {
		c.IdleTimeout = time.Hour
		c.UnrepliedTimeout = time.Hour
	}}, be.Addr)
	c := map[string]*net.UDPConn{}
	for _, name := range []string{"A", "B", "C", "D", "E", "F"} {
		c[name] = client(t, fmt.Sprintf("127.0.0.%d", 1+strings.Index("ABCDEF", name)))
	}
	addr := func(name string) string { return c[name].LocalAddr().(*net.UDPAddr).AddrPort().String() }
	evicted := func(want ...string) {
		t.Helper()
		lbtest.Until(t, 5*time.Second, func() (bool, string) {
			lines := r.ended(udpproxy.EndEvicted)
			var got []string
			for _, f := range lines {
				got = append(got, fmt.Sprint(f["client"]))
			}
			return len(got) == len(want), fmt.Sprintf("evicted %v, want %d", got, len(want))
		})
		for i, f := range r.ended(udpproxy.EndEvicted) {
			if f["client"] != addr(want[i]) {
				t.Errorf("eviction %d: %v, want client %s (%s)", i, f["client"], want[i], addr(want[i]))
			}
		}
	}

	r.exchange(c["A"], []byte("ping A"))      // answered, oldest
	for i, name := range []string{"B", "C"} { // never answered, C more recent
		r.send(c[name], "hold "+name)
		lbtest.Until(t, 5*time.Second, func() (bool, string) {
			return be.Received() == int64(i+2), fmt.Sprintf("backend received %d, want %d", be.Received(), i+2)
		})
	}
	// D finds the table full: B goes, the oldest never answered.
	r.exchange(c["D"], []byte("ping D"))
	evicted("B")
	r.exchange(c["A"], []byte("ping A again")) // A is now more recent than D
	// E: C goes, the last never answered.
	r.exchange(c["E"], []byte("ping E"))
	evicted("B", "C")
	// F: all answered; D is the one quiet the longest.
	r.exchange(c["F"], []byte("ping F"))
	evicted("B", "C", "D")
	if reply, _ := r.exchange(c["A"], []byte("ping A last")); string(reply) != "a|ping A last" {
		t.Errorf("A's session: reply %q", reply)
	}
	if n := r.backends[0].Total(); n != 6 {
		t.Errorf("%d sessions opened, want 6 (A's kept)", n)
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.refused != 0 || len(cs.clients) != 3 {
		t.Errorf("refused %d, table %v; want none refused and 3 clients", cs.refused, cs.clients)
	}
}

// After Drain, datagrams that would open a session are dropped without
// counting a rejection, while an open session carries on both ways; the
// drained channel closes once it has ended.
func TestDrain(t *testing.T) {
	bc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	r := newRig(t, rigOpts{tweak: func(c *udpproxy.Config) { c.Responses = 1 }}, bc.LocalAddr().String())
	open, late := client(t, "127.0.0.1"), client(t, "127.0.0.1")
	read := func() (string, netip.AddrPort) {
		t.Helper()
		buf := make([]byte, 100)
		bc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := bc.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("backend: %v", err)
		}
		return string(buf[:n]), from
	}

	r.send(open, "q1")
	_, session := read()
	drained := r.l.Drain()
	r.send(late, "new")
	r.send(open, "q2") // the open session still forwards
	if got, from := read(); got != "q2" || from != session {
		t.Fatalf("backend got %q from %s, want q2 from the session %s (the new client's datagram must be dropped)", got, from, session)
	}
	select {
	case <-drained:
		t.Fatal("drained with a session open")
	default:
	}
	for _, reply := range []string{"a|q1", "a|q2"} {
		if _, err := bc.WriteToUDPAddrPort([]byte(reply), session); err != nil {
			t.Fatal(err)
		}
		if got, _ := receive(open, 5*time.Second); string(got) != reply {
			t.Fatalf("client got %q, want %q", got, reply)
		}
	}
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("not drained after the last session ended")
	}
	if n := r.backends[0].Total(); n != 1 {
		t.Errorf("%d sessions opened, want 1", n)
	}
	if n := r.rejected("max_connections"); n != 0 {
		t.Errorf("%v rejections counted while draining, want 0", n)
	}
	if ch := r.l.Drain(); ch != drained {
		t.Error("a second Drain returned another channel")
	}
}
