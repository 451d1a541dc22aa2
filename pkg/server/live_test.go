package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/discovery"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// fakeSource is a discovery.Source the test drives: push hands a set (or
// an error) to the server and returns once the server has applied it.
type fakeSource struct {
	name    string
	updates chan fakeUpdate
	running chan struct{} // closed when Run starts
	once    sync.Once
}

type fakeUpdate struct {
	set  []discovery.Entry
	err  error
	done chan struct{}
}

func newFakeSource(name string) *fakeSource {
	return &fakeSource{name: name, updates: make(chan fakeUpdate), running: make(chan struct{})}
}

func (f *fakeSource) Name() string { return f.name }

func (f *fakeSource) Run(ctx context.Context, update func([]discovery.Entry, error)) {
	f.once.Do(func() { close(f.running) })
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-f.updates:
			update(u.set, u.err)
			close(u.done)
		}
	}
}

// push delivers one answer and waits until the server has applied it.
func (f *fakeSource) push(t testing.TB, set []discovery.Entry, err error) {
	t.Helper()
	u := fakeUpdate{set: set, err: err, done: make(chan struct{})}
	select {
	case f.updates <- u:
	case <-time.After(10 * time.Second):
		t.Fatalf("source %s is not running", f.name)
	}
	<-u.done
}

// pushAddrs delivers a set of weight-1 primaries.
func (f *fakeSource) pushAddrs(t testing.TB, addrs ...string) {
	t.Helper()
	f.push(t, entries(addrs...), nil)
}

func entries(addrs ...string) []discovery.Entry {
	set := make([]discovery.Entry, len(addrs))
	for i, a := range addrs {
		set[i] = discovery.Entry{Addr: netip.MustParseAddrPort(a), Weight: 1}
	}
	return set
}

// fakeSources makes the sources of a server: a fakeSource per discover
// entry, by its source name.
type fakeSources struct {
	mu  sync.Mutex
	all map[string]*fakeSource
}

func (fs *fakeSources) newSource(d config.Discover) (discovery.Source, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f := newFakeSource(d.Source())
	fs.all[d.Source()] = f
	return f, nil
}

// get returns the running fake of source name.
func (fs *fakeSources) get(t testing.TB, name string) *fakeSource {
	t.Helper()
	var f *fakeSource
	lbtest.Eventually(t, 5*time.Second, func() bool {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		f = fs.all[name]
		return f != nil
	}, "source %s never made", name)
	<-f.running
	return f
}

// startLive starts a server whose discovery sources are fakes, with its
// log also going to core when not nil.
func startLive(t testing.TB, toml string, core zapcore.Core) (*harness, *fakeSources) {
	t.Helper()
	fs := &fakeSources{all: map[string]*fakeSource{}}
	return startWith(t, toml, core, Options{NewSource: fs.newSource}), fs
}

// discoverTOML is a pool fed by one (fake) file source, without checks.
func discoverTOML(pool, extra string) string {
	return fmt.Sprintf("[pools.%s]\n%s\n[[pools.%s.discover]]\ntype = \"file\"\npath = \"/fake/%s.json\"\n"+
		"[pools.%s.health]\ncheck = \"none\"\n", pool, extra, pool, pool, pool)
}

// servedBy dials listener name and returns the name a lbtest.Named backend
// sends, "" when the connection is closed without a byte (rejected).
func servedBy(t testing.TB, h *harness, listener string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", h.addr(listener), 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	b, _ := lbtest.ReadAllTimeout(t, c, 5*time.Second)
	return string(b)
}

// poolStatus returns the status of pool name.
func poolStatus(h *harness, name string) PoolStatus {
	for _, p := range h.srv.Status().Pools {
		if p.Name == name {
			return p
		}
	}
	return PoolStatus{}
}

// backendOf returns the status of backend addr of pool, and whether it is
// there.
func backendOf(h *harness, pool, addr string) (BackendStatus, bool) {
	for _, b := range poolStatus(h, pool).Backends {
		if b.Address == addr {
			return b, true
		}
	}
	return BackendStatus{}, false
}

