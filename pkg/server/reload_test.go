package server

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
)

// tagEcho is a backend that first sends its tag and a newline, so the
// client knows who serves it, then echoes everything.
func tagEcho(tag string) lbtest.Handler {
	return func(c *net.TCPConn) {
		if _, err := c.Write([]byte(tag + "\n")); err != nil {
			return
		}
		io.Copy(c, c)
		c.CloseWrite()
		io.Copy(io.Discard, c)
	}
}

// taggedRoundTrip opens a connection to addr, reads the backend's tag,
// sends payload, half-closes and checks that exactly payload comes back.
// It runs in goroutines, so it returns errors instead of failing the test.
func taggedRoundTrip(addr string, payload []byte) (tag string, err error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	tag, err = br.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read tag: %w", err)
	}
	tag = strings.TrimSuffix(tag, "\n")
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(br)
	if err := <-werr; err != nil {
		return tag, fmt.Errorf("write: %w", err)
	}
	if err != nil {
		return tag, fmt.Errorf("read back: %w", err)
	}
	if !bytes.Equal(got, payload) {
		return tag, fmt.Errorf("echo of %d bytes returned %d different bytes", len(payload), len(got))
	}
	return tag, nil
}

// longTransfer is a connection that stays open across reloads: after each
// signal on step it sends a chunk and reads its echo; when step is closed
// it half-closes and expects a clean EOF. Both directions are SHA-256
// checked at the end.
type longTransfer struct {
	name string
	tag  string // the backend serving it
	c    *net.TCPConn
	br   *bufio.Reader
	step chan struct{}
	once sync.Once
	done chan error
	n    int64 // bytes echoed back
}

// finish ends the transfer: a clean half-close after the last chunk.
func (l *longTransfer) finish() { l.once.Do(func() { close(l.step) }) }

func startLong(name, addr string, seed uint64) (*longTransfer, error) {
	nc, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	l := &longTransfer{name: name, c: nc.(*net.TCPConn), step: make(chan struct{}, 64), done: make(chan error, 1)}
	l.br = bufio.NewReader(l.c)
	l.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	tag, err := l.br.ReadString('\n')
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("read tag: %w", err)
	}
	l.tag = strings.TrimSuffix(tag, "\n")
	go func() { l.done <- l.run(seed) }()
	return l, nil
}

func (l *longTransfer) run(seed uint64) error {
	defer l.c.Close()
	rng := rand.New(rand.NewPCG(seed, seed))
	sent, recv := sha256.New(), sha256.New()
	chunk := make([]byte, 64<<10)
	back := make([]byte, len(chunk))
	for range l.step {
		for i := range chunk {
			chunk[i] = byte(rng.Uint32())
		}
		sent.Write(chunk)
		werr := make(chan error, 1)
		go func() {
			_, err := l.c.Write(chunk)
			werr <- err
		}()
		l.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadFull(l.br, back)
		if werr := <-werr; werr != nil {
			return fmt.Errorf("%s: write after %d bytes: %w", l.name, l.n, werr)
		}
		if err != nil {
			return fmt.Errorf("%s: read after %d bytes: %w", l.name, l.n, err)
		}
		recv.Write(back)
		l.n += int64(len(back))
	}
	if err := l.c.CloseWrite(); err != nil {
		return fmt.Errorf("%s: close write: %w", l.name, err)
	}
	l.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := io.ReadAll(l.br)
	if err != nil {
		return fmt.Errorf("%s: read to EOF: %w", l.name, err)
	}
	if len(rest) != 0 {
		return fmt.Errorf("%s: %d unexpected bytes at the end", l.name, len(rest))
	}
	if !bytes.Equal(sent.Sum(nil), recv.Sum(nil)) {
		return fmt.Errorf("%s: SHA-256 of the %d bytes received differs from what was sent", l.name, l.n)
	}
	return nil
}

// generation is one configuration of the reload-under-load test.
type generation struct {
	backends  []string // tag=weight of pool p, served by listener main
	algorithm string
	extra     bool // listener extra (pool x: backend e) present
}

func (g generation) toml(addrs map[string]string) string {
	var bs []string
	for _, b := range g.backends {
		tag, w, _ := strings.Cut(b, "=")
		bs = append(bs, addrs[tag]+"="+w)
	}
	s := listenerTOML("main", "p", "") +
		poolTOML("p", fmt.Sprintf("algorithm = %q", g.algorithm), bs...) + "[pools.p.health]\ncheck = \"none\"\n"
	if g.extra {
		s += listenerTOML("extra", "x", "") + poolTOML("x", "", addrs["e"]) + "[pools.x.health]\ncheck = \"none\"\n"
	}
	return s
}

