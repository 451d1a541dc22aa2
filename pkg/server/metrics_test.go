package server

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The metric tests compare every counter with what the test itself did:
// connections opened, bytes sent (and counted again by the backends),
// rejections caused. They read the registry the way a scrape does.

// sample is the value of the series of family name whose labels include
// want: a counter's or gauge's value, a histogram's sample count. ok is
// false when no such series exists.
func sample(t testing.TB, reg prometheus.Gatherer, name string, want map[string]string) (v float64, ok bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, want) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

// value is sample for a series that must exist.
func value(t testing.TB, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	v, ok := sample(t, reg, name, want)
	if !ok {
		t.Fatalf("no series %s%v", name, want)
	}
	return v
}

// tcpSeries are the series of one listener, pool and backend of a TCP
// listener.
type tcpSeries struct {
	BytesIn, BytesOut, ConnectionsActive prometheus.Collector
}

func (h *harness) tcpSeries(listener, pool, backend string) tcpSeries {
	return tcpSeries{
		BytesIn:           h.m.Bytes.WithLabelValues(listener, pool, backend, "in"),
		BytesOut:          h.m.Bytes.WithLabelValues(listener, pool, backend, "out"),
		ConnectionsActive: h.m.ConnectionsActive.WithLabelValues(listener, pool, backend),
	}
}

// rejected reads lbctl_connections_rejected_total{listener, reason}.
func (h *harness) rejected(listener, reason string) float64 {
	return counter(h.m.Rejected.WithLabelValues(listener, reason))
}

// rejections is rejected for one listener.
func (h *harness) rejections(listener string) func(reason string) float64 {
	return func(reason string) float64 { return h.rejected(listener, reason) }
}

// seriesWith lists the lbctl_ series that carry label=val.
func seriesWith(t testing.TB, reg prometheus.Gatherer, label, val string) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "lbctl_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabels(m, map[string]string{label: val}) {
				out = append(out, fmt.Sprintf("%s%v", mf.GetName(), m.GetLabel()))
			}
		}
	}
	sort.Strings(out)
	return out
}

// countingEcho echoes and adds the bytes it received to *n when the
// client's side ends.
func countingEcho(n *atomic.Int64) lbtest.Handler {
	return func(c *net.TCPConn) {
		k, _ := io.Copy(c, c)
		n.Add(k)
		c.CloseWrite()
	}
}

// echoRoundTrip sends payload through addr, half-closes, and checks that
// exactly payload comes back.
func echoRoundTrip(t testing.TB, addr string, payload []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo returned %d bytes that differ from the %d sent", len(got), len(payload))
	}
}