// TestSourceChangesTheSet: a pool that starts empty rejects with
// no_backend; a backend its source delivers serves traffic at once; one
// the source drops takes no new connection while an established one goes
// on (drain_timeout 0), shows removing: true, and disappears when that
// connection ends.
func TestSourceChangesTheSet(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Echo)
	b := lbtest.NewTCP(t, lbtest.Named("b"))
	h, fs := startLive(t, listenerTOML("l", "p", "")+discoverTOML("p", ""), nil)
	src := fs.get(t, "file:/fake/p.json")

	if got := servedBy(t, h, "l"); got != "" {
		t.Fatalf("empty pool served %q", got)
	}
	lbtest.Eventually(t, 5*time.Second, func() bool {
		return value(t, h.reg, "lbctl_connections_rejected_total", "listener", "l", "reason", "no_backend") == 1
	}, "no no_backend rejection counted")

	src.pushAddrs(t, a.Addr)
	c := h.dial("l")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through a: %q %v", buf, err)
	}
	if st, ok := backendOf(h, "p", a.Addr); !ok || st.Source != "file:/fake/p.json" || st.Removing {
		t.Fatalf("a in status: %+v %v", st, ok)
	}

	src.pushAddrs(t, b.Addr)
	for i := range 5 {
		if got := servedBy(t, h, "l"); got != "b" {
			t.Fatalf("connection %d after a left: served %q, want b", i, got)
		}
	}
	st, ok := backendOf(h, "p", a.Addr)
	if !ok || !st.Removing || st.Active != 1 {
		t.Fatalf("a after its removal: %+v (present %v), want removing with 1 active", st, ok)
	}
	// The established connection goes on.
	if _, err := c.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("established connection after the removal: %q %v", buf, err)
	}
	c.Close()
	lbtest.Eventually(t, 5*time.Second, func() bool {
		_, ok := backendOf(h, "p", a.Addr)
		return !ok
	}, "a still in status after its last connection ended")
	if s := seriesWith(t, h.reg, "backend", a.Addr); len(s) != 0 {
		t.Errorf("series of the removed backend remain: %v", s)
	}
}

// TestDrainTimeoutResets: an established connection to a removed backend
// is reset at the pool's drain_timeout; the client sees ECONNRESET.
func TestDrainTimeoutResets(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Echo)
	b := lbtest.NewTCP(t, lbtest.Named("b"))
	h, fs := startLive(t, listenerTOML("l", "p", "")+discoverTOML("p", `drain_timeout = "2s"`), nil)
	src := fs.get(t, "file:/fake/p.json")
	src.pushAddrs(t, a.Addr)
	c := h.dial("l")
	c.SetDeadline(time.Now().Add(30 * time.Second))
	echoOnce(t, c, "ping")

	removed := time.Now()
	src.pushAddrs(t, b.Addr)
	if st, ok := backendOf(h, "p", a.Addr); !ok || !st.Removing {
		t.Fatalf("a after its removal: %+v %v", st, ok)
	}
	echoOnce(t, c, "still")
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read on the drained connection: %v, want ECONNRESET", err)
	}
	if d := time.Since(removed); d < 2*time.Second {
		t.Fatalf("reset %v after the removal, before drain_timeout 2s", d)
	}
	lbtest.Eventually(t, 5*time.Second, func() bool {
		_, ok := backendOf(h, "p", a.Addr)
		return !ok
	}, "a still in status after its drain")
}

func echoOnce(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo of %q: %q %v", msg, buf, err)
	}
}

