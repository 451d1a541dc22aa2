package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func mustSet(t *testing.T, c *Checker, key, addr string, s Spec, initialUp bool) {
	t.Helper()
	if err := c.Set(key, addr, s, initialUp); err != nil {
		t.Fatalf("Set(%s): %v", key, err)
	}
}

func wantState(t *testing.T, c *Checker, key string, wantUp, wantKnown bool) {
	t.Helper()
	if up, known := c.State(key); up != wantUp || known != wantKnown {
		t.Errorf("State(%s) = up %v known %v, want up %v known %v", key, up, known, wantUp, wantKnown)
	}
}

func failures(res []result) int {
	n := 0
	for _, r := range res {
		if r.outcome == Failure {
			n++
		}
	}
	return n
}

// localFailure is what a dial returns when the process is out of descriptors.
func localFailure(errno syscall.Errno) error {
	return fmt.Errorf("health check: %w", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", errno)})
}

// TestCheckerTCPBackendDiesAndReturns: a killed backend is marked down within
// Interval*Fall + Timeout, and the same port listening again is marked up
// within Interval*Rise + Timeout.
func TestCheckerTCPBackendDiesAndReturns(t *testing.T) {
	srv := newTestServer(t, "127.0.0.1:0", closeAtOnce)
	addr := srv.Addr()
	rec := newRecorder()
	c := rec.checker()
	t.Cleanup(c.Stop)
	// The first check alone decides: its timeout is seconds long, so a
	// loaded machine cannot fail the live backend's first check. The dead
	// backend's checks are refused at once, so the timeout does not slow
	// them down.
	spec := Spec{Kind: KindTCP, Interval: 50 * time.Millisecond, Timeout: 2 * time.Second, Rise: 2, Fall: 3}
	mustSet(t, c, "web/a", addr, spec, true)

	rec.waitResults(t, 10*time.Second, "web/a", 1)
	wantState(t, c, "web/a", true, true)

	killed := time.Now()
	srv.Close()
	evs := rec.waitEvents(t, 10*time.Second, "web/a", 1)
	down := time.Since(killed)
	if evs[0].Up || !errors.Is(evs[0].Err, syscall.ECONNREFUSED) {
		t.Fatalf("event %+v, want down with connection refused", evs[0])
	}
	if bound := spec.Interval*time.Duration(spec.Fall) + spec.Timeout + slack; down > bound {
		t.Errorf("marked down %v after the kill, want within %v", down, bound)
	}
	res := rec.resultsThrough(t, "web/a", 0)
	if n := failures(res); n != spec.Fall {
		t.Errorf("%d failed checks before down, want fall = %d", n, spec.Fall)
	}
	wantState(t, c, "web/a", false, true)

	restarted := time.Now()
	newTestServer(t, addr, closeAtOnce)
	evs = rec.waitEvents(t, 10*time.Second, "web/a", 2)
	up := time.Since(restarted)
	if !evs[1].Up || evs[1].Reason != "2 consecutive checks passed" {
		t.Fatalf("event %+v, want up after 2 consecutive checks", evs[1])
	}
	if bound := spec.Interval*time.Duration(spec.Rise) + spec.Timeout + slack; up > bound {
		t.Errorf("marked up %v after the restart, want within %v", up, bound)
	}
	wantState(t, c, "web/a", true, true)
}

func TestCheckerHTTPStatus(t *testing.T) {
	var status atomic.Int64
	status.Store(500)
	var (
		mu    sync.Mutex
		hosts []string
	)
	srv := newTestServer(t, "127.0.0.1:0", httpStatus(func() int { return int(status.Load()) }, func(r *http.Request) {
		mu.Lock()
		hosts = append(hosts, r.Host)
		mu.Unlock()
	}))
	rec := newRecorder()
	c := rec.checker()
	t.Cleanup(c.Stop)
	// Every answer arrives long before the timeout, even on a loaded
	// machine: the reasons come from the status codes, never the clock.
	spec := Spec{Kind: KindHTTP, Path: "/healthz", Host: "svc.example", StatusOK: StatusRange(200, 299),
		Interval: 20 * time.Millisecond, Timeout: 5 * time.Second, Rise: 2, Fall: 2}
	mustSet(t, c, "web/a", srv.Addr(), spec, true)

	evs := rec.waitEvents(t, 10*time.Second, "web/a", 1)
	if evs[0].Up || evs[0].Reason != "HTTP 500" {
		t.Fatalf("first event %+v, want down with reason HTTP 500", evs[0])
	}
	status.Store(200)
	evs = rec.waitEvents(t, 10*time.Second, "web/a", 2)
	if !evs[1].Up {
		t.Fatalf("second event %+v, want up", evs[1])
	}
	status.Store(503)
	evs = rec.waitEvents(t, 10*time.Second, "web/a", 3)
	if evs[2].Up || evs[2].Reason != "HTTP 503" {
		t.Fatalf("third event %+v, want down with reason HTTP 503", evs[2])
	}
	mu.Lock()
	defer mu.Unlock()
	for _, h := range hosts {
		if h != "svc.example" {
			t.Fatalf("server saw Host %q, want svc.example", h)
		}
	}
}

// TestCheckerFirstCheckDecides: the first result alone sets the state, with
// no waiting for Rise or Fall (Interval is long, so a second check cannot
// have happened). The timeout is seconds long, so the live backend's first
// check passes on a loaded machine too, and short against Interval, so a
// first check within it ran at once.
func TestCheckerFirstCheckDecides(t *testing.T) {
	live := newTestServer(t, "127.0.0.1:0", closeAtOnce)
	dead := closedAddr(t, "tcp")
	spec := Spec{Kind: KindTCP, Interval: 20 * time.Second, Timeout: 3 * time.Second, Rise: 5, Fall: 5}
	tests := []struct {
		name      string
		addr      string
		initialUp bool
		wantUp    bool
		wantEvent string // "" = no transition
	}{
		{"dead backend goes down at once", dead, true, false, "connection refused"},
		{"live backend starting down comes up at once", live.Addr(), false, true, "first check passed"},
		{"live backend stays up silently", live.Addr(), true, true, ""},
		{"dead backend starting down stays down silently", dead, false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			c := rec.checker()
			defer c.Stop()
			start := time.Now()
			mustSet(t, c, "p/x", tt.addr, spec, tt.initialUp)
			wantState(t, c, "p/x", tt.initialUp, false)
			res := rec.waitResults(t, spec.Interval/2, "p/x", 1)
			if d := time.Since(start); d > firstSpreadCap+spec.Timeout+slack {
				t.Errorf("first check done after %v, want at once", d)
			}
			if len(res) != 1 {
				t.Fatalf("%d checks ran, want 1", len(res))
			}
			wantState(t, c, "p/x", tt.wantUp, true)
			_, evs := rec.snapshot("p/x")
			switch {
			case tt.wantEvent == "" && len(evs) != 0:
				t.Errorf("events %+v, want none", evs)
			case tt.wantEvent != "" && (len(evs) != 1 || evs[0].Up != tt.wantUp || !strings.Contains(evs[0].Reason, tt.wantEvent)):
				t.Errorf("events %+v, want one to up=%v with reason %q", evs, tt.wantUp, tt.wantEvent)
			}
		})
	}
}

