package server

import (
	"bufio"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/health"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// Health checking end to end (issue 4): real backends on loopback, real
// connections through the proxy, states read from the admin status, the
// metrics and the log. Intervals are tens of milliseconds; every wait polls
// with a deadline of seconds, and every window that must outlast test setup
// (a check's timeout, a passive ejection, a slow-start ramp) is seconds long
// or is measured rather than assumed, so the tests hold on a loaded machine.

// healthTOML renders the [pools.p.health] table from key = value lines.
func healthTOML(lines ...string) string {
	return "[pools.p.health]\n" + strings.Join(lines, "\n") + "\n"
}

// backupTOML renders one more backend of pool p, a backup.
func backupTOML(addr string) string {
	return fmt.Sprintf("[[pools.p.backends]]\naddress = %q\nbackup = true\n", addr)
}

// healthOf is the admin status's health ("up" or "down") of backend addr of pool p.
func healthOf(h *harness, addr string) string {
	h.t.Helper()
	for _, p := range h.srv.Status().Pools {
		if p.Name != "p" {
			continue
		}
		for _, b := range p.Backends {
			if b.Address == addr {
				return b.Health
			}
		}
	}
	h.t.Fatalf("no backend %s in pool p", addr)
	return ""
}

// waitHealth waits until backend addr of pool p is in state want and
// returns how long that took.
func waitHealth(h *harness, addr, want string, within time.Duration) time.Duration {
	h.t.Helper()
	start := time.Now()
	lbtest.Eventually(h.t, within, func() bool { return healthOf(h, addr) == want },
		"backend %s not %s", addr, want)
	return time.Since(start)
}

// runtimeBackend is the server's internal state of backend addr of pool p.
func runtimeBackend(h *harness, addr string) *backend {
	h.t.Helper()
	h.srv.mu.Lock()
	defer h.srv.mu.Unlock()
	if p := h.srv.pools["p"]; p != nil {
		for _, be := range p.gen.backends {
			if be.b.Address() == addr {
				return be
			}
		}
	}
	h.t.Fatalf("no backend %s in pool p", addr)
	return nil
}

func upGauge(h *harness, addr string) float64 {
	return counter(h.m.BackendUp.WithLabelValues("p", addr))
}

func checksCounted(h *harness, addr, result string) float64 {
	return counter(h.m.HealthChecks.WithLabelValues("p", addr, result))
}

// hasSeries reports whether metric name has a series whose labels include
// every label given, without creating one (WithLabelValues would).
func hasSeries(t *testing.T, h *harness, name string, labels map[string]string) bool {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsInclude(m.GetLabel(), labels) {
				return true
			}
		}
	}
	return false
}

func labelsInclude(have []*dto.LabelPair, want map[string]string) bool {
	n := 0
	for _, lp := range have {
		if v, ok := want[lp.GetName()]; ok && v == lp.GetValue() {
			n++
		}
	}
	return n == len(want)
}

// stateLogs returns the state-change lines ("backend up", "backend down")
// logged for backend addr.
func stateLogs(logs *observer.ObservedLogs, addr string) []observer.LoggedEntry {
	var out []observer.LoggedEntry
	for _, e := range logs.FilterField(zap.String("backend", addr)).All() {
		if e.Message == "backend up" || e.Message == "backend down" {
			out = append(out, e)
		}
	}
	return out
}

func observed() (*observer.ObservedLogs, func(*testing.T, string) *harness) {
	core, logs := observer.New(zap.InfoLevel)
	return logs, func(t *testing.T, toml string) *harness { return startServerLog(t, toml, core) }
}

// httpCheckServer answers every HTTP request with the status code in code
// and remembers the last request line and Host header.
type httpCheckServer struct {
	code     atomic.Int32
	mu       sync.Mutex
	lastLine string
	lastHost string
}

func (s *httpCheckServer) handle(c *net.TCPConn) {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	tp := textproto.NewReader(bufio.NewReader(c))
	line, err := tp.ReadLine()
	if err != nil {
		return
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		return
	}
	s.mu.Lock()
	s.lastLine, s.lastHost = line, hdr.Get("Host")
	s.mu.Unlock()
	fmt.Fprintf(c, "HTTP/1.1 %d Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", s.code.Load())
}

// alternatingHTTP answers its n-th connection (from 0) with 200 when
// (n+offset) is even, else 500: a backend that fails every other check.
func alternatingHTTP(offset int64) lbtest.Handler {
	var n atomic.Int64
	n.Store(offset)
	codes := [2]int{200, 500}
	return func(c *net.TCPConn) {
		code := codes[(n.Add(1)-1)%2]
		c.SetDeadline(time.Now().Add(2 * time.Second))
		tp := textproto.NewReader(bufio.NewReader(c))
		if _, err := tp.ReadLine(); err != nil {
			return
		}
		if _, err := tp.ReadMIMEHeader(); err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n", code)
	}
}

// pingServer is a small line protocol: "PING" is answered "+PONG" while
// healthy is true, "-ERR loading" otherwise; the connection stays open for
// more lines, as a Redis-like server would.
func pingServer(healthy *atomic.Bool) lbtest.Handler {
	return func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			switch {
			case sc.Text() != "PING":
				c.Write([]byte("-ERR unknown command\r\n"))
			case healthy.Load():
				c.Write([]byte("+PONG\r\n"))
			default:
				c.Write([]byte("-ERR loading\r\n"))
			}
		}
	}
}