// TestSourceFailureKeepsTheSet: a failing source keeps its last good set,
// moves the failure metric, logs once per episode (warn), and info when it
// answers again.
func TestSourceFailureKeepsTheSet(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	core, logs := observer.New(zap.InfoLevel)
	h, fs := startLive(t, listenerTOML("l", "p", "")+discoverTOML("p", ""), core)
	src := fs.get(t, "file:/fake/p.json")
	src.pushAddrs(t, a.Addr)
	for range 3 {
		src.push(t, nil, errors.New("file unreadable"))
	}
	if got := servedBy(t, h, "l"); got != "a" {
		t.Fatalf("served %q after failures, want a", got)
	}
	lv := []string{"pool", "p", "source", "file:/fake/p.json"}
	if got := value(t, h.reg, "lbctl_discovery_refreshes_total", append(lv, "result", "failure")...); got != 3 {
		t.Errorf("failures = %v, want 3", got)
	}
	if got := value(t, h.reg, "lbctl_discovery_refreshes_total", append(lv, "result", "success")...); got != 1 {
		t.Errorf("successes = %v, want 1", got)
	}
	if got := value(t, h.reg, "lbctl_discovery_backends", lv...); got != 1 {
		t.Errorf("backends = %v, want 1", got)
	}
	if got := value(t, h.reg, "lbctl_discovery_last_success_timestamp_seconds", lv...); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last success = %v, want about now", got)
	}
	if n := logs.FilterMessageSnippet("discovery source failed").Len(); n != 1 {
		t.Errorf("%d failure lines for one episode, want 1", n)
	}
	src.pushAddrs(t, a.Addr)
	if n := logs.FilterMessageSnippet("discovery source answers again").Len(); n != 1 {
		t.Errorf("%d recovery lines, want 1", n)
	}
}

// TestChurnKeepsState: 1,000 refreshes that shuffle the order of the same
// set leave every backend's state untouched (admin drain, weight override,
// counters, passive ejection) and put no new generation in service.
func TestChurnKeepsState(t *testing.T) {
	live := lbtest.NewTCP(t, lbtest.Named("live"))
	dead := lbtest.ClosedPort(t)
	set := []string{live.Addr, dead}
	for i := range 18 {
		set = append(set, fmt.Sprintf("127.0.0.%d:%d", 10+i, 1000+i))
	}
	// Passive checks: one failed connect ejects for an hour. Only live and
	// dead are eligible at first (the others are drained below).
	h, fs := startLive(t, listenerTOML("l", "p", "")+discoverTOML("p", "max_fails = 1\nfail_timeout = \"1h\"\nretries = 1"), nil)
	src := fs.get(t, "file:/fake/p.json")
	src.pushAddrs(t, set...)
	for _, a := range set[2:] {
		if _, err := h.srv.SetBackendAdmin("p", a, 1); err != nil { // draining
			t.Fatal(err)
		}
	}
	w := 7
	if _, err := h.srv.SetWeightOverride("p", set[2], &w); err != nil {
		t.Fatal(err)
	}
	// Until dead is ejected, a connection may be tried there first: it
	// fails over to live (retries = 1).
	for range 4 {
		if got := servedBy(t, h, "l"); got != "live" {
			t.Fatalf("served %q, want live", got)
		}
	}
	lbtest.Eventually(t, 5*time.Second, func() bool {
		st, _ := backendOf(h, "p", dead)
		return st.Health == "down"
	}, "dead not ejected")
	lbtest.Eventually(t, 5*time.Second, func() bool {
		st, _ := backendOf(h, "p", live.Addr)
		return st.Active == 0
	}, "connections to live still open")
	before := poolStatus(h, "p").Backends
	gen := h.srv.refreshes.Load()

	shuffled := entries(set...)
	for i := range 1000 {
		// A different order each time (a rotation and a swap).
		k := i % len(shuffled)
		shuffled = append(shuffled[k:], shuffled[:k]...)
		shuffled[0], shuffled[len(shuffled)-1] = shuffled[len(shuffled)-1], shuffled[0]
		src.push(t, append([]discovery.Entry(nil), shuffled...), nil)
	}
	if got := h.srv.refreshes.Load(); got != gen {
		t.Fatalf("%d new generations for shuffles of the same set, want 0", got-gen)
	}
	after := poolStatus(h, "p").Backends
	if fmt.Sprint(statusByAddr(after)) != fmt.Sprint(statusByAddr(before)) {
		t.Fatalf("state changed by the churn:\nbefore %+v\nafter  %+v", statusByAddr(before), statusByAddr(after))
	}
	st := map[string]BackendStatus{}
	for _, b := range after {
		st[b.Address] = b
	}
	if st[dead].Health != "down" || st[live.Addr].Total != 4 || st[set[2]].Admin != "draining" ||
		st[set[2]].Weight != 7 || st[set[2]].WeightOverride == nil {
		t.Fatalf("state after the churn: %+v", st)
	}
}