// TestCheckerHysteresis: a real backend failing every other check with
// rise = fall = 2 never flaps.
func TestCheckerHysteresis(t *testing.T) {
	tests := []struct {
		name      string
		failFirst bool
		wantUp    bool
		wantEvs   int // the first check's own transition, if any
	}{
		{"starting healthy stays up", false, true, 0},
		{"starting sick stays down", true, false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n atomic.Int64
			srv := newTestServer(t, "127.0.0.1:0", httpStatus(func() int {
				if (n.Add(1)%2 == 1) != tt.failFirst { // 1st, 3rd, ... request
					return 200
				}
				return 500
			}, nil))
			rec := newRecorder()
			c := rec.checker()
			defer c.Stop()
			// A check that timed out would break the alternation: the
			// timeout is seconds long.
			spec := Spec{Kind: KindHTTP, Interval: 15 * time.Millisecond, Timeout: 5 * time.Second, Rise: 2, Fall: 2}
			mustSet(t, c, "p/x", srv.Addr(), spec, true)

			res := rec.waitResults(t, 20*time.Second, "p/x", 12)
			for i, r := range res[:12] {
				if wantOK := (i%2 == 0) != tt.failFirst; (r.err == nil) != wantOK {
					t.Fatalf("check %d: err %v, the server should alternate", i, r.err)
				}
			}
			_, evs := rec.snapshot("p/x")
			if len(evs) != tt.wantEvs {
				t.Errorf("events %+v, want %d", evs, tt.wantEvs)
			}
			up, _ := c.State("p/x")
			if up != tt.wantUp {
				t.Errorf("up = %v, want %v", up, tt.wantUp)
			}
		})
	}
}