// TestHealthFirstCheckDecides: before its first check completes a backend
// counts as up; the first result alone decides (no waiting for fall
// failures), is logged once with its reason and moves the metrics.
func TestHealthFirstCheckDecides(t *testing.T) {
	var live httpCheckServer
	live.code.Store(200)
	liveBE := lbtest.NewTCP(t, live.handle)
	silent := lbtest.NewTCP(t, lbtest.Silent) // accepts, never answers
	dead := lbtest.ClosedPort(t)
	const (
		interval = 5 * time.Second // long: only the first check can explain a quick verdict
		// timeout is what the silent backend's first check takes, and long
		// enough that the live backend's first check never times out on a
		// loaded machine: that check alone decides.
		timeout = 2 * time.Second
	)
	logs, start := observed()
	begin := time.Now()
	h := start(t, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", liveBE.Addr, silent.Addr, dead)+
		healthTOML(`check = "http"`, `interval = "5s"`, `timeout = "2s"`, "rise = 2", "fall = 3"))

	// The silent backend's first check cannot end before its timeout: until
	// then it counts as up. (Read the state first, then the clock.)
	if got := healthOf(h, silent.Addr); got != "up" && time.Since(begin) < timeout {
		t.Errorf("before its first check completed, silent backend is %s, want up", got)
	}
	if d := waitHealth(h, dead, "down", interval); d > interval/2 {
		t.Errorf("refused backend marked down after %v; the first check should decide at once", d)
	}
	waitHealth(h, silent.Addr, "down", timeout+10*time.Second)
	if d := time.Since(begin); d < timeout {
		t.Errorf("silent backend down after %v, before its check's timeout %v", d, timeout)
	}
	lbtest.Eventually(t, 10*time.Second, func() bool { return checksCounted(h, liveBE.Addr, "success") >= 1 })
	if got := healthOf(h, liveBE.Addr); got != "up" {
		t.Errorf("live backend is %s", got)
	}
	if got := upGauge(h, liveBE.Addr); got != 1 {
		t.Errorf("lbctl_backend_up{live} = %v, want 1", got)
	}
	for _, a := range []string{dead, silent.Addr} {
		if got := upGauge(h, a); got != 0 {
			t.Errorf("lbctl_backend_up{%s} = %v, want 0", a, got)
		}
		if got := checksCounted(h, a, "failure"); got < 1 {
			t.Errorf("lbctl_health_checks_total{%s,failure} = %v, want >= 1", a, got)
		}
		if got := checksCounted(h, a, "success"); got != 0 {
			t.Errorf("lbctl_health_checks_total{%s,success} = %v, want 0", a, got)
		}
	}
	if got := checksCounted(h, liveBE.Addr, "failure"); got != 0 {
		t.Errorf("lbctl_health_checks_total{live,failure} = %v, want 0", got)
	}
	live.mu.Lock()
	if live.lastLine != "GET / HTTP/1.1" {
		t.Errorf("check request line %q, want GET / HTTP/1.1", live.lastLine)
	}
	live.mu.Unlock()

	// One line per change, with the reason; nothing for the live backend,
	// which never changed state.
	for _, c := range []struct{ addr, reason string }{{dead, "refused"}, {silent.Addr, "timeout"}} {
		es := stateLogs(logs, c.addr)
		if len(es) != 1 || es[0].Message != "backend down" || es[0].Level != zap.WarnLevel {
			t.Errorf("%s: state logs %v, want one warning \"backend down\"", c.addr, es)
			continue
		}
		ctx := es[0].ContextMap()
		if r, _ := ctx["reason"].(string); !strings.Contains(r, c.reason) {
			t.Errorf("%s: reason %q, want it to mention %q", c.addr, r, c.reason)
		}
		if ctx["check"] != "active" || ctx["pool"] != "p" {
			t.Errorf("%s: log fields %v", c.addr, ctx)
		}
		if e, _ := ctx["error"].(string); !strings.Contains(e, c.reason) {
			t.Errorf("%s: error %q, want the check's socket error (%s)", c.addr, e, c.reason)
		}
	}
	if es := stateLogs(logs, liveBE.Addr); len(es) != 0 {
		t.Errorf("live backend: state logs %v, want none", es)
	}
}

// TestHealthBackendKilledAndRestarted: a killed backend is marked down
// within interval*fall + timeout and gets no more traffic; restarted on the
// same port it is up within interval*rise + timeout and gets traffic again.
func TestHealthBackendKilledAndRestarted(t *testing.T) {
	const (
		interval = 100 * time.Millisecond
		// A check of a live backend never times out, however loaded the
		// machine (the first result alone decides); a killed one is refused
		// at once.
		timeout    = time.Second
		rise, fall = 2, 3
		// slack covers polling and scheduling on a loaded CI machine.
		slack = 3 * time.Second
	)
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	b := lbtest.NewTCP(t, lbtest.Named("b"))
	logs, start := observed()
	h := start(t, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", a.Addr, b.Addr)+
		healthTOML(`check = "tcp"`, `interval = "100ms"`, `timeout = "1s"`, "rise = 2", "fall = 3"))
	lbtest.Eventually(t, 10*time.Second, func() bool { return checksCounted(h, a.Addr, "success") >= 1 })
	if got := whoServed(t, h, 4); got["a"] != 2 || got["b"] != 2 {
		t.Fatalf("before the kill: served %v, want a:2 b:2", got)
	}

	addr := a.Addr
	a.Close()
	down := waitHealth(h, addr, "down", 10*time.Second)
	if bound := interval*fall + timeout; down > bound+slack {
		t.Errorf("marked down %v after the kill, want within interval*fall+timeout = %v (+%v slack)", down, bound, slack)
	}
	// fall = 3: the first failure may come at once (even from a check
	// that started just before the kill), the third not before two more
	// check starts; one interval is left out for that in-flight check.
	if least := (fall - 2) * interval * 9 / 10; down < least {
		t.Errorf("marked down %v after the kill, before %d consecutive failures could have been seen", down, fall)
	}
	if got := upGauge(h, addr); got != 0 {
		t.Errorf("lbctl_backend_up = %v after the kill, want 0", got)
	}
	if got := whoServed(t, h, 6); got["b"] != 6 {
		t.Errorf("after the kill: served %v, want b only", got)
	}
	if got := counter(h.m.ConnectErrors.WithLabelValues("p", addr)); got != 0 {
		t.Errorf("%v connects tried on the down backend, want 0", got)
	}

	lbtest.NewTCPAt(t, addr, lbtest.Named("a"))
	up := waitHealth(h, addr, "up", 10*time.Second)
	if bound := interval*rise + timeout; up > bound+slack {
		t.Errorf("marked up %v after the restart, want within interval*rise+timeout = %v (+%v slack)", up, bound, slack)
	}
	if got := upGauge(h, addr); got != 1 {
		t.Errorf("lbctl_backend_up = %v after the restart, want 1", got)
	}
	// Round robin resumes with the weights it had: each gets 2 of 6 at least.
	if got := whoServed(t, h, 6); got["a"] < 2 || got["b"] < 2 {
		t.Errorf("after the restart: served %v, want both", got)
	}

	es := stateLogs(logs, addr)
	if len(es) != 2 || es[0].Message != "backend down" || es[1].Message != "backend up" {
		t.Fatalf("state logs %v, want exactly one down then one up", es)
	}
	if r := es[1].ContextMap()["reason"]; r != "2 consecutive checks passed" {
		t.Errorf("up reason %q", r)
	}
}