// eligible is the set of tags that may take new connections.
func (g generation) eligible() map[string]bool {
	out := map[string]bool{}
	for _, b := range g.backends {
		if tag, w, _ := strings.Cut(b, "="); w != "0" {
			out[tag] = true
		}
	}
	return out
}

// generations are the configurations reloaded in turn: backends added,
// removed, weights changed (0 included), the algorithm changed, and the
// listener extra (with its pool) added and removed.
func generations(n int) []generation {
	sets := [][]string{
		{"a=1", "b=1"},
		{"a=1", "b=1", "c=1"},
		{"b=2", "c=1"},
		{"b=2", "c=1", "d=3"},
		{"c=1", "d=3", "e=1"},
		{"c=0", "d=3", "e=1"},
		{"a=1", "d=1", "e=2"},
	}
	algs := []string{"round-robin", "least-connections", "round-robin", "ip-hash"}
	out := make([]generation, n+1)
	for i := range out {
		out[i] = generation{backends: sets[i%len(sets)], algorithm: algs[i%len(algs)], extra: i%4 < 2}
	}
	return out
}

// op is one short connection of the client loop.
type op struct {
	start, end time.Time
	tag        string
	err        error
}

// TestReloadUnderLoad reloads the configuration 24 times (and fails two
// more reloads) while clients keep opening connections and long transfers
// run across every reload. No connection to the listener that stays may
// fail, every long transfer must arrive intact, and no connection that
// started after a reload may reach a backend that reload made ineligible.
func TestReloadUnderLoad(t *testing.T) {
	const (
		reloads = 24
		workers = 4
		maxOps  = 20000
	)
	tags := []string{"a", "b", "c", "d", "e"}
	addrs := map[string]string{}
	for _, tag := range tags {
		addrs[tag] = lbtest.NewTCP(t, tagEcho(tag)).Addr
	}
	gens := generations(reloads)
	h := startServer(t, gens[0].toml(addrs))
	mainAddr := h.addr("main")

	// Long transfers, started before the load: three through main (on a
	// and b, both removed later) and one through extra (removed later).
	var longs []*longTransfer
	for i, l := range []string{"main", "main", "main", "extra"} {
		lt, err := startLong(fmt.Sprintf("long%d via %s", i, l), h.addr(l), uint64(i+1))
		if err != nil {
			t.Fatalf("long transfer via %s: %v", l, err)
		}
		longs = append(longs, lt)
	}
	t.Cleanup(func() {
		for _, l := range longs {
			l.c.Close()
			l.finish()
		}
	})
	onRemoved := map[string]bool{}
	for _, l := range longs[:3] {
		onRemoved[l.tag] = true
	}
	if !onRemoved["a"] || !onRemoved["b"] {
		t.Fatalf("long transfers through main are on %v, want a and b", onRemoved)
	}

	// The client loop.
	var (
		mu    sync.Mutex
		ops   []op
		count atomic.Int64
		stop  = make(chan struct{})
		wg    sync.WaitGroup
	)
	deadline := time.Now().Add(60 * time.Second)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for count.Load() < maxOps && time.Now().Before(deadline) {
				select {
				case <-stop:
					return
				default:
				}
				payload := make([]byte, 1+rng.IntN(8<<10))
				for i := range payload {
					payload[i] = byte(rng.Uint32())
				}
				start := time.Now()
				tag, err := taggedRoundTrip(mainAddr, payload)
				mu.Lock()
				ops = append(ops, op{start: start, end: time.Now(), tag: tag, err: err})
				mu.Unlock()
				count.Add(1)
			}
		}(w)
	}
	stopClients := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	t.Cleanup(stopClients)

	// Busy port for the reloads that must fail.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	reloadStart := make([]time.Time, reloads+1)
	reloadEnd := make([]time.Time, reloads+1)
	failures := 0
	for i := 1; i <= reloads; i++ {
		// Let traffic flow between reloads.
		before := count.Load()
		lbtest.Eventually(t, 10*time.Second, func() bool { return count.Load() >= before+3*workers }, "no traffic before reload %d", i)

		if i%8 == 0 {
			// A reload that cannot bind its new listener changes nothing.
			bad := gens[i].toml(addrs) + fmt.Sprintf("[listeners.busy]\nbind = %q\npool = \"p\"\n", busy.Addr())
			cfg, err := config.Parse("bad.toml", []byte(bad))
			if err != nil {
				t.Fatal(err)
			}
			if err := h.srv.Reload(cfg); err == nil || !strings.Contains(err.Error(), "address already in use") {
				t.Fatalf("reload onto a busy port: %v", err)
			}
			failures++
			if _, ok := h.srv.Listeners()["busy"]; ok {
				t.Fatal("a failed reload left its listener")
			}
		}

		cfg, err := config.Parse("test.toml", []byte(gens[i].toml(addrs)))
		if err != nil {
			t.Fatal(err)
		}
		prevExtra, hadExtra := h.srv.Listeners()["extra"]
		reloadStart[i] = time.Now()
		if err := h.srv.Reload(cfg); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		reloadEnd[i] = time.Now()
		for _, l := range longs {
			l.step <- struct{}{}
		}

		// The listener that stays keeps its socket.
		if got := h.addr("main"); got != mainAddr {
			t.Fatalf("reload %d moved listener main from %s to %s", i, mainAddr, got)
		}
		// extra: bound when added, closed when removed.
		switch extra, ok := h.srv.Listeners()["extra"]; {
		case ok != gens[i].extra:
			t.Fatalf("reload %d: listener extra present %v, want %v", i, ok, gens[i].extra)
		case ok && !hadExtra:
			if tag, err := taggedRoundTrip(extra.String(), []byte("hi")); err != nil || tag != "e" {
				t.Fatalf("through the added listener extra: %q %v", tag, err)
			}
		case !ok && hadExtra:
			if c, err := net.DialTimeout("tcp", prevExtra.String(), 2*time.Second); err == nil {
				c.Close()
				t.Fatalf("reload %d: removed listener extra still accepts", i)
			}
		}
	}
	// Some traffic on the last configuration, then stop.
	last := count.Load()
	lbtest.Eventually(t, 10*time.Second, func() bool { return count.Load() >= last+3 }, "no traffic after the last reload")
	stopClients()
	for _, l := range longs {
		l.finish()
	}
	for _, l := range longs {
		select {
		case err := <-l.done:
			if err != nil {
				t.Errorf("long transfer on backend %s: %v", l.tag, err)
			} else if l.n != reloads*64<<10 {
				t.Errorf("%s moved %d bytes, want %d", l.name, l.n, reloads*64<<10)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%s did not finish", l.name)
		}
	}

	// Zero failed connections on main.
	var failed []string
	for _, o := range ops {
		if o.err != nil {
			failed = append(failed, o.err.Error())
		}
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d connections through main failed, first: %s", len(failed), len(ops), failed[0])
	}
	if len(ops) < reloads*3 {
		t.Fatalf("only %d connections during the reloads", len(ops))
	}

	// A connection is served by a backend eligible in a generation in
	// force while it was being set up: from the last reload that returned
	// before it started to the last one that began before it ended (the
	// listener may accept it after a later reload swapped the pool in).
	// So a backend that a reload removed, drained or set to weight 0 gets
	// no connection started after that reload.
	single := 0
	served := map[string]int{}
	for _, o := range ops {
		served[o.tag]++
		first, last := 0, 0
		for i := 1; i <= reloads; i++ {
			if o.start.After(reloadEnd[i]) {
				first = i
			}
			if reloadStart[i].Before(o.end) {
				last = i
			}
		}
		if first == last {
			single++
		}
		ok := false
		for g := first; g <= last; g++ {
			ok = ok || gens[g].eligible()[o.tag]
		}
		if !ok {
			t.Errorf("a connection set up under generations %d..%d (%v .. %v) was served by %s",
				first, last, gens[first].backends, gens[last].backends, o.tag)
		}
	}
	if single < len(ops)/4 {
		t.Errorf("only %d of %d connections ran under a single generation", single, len(ops))
	}
	t.Logf("%d connections, %d within one generation, served by %v", len(ops), single, served)

	if got := value(t, h.reg, "lbctl_config_reloads_total", "result", "success"); got != reloads {
		t.Errorf("reloads success = %v, want %d", got, reloads)
	}
	if got := value(t, h.reg, "lbctl_config_reloads_total", "result", "failure"); got != float64(failures) {
		t.Errorf("reloads failure = %v, want %d", got, failures)
	}
	// Nothing rejected on main.
	for _, r := range []string{"max_connections", "no_backend", "backend_unavailable"} {
		if got := value(t, h.reg, "lbctl_connections_rejected_total", "listener", "main", "reason", r); got != 0 {
			t.Errorf("main rejected %v connections for %s", got, r)
		}
	}
	// The status shows the last generation (and backends it removed, while
	// they drain).
	var got []string
	for _, p := range h.srv.Status().Pools {
		if p.Name == "p" {
			for _, b := range p.Backends {
				if b.Removing {
					continue
				}
				got = append(got, fmt.Sprintf("%s=%d", b.Address, b.Weight))
			}
		}
	}
	var want []string
	for _, b := range gens[reloads].backends {
		tag, w, _ := strings.Cut(b, "=")
		want = append(want, addrs[tag]+"="+w)
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("status backends %v, want %v", got, want)
	}
}