// scriptProber returns, for each check, the next result the test feeds it.
type scriptProber struct{ next chan error }

func (p scriptProber) Probe(ctx context.Context, _ string) error {
	select {
	case err := <-p.next:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestCheckerRiseFall drives the state machine with scripted results.
func TestCheckerRiseFall(t *testing.T) {
	type transition struct {
		after int // 1-based check number
		up    bool
	}
	tests := []struct {
		name       string
		initialUp  bool
		rise, fall int
		script     string // S = success, F = failure, L = local failure (EMFILE)
		want       []transition
	}{
		{"first failure marks down at once", true, 2, 3, "F", []transition{{1, false}}},
		{"first success marks up at once", false, 2, 3, "S", []transition{{1, true}}},
		{"fall 3 after a success", true, 2, 3, "SFFF", []transition{{4, false}}},
		{"a success resets the failures", true, 2, 3, "SFFSFFSFF", nil},
		{"rise 2 after the first failure", true, 2, 3, "FSFSS", []transition{{1, false}, {5, true}}},
		{"alternating while up never flaps", true, 2, 2, "SFSFSFSFSF", nil},
		{"alternating while down never flaps", true, 2, 2, "FSFSFSFSFS", []transition{{1, false}}},
		{"rise 1 fall 1 follows every result", true, 1, 1, "SFSF", []transition{{2, false}, {3, true}, {4, false}}},
		{"rise 3", false, 3, 1, "FSSFSSS", []transition{{7, true}}},
		{"local failures are no verdict", true, 2, 3, "SFFLLLLLF", []transition{{9, false}}},
		{"local failures keep a rise streak", true, 2, 1, "FSLLLS", []transition{{1, false}, {6, true}}},
		{"local failures keep a fall streak", true, 2, 2, "SFLLLS", nil},
		{"a first local failure leaves the target unknown", true, 2, 3, "LLLF", []transition{{4, false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			c := rec.checker()
			defer c.Stop()
			p := scriptProber{next: make(chan error)}
			c.newProber = func(Spec) (Prober, error) { return p, nil }
			spec := Spec{Kind: KindTCP, Interval: time.Millisecond, Timeout: time.Minute, Rise: tt.rise, Fall: tt.fall}
			mustSet(t, c, "p/x", "127.0.0.1:1", spec, tt.initialUp)

			var got []transition
			for i, r := range tt.script {
				var err error
				switch r {
				case 'F':
					err = fmt.Errorf("scripted failure %d", i+1)
				case 'L':
					err = localFailure(syscall.EMFILE)
				}
				p.next <- err
				rec.waitResults(t, 10*time.Second, "p/x", i+1)
				_, evs := rec.snapshot("p/x")
				if len(evs) > len(got) {
					got = append(got, transition{i + 1, evs[len(evs)-1].Up})
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("transitions %v, want %v", got, tt.want)
			}
		})
	}
}

// TestCheckerLocalFailureIsNoVerdict: a check that fails because this
// process is out of descriptors, buffers or local ports is reported as
// NoVerdict and changes nothing: no transition, no failure, the state and
// whether it is known stay as they were.
func TestCheckerLocalFailureIsNoVerdict(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.EADDRNOTAVAIL} {
		t.Run(errno.Error(), func(t *testing.T) {
			rec := newRecorder()
			c := rec.checker()
			defer c.Stop()
			p := scriptProber{next: make(chan error)}
			c.newProber = func(Spec) (Prober, error) { return p, nil }
			// Fall = 1: one real failure marks the target down.
			spec := Spec{Kind: KindTCP, Interval: time.Millisecond, Timeout: time.Minute, Rise: 1, Fall: 1}
			mustSet(t, c, "p/x", "127.0.0.1:1", spec, true)
			checks := 0
			feed := func(err error, times int) {
				t.Helper()
				for range times {
					p.next <- err
					checks++
					rec.waitResults(t, 10*time.Second, "p/x", checks)
				}
			}

			feed(localFailure(errno), 3) // before any verdict: still unknown
			wantState(t, c, "p/x", true, false)
			feed(nil, 1)
			wantState(t, c, "p/x", true, true)
			feed(localFailure(errno), 5) // known and up: stays so
			wantState(t, c, "p/x", true, true)

			res, evs := rec.snapshot("p/x")
			if len(evs) != 0 {
				t.Errorf("events %+v after local failures only, want none", evs)
			}
			if f := failures(res); f != 0 {
				t.Errorf("%d failures counted, want 0", f)
			}
			for i, r := range res {
				if i == 3 {
					continue // the success
				}
				if r.outcome != NoVerdict || !errors.Is(r.err, errno) {
					t.Errorf("check %d: outcome %v err %v, want no_verdict with %v", i+1, r.outcome, r.err, errno)
				}
			}

			// The same target does go down on a real failure.
			feed(errors.New("connection refused"), 1)
			if evs := rec.waitEvents(t, 10*time.Second, "p/x", 1); evs[0].Up {
				t.Errorf("event %+v after a real failure, want down", evs[0])
			}
		})
	}
}

// timedProber records how long each check of the wrapped Prober took.
type timedProber struct {
	Prober
	mu   sync.Mutex
	took []time.Duration
}

func (p *timedProber) Probe(ctx context.Context, addr string) error {
	start := time.Now()
	err := p.Prober.Probe(ctx, addr)
	p.mu.Lock()
	p.took = append(p.took, time.Since(start))
	p.mu.Unlock()
	return err
}

// TestCheckerSilentBackend: a backend that accepts and never answers is down
// after its first check, by timeout, and no check outlived its timeout.
func TestCheckerSilentBackend(t *testing.T) {
	hold := newTestServer(t, "127.0.0.1:0", silent)
	tests := []struct {
		name string
		spec Spec
	}{
		{"http", Spec{Kind: KindHTTP}},
		{"send-expect", Spec{Kind: KindSendExpect, Send: []byte("PING\r\n"), Expect: []byte("+PONG")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			c := rec.checker()
			defer c.Stop()
			tp := &timedProber{}
			c.newProber = func(s Spec) (Prober, error) {
				p, err := NewProber(s)
				tp.Prober = p
				return tp, err
			}
			tt.spec.Interval, tt.spec.Timeout = 20*time.Millisecond, 100*time.Millisecond
			mustSet(t, c, "p/x", hold.Addr(), tt.spec, true)

			evs := rec.waitEvents(t, 10*time.Second, "p/x", 1)
			if evs[0].Up || !errors.Is(evs[0].Err, os.ErrDeadlineExceeded) {
				t.Fatalf("event %+v, want down by timeout", evs[0])
			}
			rec.waitResults(t, 10*time.Second, "p/x", 3)
			c.Stop()
			tp.mu.Lock()
			defer tp.mu.Unlock()
			for i, d := range tp.took {
				if d > tt.spec.Timeout+slack {
					t.Errorf("check %d took %v, timeout %v", i, d, tt.spec.Timeout)
				}
			}
		})
	}
}

// TestCheckerSetUpdates: Set on a known target keeps its state and counters
// and uses the new spec; a new address starts afresh; Kind none removes.
func TestCheckerSetUpdates(t *testing.T) {
	srv := newTestServer(t, "127.0.0.1:0", rawReply("SSH-2.0-OpenSSH_9.6\r\n")) // passes tcp, fails http
	rec := newRecorder()
	c := rec.checker()
	t.Cleanup(c.Stop)
	// Live checks pass and failing ones fail on the answer, never by the
	// clock: the timeout is seconds long.
	spec := Spec{Kind: KindTCP, Interval: 20 * time.Millisecond, Timeout: 5 * time.Second, Rise: 2, Fall: 3}
	mustSet(t, c, "p/x", srv.Addr(), spec, true)
	before := len(rec.waitResults(t, 10*time.Second, "p/x", 2))

	// Same address, new check kind: the state is kept (no first-check rule),
	// so it takes Fall failures of the new check to go down.
	spec.Kind = KindHTTP
	mustSet(t, c, "p/x", srv.Addr(), spec, false)
	wantState(t, c, "p/x", true, true)
	evs := rec.waitEvents(t, 10*time.Second, "p/x", 1)
	if evs[0].Up || !strings.Contains(evs[0].Reason, "malformed HTTP status line") {
		t.Fatalf("event %+v, want down with the HTTP check's error", evs[0])
	}
	res := rec.resultsThrough(t, "p/x", 0)
	if n := failures(res[before:]); n != spec.Fall {
		t.Errorf("%d HTTP failures before down, want fall = %d", n, spec.Fall)
	}

	// A new address: unknown, counting as initialUp, until its first check.
	dead := closedAddr(t, "tcp")
	mustSet(t, c, "p/x", dead, spec, true)
	wantState(t, c, "p/x", true, false)
	evs = rec.waitEvents(t, 10*time.Second, "p/x", 2)
	if evs[1].Up || evs[1].Addr != dead {
		t.Fatalf("event %+v, want down at %s", evs[1], dead)
	}

	// Kind none removes the target.
	if err := c.Set("p/x", dead, Spec{Kind: KindNone}, true); err != nil {
		t.Fatalf("Set none: %v", err)
	}
	wantState(t, c, "p/x", false, false)

	// An invalid spec is refused and changes nothing.
	if err := c.Set("p/y", dead, Spec{Kind: KindHTTP, Path: "nope"}, true); err == nil {
		t.Error("Set with an invalid path: got nil error")
	}
	wantState(t, c, "p/y", false, false)
}

// TestCheckerIntervalChange: a shorter Interval set on a running target takes
// effect without waiting out the old one.
func TestCheckerIntervalChange(t *testing.T) {
	srv := newTestServer(t, "127.0.0.1:0", closeAtOnce)
	rec := newRecorder()
	c := rec.checker()
	t.Cleanup(c.Stop)
	spec := Spec{Kind: KindTCP, Interval: time.Hour, Timeout: 5 * time.Second}
	mustSet(t, c, "p/x", srv.Addr(), spec, true)
	rec.waitResults(t, 10*time.Second, "p/x", 1)

	spec.Interval = 20 * time.Millisecond
	mustSet(t, c, "p/x", srv.Addr(), spec, true)
	rec.waitResults(t, 10*time.Second, "p/x", 4)
}

func TestCheckerRemove(t *testing.T) {
	srv := newTestServer(t, "127.0.0.1:0", closeAtOnce)
	asked := make(chan struct{}, 1)
	hold := newTestServer(t, "127.0.0.1:0", func(conn net.Conn) {
		if _, err := conn.Read(make([]byte, 1024)); err == nil {
			select {
			case asked <- struct{}{}: // the check is past its dial, waiting for an answer
			default:
			}
		}
		silent(conn)
	})
	rec := newRecorder()
	c := rec.checker()
	t.Cleanup(c.Stop)
	fast := Spec{Kind: KindTCP, Interval: 15 * time.Millisecond, Timeout: 5 * time.Second}
	mustSet(t, c, "p/a", srv.Addr(), fast, true)
	mustSet(t, c, "p/b", srv.Addr(), fast, true)
	rec.waitResults(t, 10*time.Second, "p/a", 2)

	c.Remove("p/a")
	wantState(t, c, "p/a", false, false)
	resA, _ := rec.snapshot("p/a")
	resB, _ := rec.snapshot("p/b")
	rec.waitResults(t, 10*time.Second, "p/b", len(resB)+5)
	if after, _ := rec.snapshot("p/a"); len(after) != len(resA) {
		t.Errorf("%d results for p/a after Remove returned", len(after)-len(resA))
	}
	c.Remove("p/unknown") // no-op

	// Removing a target in the middle of a long check does not wait for
	// the check's timeout.
	mustSet(t, c, "p/slow", hold.Addr(), Spec{Kind: KindHTTP, Interval: time.Second, Timeout: time.Minute}, true)
	select {
	case <-asked:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow check never reached the server")
	}
	start := time.Now()
	c.Remove("p/slow")
	if d := time.Since(start); d > slack {
		t.Errorf("Remove took %v during a check with a 1m timeout", d)
	}
	if res, _ := rec.snapshot("p/slow"); len(res) != 0 {
		t.Errorf("cut-short check reported %v", res)
	}
}

func TestCheckerStop(t *testing.T) {
	hold := newTestServer(t, "127.0.0.1:0", silent)
	rec := newRecorder()
	c := rec.checker()
	for i := range 20 {
		mustSet(t, c, fmt.Sprintf("p/%d", i), hold.Addr(), Spec{Kind: KindHTTP, Interval: time.Second, Timeout: time.Minute}, true)
	}
	start := time.Now()
	c.Stop()
	if d := time.Since(start); d > slack {
		t.Errorf("Stop took %v with checks in flight", d)
	}
	c.Stop() // a second Stop is fine
	if err := c.Set("p/late", hold.Addr(), Spec{Kind: KindTCP}, true); !errors.Is(err, ErrStopped) {
		t.Errorf("Set after Stop: got %v, want ErrStopped", err)
	}
	if res, evs := rec.snapshot(""); len(res)+len(evs) != 0 {
		t.Errorf("callbacks for stopped checks: %v %v", res, evs)
	}
}

// TestCheckerFirstCheckSpread: 200 targets added together (Interval 1s) do
// not all dial in the same millisecond, yet all are checked at once, within
// Interval/10 = 100ms. The spread is asserted on the delays the Checker drew
// (a loaded machine may fire many timers late in one batch, which says
// nothing about the Checker), and each first check is asserted to start no
// earlier than its own delay after its Set.
func TestCheckerFirstCheckSpread(t *testing.T) {
	const n = 200
	var (
		mu      sync.Mutex
		drawn   time.Duration            // the delay drawn by the last Set
		earlier = map[string]time.Time{} // addr -> earliest allowed first check
		early   []string
		checked = map[string]bool{}
		all     = make(chan struct{})
	)
	rec := newRecorder()
	c := rec.checker()
	defer c.Stop()
	c.pickFirstDelay = func(interval time.Duration) time.Duration {
		drawn = firstDelay(interval) // called by Set, in the test goroutine
		return drawn
	}
	c.newProber = func(Spec) (Prober, error) {
		return proberFunc(func(_ context.Context, addr string) error {
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			if now.Before(earlier[addr]) {
				early = append(early, addr)
			}
			if !checked[addr] {
				checked[addr] = true
				if len(checked) == n {
					close(all)
				}
			}
			return nil
		}), nil
	}
	spec := Spec{Kind: KindTCP, Interval: time.Second, Timeout: time.Second}
	delays := make([]time.Duration, 0, n)
	for i := range n {
		addr := fmt.Sprintf("127.0.0.1:%d", 1000+i) // never dialled: the prober is fake
		before := time.Now()
		mu.Lock() // the target's goroutine may check before Set returns
		err := c.Set(addr, addr, spec, true)
		earlier[addr] = before.Add(drawn)
		mu.Unlock()
		if err != nil {
			t.Fatalf("Set(%s): %v", addr, err)
		}
		delays = append(delays, drawn)
	}
	setDone := time.Now()
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		t.Fatal("not every target was checked")
	}
	c.Stop()
	maxDelay := spec.Interval / firstSpreadFraction     // 100ms
	if d := time.Since(setDone); d > maxDelay+2*slack { // timers fire late on a loaded machine
		t.Errorf("the last first check ran %v after the last Set, want within about %v", d, maxDelay)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(early) > 0 {
		t.Errorf("%d first checks started before their drawn delay, e.g. %s", len(early), early[0])
	}

	slices.Sort(delays)
	if delays[n-1] >= maxDelay {
		t.Errorf("largest first delay %v, want under %v", delays[n-1], maxDelay)
	}
	// Uniform over 100ms, 200 delays span about 99ms; under half that
	// happens with negligible probability.
	if spread := delays[n-1] - delays[0]; spread < maxDelay/2 {
		t.Errorf("first delays spread over %v, want at least %v", spread, maxDelay/2)
	}
	// No 5ms window (an expected 10 delays) holds a quarter of them.
	for i, j := 0, 0; i < n; i++ {
		for j < n && delays[j]-delays[i] < 5*time.Millisecond {
			j++
		}
		if j-i > n/4 {
			t.Fatalf("%d of %d first delays within 5ms of %v", j-i, n, delays[i])
		}
	}
}

type proberFunc func(context.Context, string) error

func (f proberFunc) Probe(ctx context.Context, addr string) error { return f(ctx, addr) }

// TestDelays checks the bounds of the random delays without a clock.
func TestDelays(t *testing.T) {
	tests := []struct {
		interval   time.Duration
		firstMax   time.Duration // exclusive
		nextMin    time.Duration // exclusive
		nextMax    time.Duration // inclusive
		wantSpread bool
	}{
		{time.Second, 100 * time.Millisecond, 900 * time.Millisecond, time.Second, true},
		{10 * time.Second, 200 * time.Millisecond, 9 * time.Second, 10 * time.Second, true},
		{20 * time.Millisecond, 2 * time.Millisecond, 18 * time.Millisecond, 20 * time.Millisecond, true},
		{5 * time.Nanosecond, 1, 4, 5, false},
	}
	for _, tt := range tests {
		t.Run(tt.interval.String(), func(t *testing.T) {
			var lo, hi time.Duration = time.Hour, 0
			for range 2000 {
				d := firstDelay(tt.interval)
				if d < 0 || d >= tt.firstMax {
					t.Fatalf("firstDelay = %v, want in [0, %v)", d, tt.firstMax)
				}
				lo, hi = min(lo, d), max(hi, d)
				if nd := nextDelay(tt.interval); nd <= tt.nextMin || nd > tt.nextMax {
					t.Fatalf("nextDelay = %v, want in (%v, %v]", nd, tt.nextMin, tt.nextMax)
				}
			}
			if tt.wantSpread && hi-lo < tt.firstMax/2 {
				t.Errorf("2000 first delays within [%v, %v], want a spread over [0, %v)", lo, hi, tt.firstMax)
			}
		})
	}
}

// TestCheckerReportsDuration: every result carries how long its probe took:
// a check timing out on a silent backend took about its timeout, a quick
// success took more than nothing and less than the timeout.
func TestCheckerReportsDuration(t *testing.T) {
	hold := newTestServer(t, "127.0.0.1:0", silent)
	live := newTestServer(t, "127.0.0.1:0", closeAtOnce)
	rec := newRecorder()
	c := rec.checker()
	defer c.Stop()
	spec := Spec{Kind: KindHTTP, Interval: 20 * time.Millisecond, Timeout: 100 * time.Millisecond}
	mustSet(t, c, "p/silent", hold.Addr(), spec, true)
	mustSet(t, c, "p/live", live.Addr(), Spec{Kind: KindTCP, Interval: 20 * time.Millisecond, Timeout: time.Second}, true)

	for _, r := range rec.waitResults(t, 10*time.Second, "p/silent", 2) {
		if r.outcome != Failure || r.took < spec.Timeout || r.took > spec.Timeout+slack {
			t.Errorf("silent backend: %v after %v, want a failure after about %v", r.outcome, r.took, spec.Timeout)
		}
	}
	for _, r := range rec.waitResults(t, 10*time.Second, "p/live", 2) {
		if r.outcome != Success || r.took <= 0 || r.took >= time.Second {
			t.Errorf("live backend: %v after %v, want a success in (0, 1s)", r.outcome, r.took)
		}
	}
}