// TestHealthCheckKinds: each active check kind marks a backend down while
// its probe fails and up once it passes again. Every backend starts
// unhealthy, so the first check marks it down.
func TestHealthCheckKinds(t *testing.T) {
	// A timeout of seconds: a check slowed down by a loaded machine must not
	// fail for it, or the states would not follow the switch.
	common := []string{`interval = "30ms"`, `timeout = "5s"`, "rise = 2", "fall = 2"}
	tests := []struct {
		name string
		// setup starts the backend, unhealthy; it returns the traffic
		// address, the health keys and a switch between healthy and not.
		setup func(t *testing.T) (addr string, keys []string, set func(healthy bool))
		after func(t *testing.T) // extra checks once done
	}{{
		name: "http 500 down, 204 up with expect_status 2xx",
		setup: func(t *testing.T) (string, []string, func(bool)) {
			var s httpCheckServer
			s.code.Store(500)
			be := lbtest.NewTCP(t, s.handle)
			t.Cleanup(func() {
				s.mu.Lock()
				defer s.mu.Unlock()
				if s.lastLine != "GET /healthz HTTP/1.1" || s.lastHost != "svc.example" {
					t.Errorf("check request %q with Host %q, want GET /healthz with Host svc.example", s.lastLine, s.lastHost)
				}
			})
			return be.Addr, []string{`check = "http"`, `path = "/healthz"`, `host = "svc.example"`, `expect_status = "2xx"`},
				func(ok bool) {
					if ok {
						s.code.Store(204)
					} else {
						s.code.Store(500)
					}
				}
		},
	}, {
		name: "send-expect against a line protocol",
		setup: func(t *testing.T) (string, []string, func(bool)) {
			var healthy atomic.Bool
			be := lbtest.NewTCP(t, pingServer(&healthy))
			return be.Addr, []string{`check = "send-expect"`, `send = "PING\r\n"`, `expect = "+PONG"`}, healthy.Store
		},
	}, {
		name: "tcp on another port than the traffic port",
		setup: func(t *testing.T) (string, []string, func(bool)) {
			traffic := lbtest.NewTCP(t, lbtest.Named("x")) // always alive: only the check port decides
			checkAddr := lbtest.ClosedPort(t)
			_, port, _ := net.SplitHostPort(checkAddr)
			var mu sync.Mutex
			var checkBE *lbtest.Backend
			return traffic.Addr, []string{`check = "tcp"`, "port = " + port}, func(ok bool) {
				mu.Lock()
				defer mu.Unlock()
				switch {
				case ok && checkBE == nil:
					checkBE = lbtest.NewTCPAt(t, checkAddr, func(*net.TCPConn) {})
				case !ok && checkBE != nil:
					checkBE.Close()
					checkBE = nil
				}
			}
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr, keys, set := tc.setup(t)
			h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", addr)+
				healthTOML(append(keys, common...)...))
			waitHealth(h, addr, "down", 10*time.Second)
			set(true)
			waitHealth(h, addr, "up", 10*time.Second)
			set(false)
			waitHealth(h, addr, "down", 10*time.Second)
			if s, f := checksCounted(h, addr, "success"), checksCounted(h, addr, "failure"); s < 2 || f < 3 {
				t.Errorf("checks counted: %v successes, %v failures; want >= 2 and >= 3", s, f)
			}
		})
	}
}

// TestHealthSilentBackend: a backend that accepts but never answers is down
// by the check's timeout, and no check outlives that timeout (the
// backend never holds more than one check connection at a time).
func TestHealthSilentBackend(t *testing.T) {
	var open, maxOpen atomic.Int64
	be := lbtest.NewTCP(t, func(c *net.TCPConn) {
		n := open.Add(1)
		for {
			m := maxOpen.Load()
			if n <= m || maxOpen.CompareAndSwap(m, n) {
				break
			}
		}
		lbtest.Silent(c)
		open.Add(-1)
	})
	// The timeout is long against the interval, so checks run back to back,
	// and long against the time the backend may take, on a loaded machine,
	// to see a connection closed: a third connection could only overlap if
	// a check outlived its timeout.
	const timeout = 500 * time.Millisecond
	begin := time.Now()
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", be.Addr)+
		healthTOML(`check = "http"`, `interval = "20ms"`, `timeout = "500ms"`, "rise = 1", "fall = 2"))
	waitHealth(h, be.Addr, "down", 10*time.Second)
	if d := time.Since(begin); d < timeout {
		t.Errorf("down after %v, before one timeout", d)
	}
	lbtest.Eventually(t, 15*time.Second, func() bool { return checksCounted(h, be.Addr, "failure") >= 4 })
	// A check holds its connection for its timeout at most; the next starts
	// one interval after the previous started, so at most two overlap (one
	// closing while the next dials).
	if m := maxOpen.Load(); m > 2 {
		t.Errorf("backend held %d check connections at once, want <= 2", m)
	}
}