// statusByAddr keys backend statuses by address, for comparison: the
// pointers are replaced by their values.
func statusByAddr(bs []BackendStatus) map[string]string {
	out := map[string]string{}
	for _, b := range bs {
		ov, lc := "nil", "nil"
		if b.WeightOverride != nil {
			ov = fmt.Sprint(*b.WeightOverride)
		}
		if b.LastChange != nil {
			lc = b.LastChange.String()
		}
		b.WeightOverride, b.LastChange, b.LastCheck = nil, nil, nil
		out[b.Address] = fmt.Sprintf("%+v override=%s last_change=%s", b, ov, lc)
	}
	return out
}

// TestRefreshUnderLoad: while the source replaces the whole set, back and
// forth, established connections keep their backend and every new
// connection is served: none that had started fails.
func TestRefreshUnderLoad(t *testing.T) {
	var sets [2][]string
	for i := range 4 {
		sets[i%2] = append(sets[i%2], lbtest.NewTCP(t, lbtest.Echo).Addr)
	}
	h, fs := startLive(t, listenerTOML("l", "p", "")+discoverTOML("p", ""), nil)
	src := fs.get(t, "file:/fake/p.json")
	src.pushAddrs(t, sets[0]...)

	const workers, rounds = 4, 30
	msg := []byte("0123456789abcdef")
	errs := make(chan error, workers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, len(msg))
			for n := 0; ; n++ {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				c, err := net.DialTimeout("tcp", h.addr("l"), 5*time.Second)
				if err != nil {
					errs <- fmt.Errorf("worker %d dial %d: %w", w, n, err)
					return
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				// Several exchanges per connection, across refreshes.
				for range 5 {
					if _, err := c.Write(msg); err == nil {
						_, err = io.ReadFull(c, buf)
					}
					if err != nil {
						c.Close()
						errs <- fmt.Errorf("worker %d connection %d: %w", w, n, err)
						return
					}
				}
				c.Close()
			}
		}()
	}
	for i := range rounds {
		src.pushAddrs(t, sets[(i+1)%2]...)
		time.Sleep(20 * time.Millisecond) // let connections span refreshes
	}
	close(stop)
	wg.Wait()
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []string{"no_backend", "backend_unavailable"} {
		if got := value(t, h.reg, "lbctl_connections_rejected_total", "listener", "l", "reason", r); got != 0 {
			t.Errorf("%v connections rejected for %s", got, r)
		}
	}
	if g := h.srv.refreshes.Load(); g < rounds {
		t.Errorf("%d generations for %d changes", g, rounds)
	}
}

// TestKillBackend: KillBackend resets every established connection of the
// backend (the client sees ECONNRESET) and leaves the others alone.
func TestKillBackend(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Echo)
	b := lbtest.NewTCP(t, lbtest.Echo)
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", a.Addr, b.Addr)+noHealth)
	var conns []*net.TCPConn
	for i := range 4 { // round-robin: two on each
		c := h.dial("l")
		c.SetDeadline(time.Now().Add(10 * time.Second))
		echoOnce(t, c, fmt.Sprint("hello", i))
		conns = append(conns, c)
	}
	lbtest.Eventually(t, 5*time.Second, func() bool {
		st, _ := backendOf(h, "p", a.Addr)
		return st.Active == 2
	}, "two connections on a")
	n, err := h.srv.KillBackend("p", a.Addr)
	if err != nil || n != 2 {
		t.Fatalf("KillBackend = %d, %v; want 2", n, err)
	}
	reset, alive := 0, 0
	for _, c := range conns {
		_, err := c.Write([]byte("x"))
		if err == nil {
			if _, err = io.ReadFull(c, make([]byte, 1)); err == nil {
				alive++
				continue
			}
		}
		if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
			reset++
		} else {
			t.Errorf("unexpected error: %v", err)
		}
	}
	if reset != 2 || alive != 2 {
		t.Fatalf("%d reset, %d alive; want 2 and 2", reset, alive)
	}
	if _, err := h.srv.KillBackend("p", "127.0.0.1:1"); !errors.Is(err, ErrUnknownBackend) {
		t.Errorf("kill of an unknown backend: %v", err)
	}
	if _, err := h.srv.KillBackend("nope", a.Addr); !errors.Is(err, ErrUnknownPool) {
		t.Errorf("kill in an unknown pool: %v", err)
	}
}