// refused dials addr and expects lbctl to close the connection without a
// byte.
func refused(t testing.TB, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	got, _ := lbtest.ReadAllTimeout(t, c, 5*time.Second) // EOF or reset
	if len(got) != 0 {
		t.Fatalf("a rejected connection got %q", got)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestMetricsExact: connections, bytes, connect durations and errors, and
// every kind of rejection the TCP path can cause alone, counted exactly.
func TestMetricsExact(t *testing.T) {
	var recvA, recvB, recvD atomic.Int64
	a := lbtest.NewTCP(t, countingEcho(&recvA))
	b := lbtest.NewTCP(t, countingEcho(&recvB))
	d := lbtest.NewTCP(t, countingEcho(&recvD))
	drained := lbtest.NewTCP(t, lbtest.Echo)
	dead := lbtest.ClosedPort(t)
	toml := listenerTOML("l", "p", "") + poolTOML("p", "", a.Addr, b.Addr) + "[pools.p.health]\ncheck = \"none\"\n" +
		listenerTOML("dead", "dead", "") + poolTOML("dead", "retries = 0\nmax_fails = 0", dead) + "[pools.dead.health]\ncheck = \"none\"\n" +
		listenerTOML("none", "drained", "") + poolTOML("drained", "", drained.Addr) + "[pools.drained.health]\ncheck = \"none\"\n" +
		listenerTOML("max", "q", "max_connections = 1") + poolTOML("q", "", d.Addr) + "[pools.q.health]\ncheck = \"none\"\n"
	h := startServer(t, toml)
	reg := h.reg

	// Ten connections of different sizes through l (round-robin: five each).
	var sent int64
	for i := 0; i < 10; i++ {
		n := 1000*i*i + 7
		if i == 9 {
			n = 3<<20 + 11 // large enough to take the splice path
		}
		echoRoundTrip(t, h.addr("l"), randomBytes(n))
		sent += int64(n)
	}
	if recvA.Load()+recvB.Load() != sent {
		t.Fatalf("backends received %d bytes, test sent %d", recvA.Load()+recvB.Load(), sent)
	}
	for _, be := range []struct {
		b    *lbtest.Backend
		recv *atomic.Int64
	}{{a, &recvA}, {b, &recvB}} {
		addr := be.b.Addr
		lbtest.Until(t, 10*time.Second, func() (bool, string) {
			got := value(t, reg, "lbctl_connections_active", "listener", "l", "backend", addr)
			return got == 0, fmt.Sprintf("connections_active of %s is %v, want 0", addr, got)
		})
		for _, c := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"lbctl_connections_total", []string{"listener", "l", "pool", "p", "backend", addr}, 5},
			{"lbctl_bytes_total", []string{"listener", "l", "pool", "p", "backend", addr, "direction", "in"}, float64(be.recv.Load())},
			{"lbctl_bytes_total", []string{"listener", "l", "pool", "p", "backend", addr, "direction", "out"}, float64(be.recv.Load())},
			{"lbctl_backend_connect_duration_seconds", []string{"pool", "p", "backend", addr}, float64(be.b.Accepted())},
			{"lbctl_backend_connect_errors_total", []string{"pool", "p", "backend", addr}, 0},
		} {
			if got := value(t, reg, c.name, c.labels...); got != c.want {
				t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
			}
		}
		if be.b.Accepted() != 5 {
			t.Errorf("backend %s accepted %d connections, want 5", addr, be.b.Accepted())
		}
	}

	// Every connect to a dead backend fails: one connect error and one
	// backend_unavailable rejection each, no successful connect observed.
	for i := 0; i < 3; i++ {
		refused(t, h.addr("dead"))
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		got := value(t, reg, "lbctl_connections_rejected_total", "listener", "dead", "reason", "backend_unavailable")
		return got == 3, fmt.Sprintf("backend_unavailable rejections %v, want 3", got)
	})
	if got := value(t, reg, "lbctl_backend_connect_errors_total", "pool", "dead", "backend", dead); got != 3 {
		t.Errorf("connect errors to the dead backend = %v, want 3", got)
	}
	if got := value(t, reg, "lbctl_backend_connect_duration_seconds", "pool", "dead", "backend", dead); got != 0 {
		t.Errorf("connect duration samples of the dead backend = %v, want 0 (successes only)", got)
	}
	if got := value(t, reg, "lbctl_connections_total", "listener", "dead", "backend", dead); got != 0 {
		t.Errorf("connections_total of the dead backend = %v, want 0", got)
	}

	// No eligible backend: no_backend, and the backend is never dialed.
	if _, err := h.srv.SetBackendAdmin("drained", drained.Addr, balancer.Draining); err != nil {
		t.Fatal(err)
	}
	refused(t, h.addr("none"))
	refused(t, h.addr("none"))
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		got := value(t, reg, "lbctl_connections_rejected_total", "listener", "none", "reason", "no_backend")
		return got == 2, fmt.Sprintf("no_backend rejections %v, want 2", got)
	})
	if drained.Accepted() != 0 {
		t.Errorf("a drained backend accepted %d connections", drained.Accepted())
	}

	// max_connections = 1: a second concurrent connection is rejected.
	held := h.dial("max")
	held.Write([]byte("x"))
	if _, err := io.ReadFull(held, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	refused(t, h.addr("max"))
	if got := value(t, reg, "lbctl_connections_rejected_total", "listener", "max", "reason", "max_connections"); got != 1 {
		t.Errorf("max_connections rejections = %v, want 1", got)
	}
	if got := value(t, reg, "lbctl_connections_active", "listener", "max", "backend", d.Addr); got != 1 {
		t.Errorf("connections_active while one is held = %v, want 1", got)
	}
	held.Close()
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		got := value(t, reg, "lbctl_connections_active", "listener", "max", "backend", d.Addr)
		return got == 0, fmt.Sprintf("connections_active after close %v, want 0", got)
	})
	echoRoundTrip(t, h.addr("max"), []byte("again"))
	if d.Accepted() != 2 {
		t.Errorf("backend of the limited listener accepted %d, want 2", d.Accepted())
	}

	// Rejections nobody caused stay at zero, on every listener.
	for _, l := range []string{"l", "dead", "none", "max"} {
		for _, r := range []string{"acl", "client_limit", "rate_limit", "proxy_protocol"} {
			if got := value(t, reg, "lbctl_connections_rejected_total", "listener", l, "reason", r); got != 0 {
				t.Errorf("rejected{%s,%s} = %v, want 0", l, r, got)
			}
		}
	}
	if got := value(t, reg, "lbctl_connections_rejected_total", "listener", "l", "reason", "no_backend"); got != 0 {
		t.Errorf("rejected{l,no_backend} = %v, want 0", got)
	}
}