// TestHealthHysteresis: against a backend that fails every other check,
// rise/fall >= 2 keep the first verdict (no flapping); rise = fall = 1
// flaps, which shows the test can tell.
func TestHealthHysteresis(t *testing.T) {
	tests := []struct {
		name       string
		offset     int64 // 0: the first check passes; 1: it fails
		rise, fall int
		wantUp     bool // state at the end
		minChanges int  // logged state changes
		maxChanges int
	}{
		{name: "rise 2 fall 2, first passes: stays up", offset: 0, rise: 2, fall: 2, wantUp: true, minChanges: 0, maxChanges: 0},
		{name: "rise 2 fall 2, first fails: stays down", offset: 1, rise: 2, fall: 2, wantUp: false, minChanges: 1, maxChanges: 1},
		{name: "rise 1 fall 1 flaps", offset: 0, rise: 1, fall: 1, minChanges: 6, maxChanges: 1 << 30},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			be := lbtest.NewTCP(t, alternatingHTTP(tc.offset))
			logs, start := observed()
			h := start(t, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", be.Addr)+
				healthTOML(`check = "http"`, `interval = "15ms"`, `timeout = "5s"`,
					fmt.Sprintf("rise = %d", tc.rise), fmt.Sprintf("fall = %d", tc.fall)))
			const checks = 14
			lbtest.Eventually(t, 5*time.Second, func() bool {
				return checksCounted(h, be.Addr, "success")+checksCounted(h, be.Addr, "failure") >= checks
			})
			n := len(stateLogs(logs, be.Addr))
			if n < tc.minChanges || n > tc.maxChanges {
				t.Errorf("%d state changes logged over %d+ checks, want %d..%d", n, checks, tc.minChanges, tc.maxChanges)
			}
			if tc.maxChanges < 1<<30 {
				want := map[bool]string{true: "up", false: "down"}[tc.wantUp]
				if got := healthOf(h, be.Addr); got != want {
					t.Errorf("backend is %s, want %s", got, want)
				}
			}
		})
	}
}