// TestReloadFailureKeepsOld: a configuration whose new listener cannot bind
// is refused as a whole; the old one keeps serving unchanged.
func TestReloadFailureKeepsOld(t *testing.T) {
	a := lbtest.NewTCP(t, tagEcho("a"))
	b := lbtest.NewTCP(t, tagEcho("b"))
	h := startServer(t, listenerTOML("main", "p", "")+poolTOML("p", "", a.Addr)+noHealth)
	old := h.srv.Config()
	mainAddr := h.addr("main")

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	bad := listenerTOML("main", "p", "max_connections = 1") + poolTOML("p", "", b.Addr) + noHealth +
		fmt.Sprintf("[listeners.new]\nbind = %q\npool = \"p\"\n", busy.Addr())
	cfg, err := config.Parse("bad.toml", []byte(bad))
	if err != nil {
		t.Fatal(err)
	}
	err = h.srv.Reload(cfg)
	if err == nil || !strings.Contains(err.Error(), "listener new") {
		t.Fatalf("reload: %v, want a bind error naming the listener", err)
	}
	if h.srv.Config() != old {
		t.Fatal("the configuration in force changed")
	}
	if ls := h.srv.Listeners(); len(ls) != 1 || ls["main"].String() != mainAddr {
		t.Fatalf("listeners after a failed reload: %v", ls)
	}
	st := h.srv.Status()
	if len(st.Pools) != 1 || len(st.Pools[0].Backends) != 1 || st.Pools[0].Backends[0].Address != a.Addr {
		t.Fatalf("pools after a failed reload: %+v", st.Pools)
	}
	// Still a, and still no connection limit.
	c1 := h.dial("main")
	if tag, err := bufio.NewReader(c1).ReadString('\n'); err != nil || tag != "a\n" {
		t.Fatalf("held connection served by %q %v", tag, err)
	}
	for i := 0; i < 3; i++ {
		if tag, err := taggedRoundTrip(mainAddr, []byte("x")); err != nil || tag != "a" {
			t.Fatalf("after a failed reload: %q %v, want a", tag, err)
		}
	}
	if b.Accepted() != 0 {
		t.Fatalf("the refused configuration's backend got %d connections", b.Accepted())
	}
	if got := value(t, h.reg, "lbctl_config_reloads_total", "result", "failure"); got != 1 {
		t.Errorf("reloads failure = %v, want 1", got)
	}
	if got := value(t, h.reg, "lbctl_config_reloads_total", "result", "success"); got != 0 {
		t.Errorf("reloads success = %v, want 0", got)
	}
	// Once the port is free, the same configuration loads.
	busy.Close()
	if err := h.srv.Reload(cfg); err != nil {
		t.Fatalf("reload once the port is free: %v", err)
	}
	if tag, err := taggedRoundTrip(h.addr("new"), []byte("x")); err != nil || tag != "b" {
		t.Fatalf("after the good reload: %q %v, want b", tag, err)
	}
}