// TestByteCountersAdvanceWhileOpen: the byte counters of a connection that
// stays open reach what was sent before it closes, on the short-read path
// and on the splice path.
func TestByteCountersAdvanceWhileOpen(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+noHealth)
	c := h.dial("l")
	in := h.tcpSeries("l", "p", be.Addr)

	var total int64
	for _, n := range []int{10, 5000, 4<<20 + 3, 1} {
		payload := randomBytes(n)
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(payload)
			werr <- err
		}()
		got := make([]byte, n)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("read back %d bytes: %v", n, err)
		}
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("echo of %d bytes differs", n)
		}
		total += int64(n)
		lbtest.Until(t, 10*time.Second, func() (bool, string) {
			bin, bout := counter(in.BytesIn), counter(in.BytesOut)
			return bin == float64(total) && bout == float64(total), fmt.Sprintf("while open: bytes in %v out %v, want %d", bin, bout, total)
		})
		if got := counter(in.ConnectionsActive); got != 1 {
			t.Fatalf("connections_active = %v while open, want 1", got)
		}
	}
	c.Close()
	lbtest.Eventually(t, 10*time.Second, func() bool { return counter(in.ConnectionsActive) == 0 }, "active after close")
	if counter(in.BytesIn) != float64(total) || counter(in.BytesOut) != float64(total) {
		t.Fatalf("after close: bytes in %v out %v, want %d", counter(in.BytesIn), counter(in.BytesOut), total)
	}
}

// TestMetricSeriesFollowReload: a reload deletes the series of removed
// listeners and backends and keeps the others counting; a failed reload
// leaves no series for what it would have added.
func TestMetricSeriesFollowReload(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Echo)
	b := lbtest.NewTCP(t, lbtest.Echo)
	pools := poolTOML("p", "", a.Addr, b.Addr) + noHealth
	h := startServer(t, listenerTOML("l1", "p", "")+listenerTOML("l2", "p", "")+pools)
	for i := 0; i < 2; i++ {
		echoRoundTrip(t, h.addr("l1"), []byte("hello"))
		echoRoundTrip(t, h.addr("l2"), []byte("hello"))
	}
	if len(seriesWith(t, h.reg, "listener", "l2")) == 0 || len(seriesWith(t, h.reg, "backend", b.Addr)) == 0 {
		t.Fatal("series missing before the reload")
	}

	keptBefore := value(t, h.reg, "lbctl_connections_total", "listener", "l1", "backend", a.Addr)

	// Remove listener l2 and backend b.
	reload := func(toml string) error {
		t.Helper()
		cfg, err := config.Parse("test.toml", []byte(toml))
		if err != nil {
			t.Fatal(err)
		}
		return h.srv.Reload(cfg)
	}
	if err := reload(listenerTOML("l1", "p", "") + poolTOML("p", "", a.Addr) + noHealth); err != nil {
		t.Fatal(err)
	}
	if s := seriesWith(t, h.reg, "listener", "l2"); len(s) != 0 {
		t.Errorf("series of the removed listener remain:\n%s", strings.Join(s, "\n"))
	}
	if s := seriesWith(t, h.reg, "backend", b.Addr); len(s) != 0 {
		t.Errorf("series of the removed backend remain:\n%s", strings.Join(s, "\n"))
	}
	// The kept series go on counting from where they were.
	if got := value(t, h.reg, "lbctl_connections_total", "listener", "l1", "backend", a.Addr); got != keptBefore || got == 0 {
		t.Errorf("connections_total{l1,a} = %v after reload, want %v", got, keptBefore)
	}
	echoRoundTrip(t, h.addr("l1"), []byte("hello"))
	if got := value(t, h.reg, "lbctl_connections_total", "listener", "l1", "backend", a.Addr); got != keptBefore+1 {
		t.Errorf("connections_total{l1,a} = %v, want %v", got, keptBefore+1)
	}

	// A reload that fails (its new listener's port is taken) leaves no
	// series for its new listener, pool and backend.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	e := lbtest.ClosedPort(t)
	bad := listenerTOML("l1", "p", "") + poolTOML("p", "", a.Addr) + noHealth +
		fmt.Sprintf("[listeners.l3]\nbind = %q\npool = \"p2\"\n", busy.Addr()) + poolTOML("p2", "", e)
	if err := reload(bad); err == nil {
		t.Fatal("reload onto a busy port succeeded")
	}
	for _, lv := range [][2]string{{"listener", "l3"}, {"pool", "p2"}, {"backend", e}} {
		if s := seriesWith(t, h.reg, lv[0], lv[1]); len(s) != 0 {
			t.Errorf("a failed reload left series with %s=%s:\n%s", lv[0], lv[1], strings.Join(s, "\n"))
		}
	}
	if got := value(t, h.reg, "lbctl_config_reloads_total", "result", "failure"); got != 1 {
		t.Errorf("reloads failure = %v, want 1", got)
	}

	// b comes back: its series start again at zero.
	if err := reload(listenerTOML("l1", "p", "") + pools); err != nil {
		t.Fatal(err)
	}
	if got := value(t, h.reg, "lbctl_connections_total", "listener", "l1", "backend", b.Addr); got != 0 {
		t.Errorf("connections_total of the re-added backend = %v, want 0", got)
	}
	if got := value(t, h.reg, "lbctl_config_reloads_total", "result", "success"); got != 2 {
		t.Errorf("reloads success = %v, want 2", got)
	}
}