// TestPassiveEjection: max_fails failed connects within fail_timeout mark a
// backend down for fail_timeout (also while active checks pass); after it,
// traffic resumes, or the active check keeps it down.
func TestPassiveEjection(t *testing.T) {
	t.Run("refused connects, then traffic resumes", func(t *testing.T) {
		// The ejection must outlast the connections made during it, however
		// slow the machine.
		const failTimeout = 3 * time.Second
		a := lbtest.NewTCP(t, lbtest.Named("a"))
		d := lbtest.ClosedPort(t)
		logs, start := observed()
		h := start(t, listenerTOML("l", "p", "")+
			poolTOML("p", "retries = 1\nmax_fails = 2\nfail_timeout = \"3s\"", a.Addr, d)+noHealth)

		// Round robin alternates: every other connection tries d, fails and
		// is retried on a. The second failure ejects d.
		var lastDial time.Time
		for i := 0; i < 10 && healthOf(h, d) == "up"; i++ {
			lastDial = time.Now()
			if got := whoServed(t, h, 1); got["a"] != 1 {
				t.Fatalf("connection %d served by %v, want a", i, got)
			}
		}
		if got := healthOf(h, d); got != "down" {
			t.Fatalf("backend with refused connects is %s, want down", got)
		}
		if got := counter(h.m.ConnectErrors.WithLabelValues("p", d)); got != 2 {
			t.Errorf("ejected after %v failed connects, want max_fails = 2", got)
		}
		if got := upGauge(h, d); got != 0 {
			t.Errorf("lbctl_backend_up = %v, want 0", got)
		}
		if got := whoServed(t, h, 6); got["a"] != 6 {
			t.Errorf("during the ejection: served %v, want a only", got)
		}
		if got := counter(h.m.ConnectErrors.WithLabelValues("p", d)); got != 2 {
			t.Errorf("%v connect errors: the ejected backend was tried again", got)
		}

		// The backend recovers at once, but the ejection holds for fail_timeout.
		lbtest.NewTCPAt(t, d, lbtest.Named("d"))
		waitHealth(h, d, "up", failTimeout+10*time.Second)
		if held := time.Since(lastDial); held < failTimeout {
			t.Errorf("back up %v after the ejecting connect, before fail_timeout %v", held, failTimeout)
		}
		if got := whoServed(t, h, 6); got["d"] < 2 || got["a"] < 2 {
			t.Errorf("after fail_timeout: served %v, want both", got)
		}
		es := stateLogs(logs, d)
		if len(es) != 2 || es[0].Message != "backend down" || es[1].Message != "backend up" {
			t.Fatalf("state logs %v, want one down then one up", es)
		}
		if ctx := es[0].ContextMap(); ctx["check"] != "passive" || ctx["reason"] != "2 failed connects within 3s" {
			t.Errorf("down log fields %v", ctx)
		}
		// The line says why the connects failed: the last socket error.
		if e, _ := es[0].ContextMap()["error"].(string); !strings.Contains(e, "connection refused") || !strings.Contains(e, d) {
			t.Errorf("down log error %q, want the refused connect to %s", e, d)
		}
	})

	t.Run("holds while active checks pass, then the active check decides", func(t *testing.T) {
		const failTimeout = 2 * time.Second
		a := lbtest.NewTCP(t, lbtest.Named("a"))
		d := lbtest.ClosedPort(t) // traffic port: refuses
		checkAddr := lbtest.ClosedPort(t)
		check := lbtest.NewTCPAt(t, checkAddr, func(*net.TCPConn) {}) // check port: accepts
		_, port, _ := net.SplitHostPort(checkAddr)
		h := startServer(t, listenerTOML("l", "p", "")+
			poolTOML("p", "retries = 1\nmax_fails = 1\nfail_timeout = \"2s\"", a.Addr, d)+
			healthTOML(`check = "tcp"`, "port = "+port, `interval = "20ms"`, `timeout = "1s"`, "rise = 1", "fall = 2"))
		lbtest.Eventually(t, 10*time.Second, func() bool { return checksCounted(h, d, "success") >= 1 })

		eject := func() time.Time {
			t.Helper()
			for i := 0; i < 4; i++ {
				at := time.Now()
				whoServed(t, h, 1)
				if healthOf(h, d) == "down" {
					return at
				}
			}
			t.Fatal("refused connects did not eject the backend")
			return time.Time{}
		}
		ejected := eject()
		base := checksCounted(h, d, "success")
		lbtest.Eventually(t, 10*time.Second, func() bool { return checksCounted(h, d, "success") >= base+3 })
		// Read the state first, then the clock: the ejection began after
		// ejected, so it cannot be over before ejected+failTimeout.
		if got := healthOf(h, d); got != "down" {
			if held := time.Since(ejected); held < failTimeout {
				t.Errorf("passing active checks ended the passive ejection after %v (fail_timeout %v)", held, failTimeout)
			}
		}
		waitHealth(h, d, "up", failTimeout+10*time.Second)
		if held := time.Since(ejected); held < failTimeout {
			t.Errorf("back up after %v, before fail_timeout %v", held, failTimeout)
		}

		// Ejected again; the check port dies meanwhile: when the ejection
		// ends, the active verdict (down) decides.
		eject()
		check.Close()
		be := runtimeBackend(h, d)
		lbtest.Eventually(t, failTimeout+10*time.Second, func() bool {
			be.mu.Lock()
			defer be.mu.Unlock()
			return !be.passiveDown && !be.activeUp
		}, "passive ejection not over or active check not down")
		if got := healthOf(h, d); got != "down" {
			t.Errorf("after the ejection with the active check failing: %s, want down", got)
		}
		lbtest.NewTCPAt(t, checkAddr, func(*net.TCPConn) {})
		waitHealth(h, d, "up", 10*time.Second)
	})

	t.Run("connect timeouts", func(t *testing.T) {
		a := lbtest.NewTCP(t, lbtest.Named("a"))
		d := lbtest.Blackhole(t)
		h := startServer(t, listenerTOML("l", "p", "")+
			poolTOML("p", "retries = 1\nconnect_timeout = \"1s\"\nmax_fails = 1\nfail_timeout = \"1m\"", a.Addr, d)+noHealth)
		for i := 0; i < 4 && healthOf(h, d) == "up"; i++ {
			if got := whoServed(t, h, 1); got["a"] != 1 {
				t.Fatalf("connection %d served by %v, want a", i, got)
			}
		}
		if got := healthOf(h, d); got != "down" {
			t.Fatalf("backend whose connects time out is %s, want down", got)
		}
		if got := whoServed(t, h, 3); got["a"] != 3 {
			t.Errorf("served %v, want a only", got)
		}
	})

	t.Run("max_fails 0 turns it off", func(t *testing.T) {
		a := lbtest.NewTCP(t, lbtest.Named("a"))
		d := lbtest.ClosedPort(t)
		h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "retries = 1\nmax_fails = 0", a.Addr, d)+noHealth)
		whoServed(t, h, 6)
		if got := counter(h.m.ConnectErrors.WithLabelValues("p", d)); got != 3 {
			t.Errorf("%v connect errors, want 3 (every other connection tries d)", got)
		}
		if got := healthOf(h, d); got != "up" {
			t.Errorf("backend is %s with passive checks off, want up", got)
		}
	})
}