// TestAdminStateSurvivesReload: drain and disable act at once and are kept
// by reloads while the backend stays in the configuration; a backend
// removed and added again starts enabled.
func TestAdminStateSurvivesReload(t *testing.T) {
	addrs := map[string]string{}
	for _, tag := range []string{"a", "b", "c"} {
		addrs[tag] = lbtest.NewTCP(t, tagEcho(tag)).Addr
	}
	conf := func(bs ...string) *config.Config {
		var list []string
		for _, b := range bs {
			tag, w, _ := strings.Cut(b, "=")
			list = append(list, addrs[tag]+"="+w)
		}
		cfg, err := config.Parse("test.toml", []byte(listenerTOML("l", "p", "")+poolTOML("p", "", list...)+noHealth))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", addrs["a"], addrs["b"], addrs["c"])+noHealth)
	served := func(n int) map[string]int {
		t.Helper()
		out := map[string]int{}
		for i := 0; i < n; i++ {
			tag, err := taggedRoundTrip(h.addr("l"), []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			out[tag]++
		}
		return out
	}
	admin := func(tag string) string {
		t.Helper()
		for _, p := range h.srv.Status().Pools {
			for _, b := range p.Backends {
				if b.Address == addrs[tag] {
					return b.Admin
				}
			}
		}
		return "absent"
	}

	// A connection held on b continues through the drain and the reloads.
	held := h.dial("l")
	hr := bufio.NewReader(held)
	tag, err := hr.ReadString('\n')
	if err != nil || tag != "a\n" {
		t.Fatalf("first connection on %q %v, want a", tag, err)
	}
	if _, err := h.srv.SetBackendAdmin("p", addrs["a"], balancer.Draining); err != nil {
		t.Fatal(err)
	}
	if _, err := h.srv.SetBackendAdmin("p", addrs["c"], balancer.Disabled); err != nil {
		t.Fatal(err)
	}
	if got := served(6); got["b"] != 6 {
		t.Fatalf("right after drain a and disable c: served %v, want only b", got)
	}

	// A reload that changes weights keeps the states.
	if err := h.srv.Reload(conf("a=2", "b=3", "c=1")); err != nil {
		t.Fatal(err)
	}
	if admin("a") != "draining" || admin("c") != "disabled" || admin("b") != "enabled" {
		t.Fatalf("after reload: a %s, b %s, c %s", admin("a"), admin("b"), admin("c"))
	}
	if got := served(6); got["b"] != 6 {
		t.Fatalf("after reload: served %v, want only b", got)
	}

	// c leaves and comes back: its state was forgotten with it.
	if err := h.srv.Reload(conf("a=2", "b=3")); err != nil {
		t.Fatal(err)
	}
	if admin("c") != "absent" {
		t.Fatalf("c still in status after removal: %s", admin("c"))
	}
	if _, err := h.srv.SetBackendAdmin("p", addrs["c"], balancer.Enabled); !errors.Is(err, ErrUnknownBackend) {
		t.Fatalf("admin change on a removed backend: %v, want ErrUnknownBackend", err)
	}
	if err := h.srv.Reload(conf("a=2", "b=3", "c=1")); err != nil {
		t.Fatal(err)
	}
	if admin("c") != "enabled" || admin("a") != "draining" {
		t.Fatalf("after re-adding c: a %s, c %s", admin("a"), admin("c"))
	}
	if got := served(8); got["a"] != 0 || got["c"] == 0 {
		t.Fatalf("after re-adding c: served %v, want b and c", got)
	}

	// The held connection on the drained backend still works.
	held.Write([]byte("still here"))
	held.CloseWrite()
	held.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(hr)
	if err != nil || string(rest) != "still here" {
		t.Fatalf("connection held across drain and reloads: %q %v", rest, err)
	}
	if _, err := h.srv.SetBackendAdmin("p", addrs["a"], balancer.Enabled); err != nil {
		t.Fatal(err)
	}
	if got := served(14); got["a"] == 0 {
		t.Fatalf("after enabling a: served %v", got)
	}
}

// TestHealthSurvivesReload: a backend marked down by its checks is still
// down right after a reload that keeps it; it does not restart as up.
func TestHealthSurvivesReload(t *testing.T) {
	a := lbtest.NewTCP(t, tagEcho("a"))
	dead := lbtest.ClosedPort(t)
	// fall = 1 marks the dead backend down at its first refused check; the
	// timeout is long so that no check of the live one ever times out,
	// which would mark it down as well.
	pool := func(wa, wd int) string {
		return listenerTOML("l", "p", "") + poolTOML("p", "max_fails = 0", fmt.Sprintf("%s=%d", a.Addr, wa), fmt.Sprintf("%s=%d", dead, wd)) +
			"[pools.p.health]\ncheck = \"tcp\"\ninterval = \"50ms\"\ntimeout = \"10s\"\nrise = 1\nfall = 1\n"
	}
	h := startServer(t, pool(1, 1))
	health := func(addr string) string {
		for _, p := range h.srv.Status().Pools {
			for _, b := range p.Backends {
				if b.Address == addr {
					return b.Health
				}
			}
		}
		return "absent"
	}
	lbtest.Eventually(t, 10*time.Second, func() bool { return health(dead) == "down" }, "dead backend never marked down")
	cfg, err := config.Parse("test.toml", []byte(pool(2, 5)))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if health(dead) != "down" || health(a.Addr) != "up" {
		t.Fatalf("right after reload: dead %s, a %s; want down, up", health(dead), health(a.Addr))
	}
	if got := value(t, h.reg, "lbctl_backend_up", "pool", "p", "backend", dead); got != 0 {
		t.Fatalf("lbctl_backend_up of the dead backend = %v after reload, want 0", got)
	}
	for i := 0; i < 5; i++ {
		if tag, err := taggedRoundTrip(h.addr("l"), []byte("x")); err != nil || tag != "a" {
			t.Fatalf("after reload: %q %v", tag, err)
		}
	}
}