// TestAPIBackends: AddBackend, SetWeightOverride and RemoveBackend
// through the Server methods, with their errors.
func TestAPIBackends(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	b := lbtest.NewTCP(t, lbtest.Named("b"))
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", `drain_timeout = "1s"`, a.Addr)+noHealth)

	for _, tc := range []struct {
		spec BackendSpec
		want string
	}{
		{BackendSpec{Address: "localhost:80", Weight: 1}, "address"},
		{BackendSpec{Address: "127.0.0.1", Weight: 1}, "address"},
		{BackendSpec{Address: "127.0.0.1:0", Weight: 1}, "address"},
		{BackendSpec{Address: b.Addr, Weight: -1}, "weight"},
		{BackendSpec{Address: b.Addr, Weight: 1_000_001}, "weight"},
	} {
		var bad *BadRequestError
		if _, err := h.srv.AddBackend("p", tc.spec); !errors.As(err, &bad) || bad.Field != tc.want {
			t.Errorf("AddBackend(%+v) = %v, want a bad %s", tc.spec, err, tc.want)
		}
	}
	if _, err := h.srv.AddBackend("nope", BackendSpec{Address: b.Addr, Weight: 1}); !errors.Is(err, ErrUnknownPool) {
		t.Errorf("add to an unknown pool: %v", err)
	}
	if _, err := h.srv.AddBackend("p", BackendSpec{Address: a.Addr, Weight: 1}); !errors.Is(err, ErrBackendExists) {
		t.Errorf("add of a config backend: %v", err)
	}
	st, err := h.srv.AddBackend("p", BackendSpec{Address: b.Addr, Weight: 3})
	if err != nil || st.Source != "api" || st.Weight != 3 || st.Address != b.Addr {
		t.Fatalf("AddBackend = %+v, %v", st, err)
	}
	if _, err := h.srv.AddBackend("p", BackendSpec{Address: b.Addr, Weight: 1}); !errors.Is(err, ErrBackendExists) {
		t.Errorf("second add: %v", err)
	}
	got := map[string]int{}
	for range 8 {
		got[servedBy(t, h, "l")]++
	}
	if got["a"] != 2 || got["b"] != 6 {
		t.Fatalf("served %v, want a:2 b:6 (weights 1 and 3)", got)
	}

	// Weight override: b to 0 takes nothing; reset gives it back its 3.
	zero := 0
	if st, err := h.srv.SetWeightOverride("p", b.Addr, &zero); err != nil || st.Weight != 0 || st.WeightOverride == nil || *st.WeightOverride != 0 {
		t.Fatalf("SetWeightOverride = %+v, %v", st, err)
	}
	for range 4 {
		if got := servedBy(t, h, "l"); got != "a" {
			t.Fatalf("served %q with b's weight 0", got)
		}
	}
	big := 1_000_001
	var bad *BadRequestError
	if _, err := h.srv.SetWeightOverride("p", b.Addr, &big); !errors.As(err, &bad) {
		t.Errorf("override out of range: %v", err)
	}
	if st, err := h.srv.SetWeightOverride("p", b.Addr, nil); err != nil || st.Weight != 3 || st.WeightOverride != nil {
		t.Fatalf("reset override = %+v, %v", st, err)
	}

	if _, err := h.srv.RemoveBackend("p", a.Addr); !errors.Is(err, ErrNotAPIBackend) {
		t.Errorf("remove of a config backend: %v", err)
	}
	if _, err := h.srv.RemoveBackend("p", "127.0.0.1:1"); !errors.Is(err, ErrUnknownBackend) {
		t.Errorf("remove of an unknown backend: %v", err)
	}
	if _, err := h.srv.RemoveBackend("p", b.Addr); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if got := servedBy(t, h, "l"); got != "a" {
			t.Fatalf("served %q after b's removal", got)
		}
	}
	lbtest.Eventually(t, 5*time.Second, func() bool {
		_, ok := backendOf(h, "p", b.Addr)
		return !ok
	}, "b still in status")
}