// TestBackupTakeoverAndHandBack: backups take connections only while no
// primary is eligible (down or disabled), and hand back when one returns.
func TestBackupTakeoverAndHandBack(t *testing.T) {
	p1 := lbtest.NewTCP(t, lbtest.Named("p1"))
	p2 := lbtest.NewTCP(t, lbtest.Named("p2"))
	bk := lbtest.NewTCP(t, lbtest.Named("bk"))
	hc := healthTOML(`check = "tcp"`, `interval = "20ms"`, `timeout = "1s"`, "rise = 1", "fall = 2")
	toml := listenerTOML("l", "p", "") + poolTOML("p", "max_fails = 0", p1.Addr, p2.Addr) + backupTOML(bk.Addr) + hc
	h := startServer(t, toml)

	if got := whoServed(t, h, 6); got["p1"] != 3 || got["p2"] != 3 {
		t.Fatalf("all up: served %v, want p1:3 p2:3 and nothing on the backup", got)
	}
	addr1 := p1.Addr
	p1.Close()
	waitHealth(h, addr1, "down", 10*time.Second)
	if got := whoServed(t, h, 4); got["p2"] != 4 {
		t.Fatalf("one primary down: served %v, want p2 only", got)
	}
	if _, err := h.srv.SetBackendAdmin("p", p2.Addr, balancer.Disabled); err != nil {
		t.Fatal(err)
	}
	if got := whoServed(t, h, 4); got["bk"] != 4 {
		t.Fatalf("no primary eligible: served %v, want bk only", got)
	}
	lbtest.NewTCPAt(t, addr1, lbtest.Named("p1"))
	waitHealth(h, addr1, "up", 10*time.Second)
	if got := whoServed(t, h, 4); got["p1"] != 4 {
		t.Fatalf("primary back: served %v, want p1 only", got)
	}
	if _, err := h.srv.SetBackendAdmin("p", p2.Addr, balancer.Enabled); err != nil {
		t.Fatal(err)
	}
	if got := whoServed(t, h, 6); got["p1"] < 2 || got["p2"] < 2 || got["bk"] != 0 {
		t.Fatalf("both primaries back: served %v, want p1 and p2 only", got)
	}

	// A reload that turns the backup into a primary and p2 into a backup.
	reload(t, h, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", addr1, bk.Addr)+backupTOML(p2.Addr)+hc)
	if got := whoServed(t, h, 4); got["p1"] != 2 || got["bk"] != 2 {
		t.Fatalf("after the reload: served %v, want p1:2 bk:2", got)
	}
	for _, b := range h.srv.Status().Pools[0].Backends {
		if b.Backup != (b.Address == p2.Addr) {
			t.Errorf("status: %s backup = %v", b.Address, b.Backup)
		}
	}
}

// reload parses toml and reloads the server with it.
func reload(t *testing.T, h *harness, toml string) {
	t.Helper()
	cfg, err := config.Parse("test.toml", []byte(toml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	if err := h.srv.Reload(cfg); err != nil {
		t.Fatalf("reload: %v", err)
	}
}

// TestSlowStart: a backend that comes back ramps from 10% of its weight to
// full over slow_start; the share of new connections it gets right after
// its return is well below its fair share, and reaches it later. The scale
// is read, never assumed from the time a step took, so a loaded machine
// makes the test weaker, not wrong.
func TestSlowStart(t *testing.T) {
	const slowStart = 4 * time.Second
	for _, algo := range []string{"round-robin", "least-connections"} {
		t.Run(algo, func(t *testing.T) {
			t.Parallel()
			a := lbtest.NewTCP(t, lbtest.Named("a"))
			b := lbtest.NewTCP(t, lbtest.Named("b"))
			h := startServer(t, listenerTOML("l", "p", "")+
				poolTOML("p", fmt.Sprintf("algorithm = %q\nmax_fails = 0\nslow_start = %q", algo, slowStart), a.Addr, b.Addr)+
				healthTOML(`check = "tcp"`, `interval = "20ms"`, `timeout = "1s"`, "rise = 1", "fall = 2"))
			be := runtimeBackend(h, b.Addr)
			const n = 30
			if s := slowStartShare(t, h, n); s < 0.4 || s > 0.6 {
				t.Fatalf("at start (no ramp): b got %.0f%% of connections, want ~50%%", 100*s)
			}
			if sc := be.b.WeightScale(); sc != 1000 {
				t.Fatalf("weight scale %d at start, want 1000: slow start applies to a comeback only", sc)
			}

			addr := b.Addr
			b.Close()
			waitHealth(h, addr, "down", 10*time.Second)
			restarted := time.Now()
			lbtest.NewTCPAt(t, addr, lbtest.Named("b"))
			waitHealth(h, addr, "up", 10*time.Second)
			// The ramp started after the restart: read the scale, then the
			// clock, which bounds how far the ramp can have gone (one step
			// of slow_start/20 = 45‰ of rounding).
			sc := be.b.WeightScale()
			if most := 100 + 900*time.Since(restarted).Seconds()/slowStart.Seconds() + 45; float64(sc) > most {
				t.Errorf("weight scale %d‰ %v after the restart, want at most %.0f‰: the ramp starts at 100‰", sc, time.Since(restarted), most)
			}
			early := slowStartShare(t, h, n)
			// The scale only grows during the window: at its end it bounds
			// b's share of every pick in it (plus a little for round-robin's
			// carried-over state and rounding).
			scale := be.b.WeightScale()
			bound := float64(scale)/float64(1000+scale) + 0.12
			lbtest.Eventually(t, slowStart+10*time.Second, func() bool { return be.b.WeightScale() == 1000 }, "ramp not finished")
			late := slowStartShare(t, h, n)
			t.Logf("b's share: %.0f%% just after its return (scale at most %d‰), %.0f%% after slow_start", 100*early, scale, 100*late)
			if early > bound {
				t.Errorf("b got %.0f%% of new connections at a scale of at most %d‰, want <= %.0f%%", 100*early, scale, 100*bound)
			}
			if scale <= 500 && early > 0.35 {
				t.Errorf("b got %.0f%% of new connections just after its return, want well below its fair 50%%", 100*early)
			}
			if late < 0.4 || late > 0.6 {
				t.Errorf("b got %.0f%% of new connections after slow_start, want ~50%%", 100*late)
			}
		})
	}
}

// slowStartShare opens n connections through listener l and keeps them
// open while it counts them (so least-connections weighs open connections
// against the weights, as it would under load); it returns the share served
// by "b", then closes them all and waits until no connection is active.
func slowStartShare(t *testing.T, h *harness, n int) float64 {
	t.Helper()
	var conns []net.Conn
	nb := 0
	for i := range n {
		c, err := net.DialTimeout("tcp", h.addr("l"), 2*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
		name, err := lbtest.ReadAllTimeout(t, c, 5*time.Second) // Named half-closes after its name
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if string(name) == "b" {
			nb++
		}
	}
	for _, c := range conns {
		c.Close()
	}
	lbtest.Eventually(t, 5*time.Second, func() bool {
		for _, p := range h.srv.Status().Pools {
			for _, x := range p.Backends {
				if x.Active != 0 {
					return false
				}
			}
		}
		return true
	}, "connections still active")
	return float64(nb) / float64(n)
}

// TestHealthReload: a backend that stays keeps its health and admin state; a
// new one starts unknown (counts up) and is checked at once; removed ones
// stop being checked and lose their metric series; a failed reload leaves
// no trace.
func TestHealthReload(t *testing.T) {
	var okHTTP httpCheckServer
	okHTTP.code.Store(200)
	a := lbtest.NewTCP(t, okHTTP.handle)
	b := lbtest.NewTCP(t, okHTTP.handle)
	d := lbtest.ClosedPort(t)
	// interval 20s: any verdict seen sooner comes from a first check; a
	// timeout of 3s that a live backend's check never reaches, even on a
	// loaded machine (its first check alone decides).
	const (
		interval = 20 * time.Second
		timeout  = 3 * time.Second
	)
	hc := healthTOML(`check = "http"`, `interval = "20s"`, `timeout = "3s"`, "rise = 2", "fall = 2")
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", a.Addr, b.Addr, d)+hc)
	waitHealth(h, d, "down", 10*time.Second)
	lbtest.Eventually(t, 10*time.Second, func() bool { return checksCounted(h, b.Addr, "success") >= 1 })
	if _, err := h.srv.SetBackendAdmin("p", b.Addr, balancer.Disabled); err != nil {
		t.Fatal(err)
	}
	aBefore := runtimeBackend(h, a.Addr)

	// A new backend that accepts and never answers: its first check takes
	// the whole timeout, so right after the reload it is still unknown.
	n := lbtest.NewTCP(t, lbtest.Silent)
	reloading := time.Now()
	reload(t, h, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", a.Addr, b.Addr, d, n.Addr)+hc)
	if got := healthOf(h, d); got != "down" {
		t.Errorf("kept backend %s is %s after the reload, want down (state kept)", d, got)
	}
	if got := healthOf(h, n.Addr); got != "up" && time.Since(reloading) < timeout {
		t.Errorf("new backend is %s before its first check completed, want up (unknown counts up)", got)
	}
	for _, s := range h.srv.Status().Pools[0].Backends {
		if s.Address == b.Addr && s.Admin != "disabled" {
			t.Errorf("kept backend %s: admin %s after the reload, want disabled", b.Addr, s.Admin)
		}
	}
	if runtimeBackend(h, a.Addr) != aBefore {
		t.Error("kept backend's runtime state was replaced by the reload")
	}
	// Its first check ends by its timeout; a check that waited for the
	// interval would end after interval+timeout.
	waitHealth(h, n.Addr, "down", interval)
	if d := time.Since(reloading); d > interval/2 {
		t.Errorf("new backend down %v after the reload, want its first check at once (timeout %v, interval %v)", d, timeout, interval)
	}

	// A reload that fails (its new listener cannot bind) changes nothing,
	// and leaves no metric series for the backend it would have added.
	extra := lbtest.ClosedPort(t)
	busy := lbtest.NewTCP(t, lbtest.Silent)
	bad := fmt.Sprintf("[listeners.busy]\nbind = %q\npool = \"p\"\n", busy.Addr) +
		listenerTOML("l", "p", "") + poolTOML("p", "max_fails = 0", a.Addr, b.Addr, d, n.Addr, extra) + hc
	cfg, err := config.Parse("test.toml", []byte(bad))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Reload(cfg); err == nil {
		t.Fatal("reload binding a busy address succeeded")
	}
	for _, name := range []string{"lbctl_backend_up", "lbctl_health_checks_total"} {
		if hasSeries(t, h, name, map[string]string{"backend": extra}) {
			t.Errorf("failed reload left a %s series for %s", name, extra)
		}
	}

	// Removing backends stops their checks and deletes their series.
	reload(t, h, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", a.Addr, b.Addr)+hc)
	for _, gone := range []string{d, n.Addr} {
		if _, known := h.srv.health.checker.State("p|" + gone); known {
			t.Errorf("removed backend %s is still checked", gone)
		}
		for _, name := range []string{"lbctl_backend_up", "lbctl_health_checks_total"} {
			if hasSeries(t, h, name, map[string]string{"pool": "p", "backend": gone}) {
				t.Errorf("removed backend %s keeps its %s series", gone, name)
			}
		}
	}
	if !hasSeries(t, h, "lbctl_backend_up", map[string]string{"pool": "p", "backend": a.Addr}) {
		t.Error("kept backend lost its lbctl_backend_up series")
	}

	// Removing the whole pool (listener and pool renamed) stops its checks.
	reload(t, h, listenerTOML("l", "q", "")+strings.ReplaceAll(poolTOML("p", "", a.Addr), "pools.p", "pools.q"))
	for _, gone := range []string{a.Addr, b.Addr} {
		if _, known := h.srv.health.checker.State("p|" + gone); known {
			t.Errorf("backend %s of the removed pool is still checked", gone)
		}
		if hasSeries(t, h, "lbctl_backend_up", map[string]string{"pool": "p", "backend": gone}) {
			t.Errorf("backend %s of the removed pool keeps its lbctl_backend_up series", gone)
		}
	}
	lbtest.Eventually(t, 10*time.Second, func() bool {
		_, known := h.srv.health.checker.State("q|" + a.Addr)
		return known
	}, "the new pool's backend is not checked")
}

// TestHealthReloadCheckChange: turning active checks off marks a backend
// held down by them up again; turning them on checks at once.
func TestHealthReloadCheckChange(t *testing.T) {
	d := lbtest.ClosedPort(t)
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	hc := healthTOML(`check = "tcp"`, `interval = "20ms"`, `timeout = "1s"`, "rise = 1", "fall = 1")
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", a.Addr, d)+hc)
	waitHealth(h, d, "down", 10*time.Second)
	reload(t, h, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", a.Addr, d)+noHealth)
	if got := healthOf(h, d); got != "up" {
		t.Errorf("with check = none the backend is %s, want up", got)
	}
	reload(t, h, listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", a.Addr, d)+hc)
	waitHealth(h, d, "down", 10*time.Second)
}

// TestHealthReloadChecksOnDuringEjection: active checks turned on while a
// passive ejection holds start from the active verdict (up, unchecked), not
// from the ejected state, so a failing first check is recorded and keeps
// the backend down once the ejection ends.
func TestHealthReloadChecksOnDuringEjection(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	d := lbtest.ClosedPort(t)
	// The ejection must outlast the reload below, however slow the machine.
	pool := poolTOML("p", "retries = 1\nmax_fails = 1\nfail_timeout = \"2s\"", a.Addr, d)
	h := startServer(t, listenerTOML("l", "p", "")+pool+noHealth)
	for i := 0; i < 4 && healthOf(h, d) == "up"; i++ {
		whoServed(t, h, 1)
	}
	if got := healthOf(h, d); got != "down" {
		t.Fatalf("refused connects left the backend %s", got)
	}
	reload(t, h, listenerTOML("l", "p", "")+pool+
		healthTOML(`check = "tcp"`, `interval = "20ms"`, `timeout = "1s"`, "rise = 2", "fall = 2"))
	be := runtimeBackend(h, d)
	lbtest.Eventually(t, 15*time.Second, func() bool {
		be.mu.Lock()
		defer be.mu.Unlock()
		return !be.passiveDown && checksCounted(h, d, "failure") >= 1
	}, "ejection not over, or no check ran")
	if got := healthOf(h, d); got != "down" {
		t.Errorf("after the ejection, with its active checks failing, the backend is %s, want down", got)
	}
}

// TestHealthLogsOncePerChange: a dead backend is logged when its state
// changes, not per check nor per connection that avoids it.
func TestHealthLogsOncePerChange(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	d := lbtest.ClosedPort(t)
	logs, start := observed()
	h := start(t, listenerTOML("l", "p", "")+poolTOML("p", "retries = 1", a.Addr, d)+
		healthTOML(`check = "tcp"`, `interval = "10ms"`, `timeout = "1s"`, "rise = 2", "fall = 2"))
	if got := whoServed(t, h, 10); got["a"] != 10 {
		t.Errorf("served %v, want a only", got)
	}
	lbtest.Eventually(t, 10*time.Second, func() bool { return checksCounted(h, d, "failure") >= 15 })
	var about []string
	for _, e := range logs.FilterField(zap.String("backend", d)).All() {
		about = append(about, e.Message)
	}
	if len(about) != 1 || about[0] != "backend down" {
		t.Errorf("info+ log lines about the dead backend: %q, want exactly one \"backend down\"", about)
	}
}

// TestHealthSpecFromConfig: the checker's spec follows the pool's
// [health] table; UDP pools check over UDP.
func TestHealthSpecFromConfig(t *testing.T) {
	parse := func(t *testing.T, pool string) *config.Pool {
		t.Helper()
		cfg, err := config.Parse("test.toml", []byte(listenerTOML("l", "p", "")+pool))
		if err != nil {
			t.Fatal(err)
		}
		return cfg.Pools["p"]
	}
	tests := []struct {
		name     string
		protocol string
		pool     string
		check    func(t *testing.T, s health.Spec)
	}{{
		name: "defaults", protocol: "tcp", pool: poolTOML("p", "", "127.0.0.1:1"),
		check: func(t *testing.T, s health.Spec) {
			if s.Kind != health.KindTCP || s.Network != "tcp" || s.Interval != 2*time.Second ||
				s.Timeout != time.Second || s.Rise != 2 || s.Fall != 3 || s.Port != 0 {
				t.Errorf("spec %+v", s)
			}
		},
	}, {
		name: "http with a status range", protocol: "tcp",
		pool: poolTOML("p", "", "127.0.0.1:1") + healthTOML(`check = "http"`, `path = "/hz"`, `host = "h.example"`, `expect_status = ["2xx", 301]`),
		check: func(t *testing.T, s health.Spec) {
			if s.Kind != health.KindHTTP || s.Path != "/hz" || s.Host != "h.example" {
				t.Errorf("spec %+v", s)
			}
			for code, want := range map[int]bool{200: true, 204: true, 301: true, 302: false, 500: false} {
				if got := s.StatusOK(code); got != want {
					t.Errorf("StatusOK(%d) = %v, want %v", code, got, want)
				}
			}
		},
	}, {
		name: "send-expect over udp for a udp pool", protocol: "udp",
		pool: poolTOML("p", "", "127.0.0.1:1") + healthTOML(`check = "send-expect"`, `send = "\\x01PING\r\n"`, `expect = "PONG"`, "port = 9999"),
		check: func(t *testing.T, s health.Spec) {
			if s.Kind != health.KindSendExpect || s.Network != "udp" || string(s.Send) != "\x01PING\r\n" ||
				string(s.Expect) != "PONG" || s.Port != 9999 {
				t.Errorf("spec %+v", s)
			}
		},
	}, {
		name: "none", protocol: "tcp", pool: poolTOML("p", "", "127.0.0.1:1") + noHealth,
		check: func(t *testing.T, s health.Spec) {
			if s.Kind != health.KindNone {
				t.Errorf("kind %q, want none", s.Kind)
			}
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, healthSpec(&pool{name: "p", cfg: parse(t, tc.pool), protocol: tc.protocol}))
		})
	}
}