// TestEverySpecMetric: every metric of the SPEC's table is exported with
// its type and exactly its labels, beside the Go and process collectors.
func TestEverySpecMetric(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+
		"[pools.p.health]\ncheck = \"tcp\"\ninterval = \"50ms\"\n"+
		"[listeners.u]\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"u\"\n"+
		poolTOML("u", "", "127.0.0.1:9")+"[pools.u.health]\ncheck = \"none\"\n")
	echoRoundTrip(t, h.addr("l"), []byte("hello"))
	lbtest.Eventually(t, 10*time.Second, func() bool {
		v, _ := sample(t, h.reg, "lbctl_health_checks_total", map[string]string{"result": "success"})
		return v > 0
	}, "no successful health check")

	lpb := "backend listener pool"
	spec := []struct{ name, typ, labels string }{
		{"lbctl_connections_active", "GAUGE", lpb},
		{"lbctl_connections_total", "COUNTER", lpb},
		{"lbctl_connections_rejected_total", "COUNTER", "listener reason"},
		{"lbctl_backend_connect_errors_total", "COUNTER", "backend pool"},
		{"lbctl_bytes_total", "COUNTER", "backend direction listener pool"},
		{"lbctl_backend_up", "GAUGE", "backend pool"},
		{"lbctl_health_checks_total", "COUNTER", "backend pool result"},
		{"lbctl_backend_connect_duration_seconds", "HISTOGRAM", "backend pool"},
		{"lbctl_udp_sessions_active", "GAUGE", lpb},
		{"lbctl_udp_datagrams_total", "COUNTER", "backend direction listener pool"},
		{"lbctl_config_reloads_total", "COUNTER", "result"},
	}
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	for _, s := range spec {
		mf := byName[s.name]
		if mf == nil {
			t.Errorf("%s is not exported", s.name)
			continue
		}
		if mf.GetType().String() != s.typ {
			t.Errorf("%s is a %s, want %s", s.name, mf.GetType(), s.typ)
		}
		for _, m := range mf.GetMetric() {
			var names []string
			for _, lp := range m.GetLabel() {
				names = append(names, lp.GetName())
			}
			sort.Strings(names)
			if got := strings.Join(names, " "); got != s.labels {
				t.Errorf("%s has labels %q, want %q", s.name, got, s.labels)
			}
		}
	}
	for _, name := range []string{"go_goroutines", "process_open_fds"} {
		if byName[name] == nil {
			t.Errorf("%s missing: Go and process collectors not registered", name)
		}
	}
	// Connect durations: buckets from LAN (100µs) to WAN (10s).
	for _, m := range byName["lbctl_backend_connect_duration_seconds"].GetMetric() {
		bs := m.GetHistogram().GetBucket()
		if len(bs) == 0 || bs[0].GetUpperBound() > 0.0001 || bs[len(bs)-1].GetUpperBound() < 10 {
			t.Errorf("connect duration buckets %v..%v, want <= 100µs .. >= 10s", bs[0].GetUpperBound(), bs[len(bs)-1].GetUpperBound())
		}
	}
}