// TestStatusLastCheckAndChange: status shows the last active check's
// outcome and when health last changed.
func TestStatusLastCheckAndChange(t *testing.T) {
	up := lbtest.NewTCP(t, lbtest.Echo)
	down := lbtest.ClosedPort(t)
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p",
		"[pools.p.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"5s\"\nfall = 1\n", up.Addr, down))
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		u, _ := backendOf(h, "p", up.Addr)
		d, _ := backendOf(h, "p", down)
		return u.LastCheck != nil && d.LastCheck != nil && d.Health == "down",
			fmt.Sprintf("up %+v, down %+v", u.LastCheck, d.LastCheck)
	})
	u, _ := backendOf(h, "p", up.Addr)
	d, _ := backendOf(h, "p", down)
	if u.LastCheck.Result != "success" || u.LastChange != nil || time.Since(u.LastCheck.At) > time.Minute {
		t.Errorf("up: last_check %+v, last_change %v", u.LastCheck, u.LastChange)
	}
	// duration_seconds is the probe's own: more than nothing, within its timeout.
	for _, c := range []*CheckStatus{u.LastCheck, d.LastCheck} {
		if c.DurationSeconds <= 0 || c.DurationSeconds > 5 {
			t.Errorf("last_check %+v: duration_seconds not in (0, 5]", c)
		}
	}
	if d.LastCheck.Result != "failure" || d.LastCheck.Reason == "" || d.LastChange == nil {
		t.Errorf("down: last_check %+v, last_change %v", d.LastCheck, d.LastChange)
	}
}

// TestHostNameBackendIdentity: a config backend given by host name shows
// its address as configured; the run-time calls find it by that name or
// by its IP:port, and an API add of that IP:port is a duplicate.
func TestHostNameBackendIdentity(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Named("a"))
	_, port, _ := net.SplitHostPort(be.Addr)
	name := "localhost:" + port
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", name)+noHealth)
	if _, ok := backendOf(h, "p", name); !ok {
		t.Fatalf("status has no %s: %+v", name, poolStatus(h, "p"))
	}
	if st, err := h.srv.SetBackendAdmin("p", be.Addr, 1); err != nil || st.Address != name || st.Admin != "draining" {
		t.Fatalf("SetBackendAdmin by IP:port = %+v, %v", st, err)
	}
	if st, err := h.srv.SetBackendAdmin("p", name, 0); err != nil || st.Admin != "enabled" {
		t.Fatalf("SetBackendAdmin by name = %+v, %v", st, err)
	}
	if _, err := h.srv.AddBackend("p", BackendSpec{Address: be.Addr, Weight: 1}); !errors.Is(err, ErrBackendExists) {
		t.Fatalf("AddBackend of its IP:port: %v", err)
	}
}

// TestReloadKeepsSources: a reload that keeps a discover entry keeps its
// source running and its last good set; one that drops it stops it and
// deletes its series.
func TestReloadKeepsSources(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	h, fs := startLive(t, listenerTOML("l", "p", "")+discoverTOML("p", ""), nil)
	src := fs.get(t, "file:/fake/p.json")
	src.pushAddrs(t, a.Addr)
	reloadTOML := func(toml string) {
		t.Helper()
		cfg, err := config.Parse("test.toml", []byte(toml))
		if err != nil {
			t.Fatal(err)
		}
		if err := h.srv.Reload(cfg); err != nil {
			t.Fatal(err)
		}
	}
	reloadTOML(listenerTOML("l", "p", "") + discoverTOML("p", `connect_timeout = "3s"`))
	if got := servedBy(t, h, "l"); got != "a" {
		t.Fatalf("served %q after a reload that kept the source", got)
	}
	fs.mu.Lock()
	same := fs.all["file:/fake/p.json"] == src
	fs.mu.Unlock()
	if !same {
		t.Fatal("the reload made the source anew")
	}
	src.pushAddrs(t, a.Addr) // still running
	if len(seriesWith(t, h.reg, "source", "file:/fake/p.json")) == 0 {
		t.Fatal("no discovery series")
	}
	// Drop the source: its set goes (a drains away), and its series.
	reloadTOML(listenerTOML("l", "p", "") + poolTOML("p", "", lbtest.ClosedPort(t)) + noHealth)
	if s := seriesWith(t, h.reg, "source", "file:/fake/p.json"); len(s) != 0 {
		t.Errorf("series of the removed source remain: %v", s)
	}
	lbtest.Eventually(t, 5*time.Second, func() bool {
		_, ok := backendOf(h, "p", a.Addr)
		return !ok
	}, "a still in the pool after its source went away")
}

// TestUDPBackendRemovalAndKill: on a UDP pool, KillBackend ends a
// backend's sessions, and a backend removed by its source keeps its open
// session until drain_timeout, then the session ends and the backend
// leaves status.
func TestUDPBackendRemovalAndKill(t *testing.T) {
	a := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
	b := lbtest.NewUDP(t, "b", lbtest.UDPTagged("b"))
	h, fs := startLive(t, udpListenerTOML("u", "p", `idle_timeout = "1h"`)+discoverTOML("p", `drain_timeout = "2s"`), nil)
	src := fs.get(t, "file:/fake/p.json")
	src.pushAddrs(t, a.Addr)
	c := udpClient(t)
	if got := udpExchange(c, h.udpAddr("u"), []byte("x"), 5*time.Second); string(got) != "a|x" {
		t.Fatalf("reply %q, want a|x", got)
	}
	n, err := h.srv.KillBackend("p", a.Addr)
	if err != nil || n != 1 {
		t.Fatalf("KillBackend = %d, %v; want 1", n, err)
	}
	lbtest.Eventually(t, 5*time.Second, func() bool {
		st, _ := backendOf(h, "p", a.Addr)
		return st.Active == 0
	}, "a's session not ended by the kill")
	// The client's next datagram opens a session again.
	if got := udpExchange(c, h.udpAddr("u"), []byte("y"), 5*time.Second); string(got) != "a|y" {
		t.Fatalf("reply %q after the kill, want a|y", got)
	}
	src.pushAddrs(t, b.Addr)
	st, ok := backendOf(h, "p", a.Addr)
	if !ok || !st.Removing || st.Active != 1 {
		t.Fatalf("a after its removal: %+v %v", st, ok)
	}
	if got := udpExchange(c, h.udpAddr("u"), []byte("z"), 5*time.Second); string(got) != "a|z" {
		t.Fatalf("open session after a's removal: reply %q, want a|z", got)
	}
	lbtest.Eventually(t, 10*time.Second, func() bool {
		_, ok := backendOf(h, "p", a.Addr)
		return !ok
	}, "a still in status after drain_timeout")
	if got := udpExchange(c, h.udpAddr("u"), []byte("w"), 5*time.Second); string(got) != "b|w" {
		t.Fatalf("reply %q after a's drain, want b|w", got)
	}
}

// TestNewAddressSlowStart: an address a source adds to a pool in service
// enters through slow_start; the backends already there keep full weight.
func TestNewAddressSlowStart(t *testing.T) {
	h, fs := startLive(t, listenerTOML("l", "p", "")+discoverTOML("p", `slow_start = "1h"`)+
		"[[pools.p.backends]]\naddress = \"127.0.0.1:7101\"\n", nil)
	src := fs.get(t, "file:/fake/p.json")
	src.pushAddrs(t, "127.0.0.1:7101", "127.0.0.1:7102")
	scale := func(addr string) int {
		h.srv.mu.Lock()
		defer h.srv.mu.Unlock()
		return h.srv.pools["p"].byAddr[netip.MustParseAddrPort(addr)].b.WeightScale()
	}
	if got := scale("127.0.0.1:7102"); got >= 1000 {
		t.Errorf("new address at scale %d, want a slow start below 1000", got)
	}
	if got := scale("127.0.0.1:7101"); got != 1000 {
		t.Errorf("address already there at scale %d, want 1000", got)
	}
}
