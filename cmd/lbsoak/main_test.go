package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestConfigVariantsLoad: every configuration a reload may write is valid.
func TestConfigVariantsLoad(t *testing.T) {
	c := configFile{admin: "127.0.0.1:9900", tcpBind: "127.0.0.1:8080", udpBind: "127.0.0.1:8053",
		tcp: []string{"127.0.0.1:9001", "127.0.0.1:9002"}, udp: []string{"127.0.0.1:9101", "127.0.0.1:9102"},
		liveBind: "127.0.0.1:8081", liveFile: "/tmp/lbsoak-live.json", drain: 90 * time.Second}
	for v := 0; v < 6; v++ {
		if _, err := config.Parse("soak.toml", []byte(c.render(v))); err != nil {
			t.Fatalf("variant %d: %v\n%s", v, err, c.render(v))
		}
	}
}

func TestSumMetric(t *testing.T) {
	text := `# HELP go_goroutines Number of goroutines.
go_goroutines 17
go_goroutines_total_bogus 99
lbctl_config_reloads_total{result="failure"} 0
lbctl_config_reloads_total{result="success"} 3
lbctl_connections_active{backend="a",listener="tcp",pool="tcp"} 2
lbctl_connections_active{backend="b",listener="tcp",pool="tcp"} 5
`
	for _, tc := range []struct {
		name, labels string
		want         float64
	}{
		{"go_goroutines", "", 17},
		{"lbctl_config_reloads_total", `result="success"`, 3},
		{"lbctl_connections_active", "", 7},
		{"lbctl_connections_active", `backend="b"`, 5},
		{"lbctl_connections_active", `backend="c"`, 0},
	} {
		if got := sumMetric(text, tc.name, tc.labels); got != tc.want {
			t.Errorf("sumMetric(%s, %s) = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}

// TestBackendsTagAndDie: streams through a backend verify and carry its
// tag; a kill resets them and marks the generation killed; a restart
// serves again on the same address under a new generation.
func TestBackendsTagAndDie(t *testing.T) {
	b, err := startTCPBackend(3)
	if err != nil {
		t.Fatal(err)
	}
	defer b.kill()
	r := stream(b.addr, 3<<20, 42, 10*time.Second)
	if r.err != nil || r.corrupt != "" || r.tag != (tag{3, 0}) {
		t.Fatalf("stream: %+v", r)
	}
	if b.killed(0) {
		t.Fatal("generation 0 reported killed while up")
	}
	b.kill()
	if !b.killed(0) || !b.isDown() {
		t.Fatal("kill not recorded")
	}
	if r := stream(b.addr, 10, 1, 2*time.Second); r.err == nil {
		t.Fatal("a killed backend served a stream")
	}
	if err := b.restart(); err != nil {
		t.Fatal(err)
	}
	if r := stream(b.addr, 1000, 2, 5*time.Second); r.err != nil || r.tag != (tag{3, 1}) || !b.killed(0) || b.killed(1) {
		t.Fatalf("after restart: %+v", r)
	}

	u, err := startUDPBackend(1)
	if err != nil {
		t.Fatal(err)
	}
	defer u.kill()
	c, err := net.Dial("udp", u.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	n, err := c.Read(buf)
	if err != nil || !bytes.Equal(buf[:n-tagLen], []byte("hello")) || parseTag(buf[n-tagLen:n]) != (tag{1, 0}) {
		t.Fatalf("udp reply %q, %v", buf[:n], err)
	}
}

func TestLedgerDownDuring(t *testing.T) {
	var l ledger
	t0 := time.Unix(1000, 0)
	k := l.killed(kindUDP, t0)
	if !l.downDuring(kindUDP, t0.Add(-time.Second), t0.Add(time.Second)) || l.downDuring(kindTCP, t0, t0.Add(time.Second)) {
		t.Fatal("a UDP kill must excuse UDP losses only")
	}
	l.restarted(k, t0.Add(5*time.Second))
	if l.downDuring(kindUDP, t0.Add(6*time.Second), t0.Add(7*time.Second)) {
		t.Fatal("a restarted backend still counts as down")
	}
	if !l.downDuring(kindUDP, t0.Add(4*time.Second), t0.Add(7*time.Second)) {
		t.Fatal("a window overlapping the outage must count")
	}
}

// TestHistory: a listing's history answers "steady over a window" and
// "removed when, within a window".
func TestHistory(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	h := newHistory(false)
	h.set(true, at(0))
	h.set(true, at(1)) // no change
	h.set(false, at(10))
	h.set(true, at(12))
	if !h.now() || len(h.changes) != 3 {
		t.Fatalf("changes %+v", h.changes)
	}
	if h.steady(at(-1), at(5)) || !h.steady(at(0), at(9)) || h.steady(at(5), at(11)) || !h.steady(at(12), at(20)) {
		t.Fatal("steady")
	}
	if off, ok := h.offSince(at(5), at(11)); !ok || !off.Equal(at(10)) {
		t.Fatalf("offSince(5, 11) = %v, %v", off, ok)
	}
	if off, ok := h.offSince(at(11), at(15)); !ok || !off.Equal(at(10)) {
		t.Fatalf("offSince(11, 15) = %v, %v", off, ok)
	}
	if _, ok := h.offSince(at(2), at(9)); ok {
		t.Fatal("no removal between 2 and 9")
	}
	if off, ok := h.offSince(at(-5), at(-2)); !ok || !off.Equal(at(-5)) {
		t.Fatalf("before the first listing: %v, %v", off, ok)
	}
}

// TestLiveFileRotation: every version of the file is a valid list that
// keeps a backend that is up and was listed before.
func TestLiveFileRotation(t *testing.T) {
	s := &soak{}
	s.live.file = t.TempDir() + "/live.json"
	for i := 0; i < 5; i++ {
		s.live.backends = append(s.live.backends, &liveBackend{tcpBackend: &tcpBackend{id: uint32(liveIDBase + i),
			addr: "127.0.0.1:" + string(rune('1'+i)) + "000"}, listed: newHistory(false), up: newHistory(true), weight: 1})
	}
	s.live.backends[2].down = true
	if err := s.restoreLive(); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200; i++ {
		var before []*liveBackend
		for _, b := range s.live.backends {
			if b.listed.now() && !b.isDown() {
				before = append(before, b)
			}
		}
		if err := s.rotate(rng); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(s.live.file)
		if err != nil {
			t.Fatal(err)
		}
		var entries []fileEntry
		if err := json.Unmarshal(data, &entries); err != nil || len(entries) == 0 {
			t.Fatalf("version %d: %v %s", i, err, data)
		}
		kept := false
		for _, b := range before {
			kept = kept || b.listed.now()
		}
		if !kept {
			t.Fatalf("version %d keeps none of the up backends listed before", i)
		}
	}
	if s.live.reorders.Load() == 0 {
		t.Fatal("no version reordered the same set")
	}
}

// TestClassifyLive: the live pool's outcomes, one case each.
func TestClassifyLive(t *testing.T) {
	s := &soak{}
	s.live.drain = 90 * time.Second
	t0 := time.Now().Add(-time.Hour)
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	for i := 0; i < 3; i++ {
		b := &liveBackend{tcpBackend: &tcpBackend{id: uint32(liveIDBase + i)}, listed: newHistory(false), up: newHistory(true)}
		b.listed.set(true, at(0))
		s.live.backends = append(s.live.backends, b)
	}
	b0, b1, b2 := s.live.backends[0], s.live.backends[1], s.live.backends[2]
	b2.listed.set(false, at(1)) // unlisted from 1 to 110.5, and from 180
	b2.listed.set(true, at(110).Add(500*time.Millisecond))
	b2.listed.set(false, at(180))
	b0.listed.set(false, at(100)) // removed at 100
	b1.up.set(false, at(200))     // killed at 200, back at 205
	b1.gen, b1.down = 0, true
	b1.up.set(true, at(205))
	b1.gen, b1.down = 1, false
	cut := errors.New("reset")
	for _, tc := range []struct {
		name       string
		start, end int
		r          streamResult
		want       *atomic.Int64
	}{
		{"verified", 10, 20, streamResult{tag: tag{liveIDBase, 0}, gotTag: true}, &s.live.short.ok},
		{"verified through the removal", 95, 120, streamResult{tag: tag{liveIDBase, 0}, gotTag: true}, &s.live.short.outlived},
		{"cut while listed and up", 10, 20, streamResult{tag: tag{liveIDBase, 0}, gotTag: true, err: cut}, &s.live.short.cutListed},
		{"cut by its killed backend", 190, 201, streamResult{tag: tag{liveIDBase + 1, 0}, gotTag: true, err: cut}, &s.live.short.killed},
		{"cut 5s after the removal", 90, 105, streamResult{tag: tag{liveIDBase, 0}, gotTag: true, err: cut}, &s.live.short.cutDraining},
		{"reset at drain_timeout", 90, 191, streamResult{tag: tag{liveIDBase, 0}, gotTag: true, err: cut}, &s.live.short.drained},
		{"served long after the removal", 110, 111, streamResult{tag: tag{liveIDBase, 0}, gotTag: true}, &s.live.short.unlisted},
		{"dialed before a re-listing, served after", 110, 111, streamResult{tag: tag{liveIDBase + 2, 0}, gotTag: true, tagAt: at(111)}, &s.live.short.ok},
		{"refused with b1 listed and up", 150, 151, streamResult{err: cut}, &s.live.short.refused},
		{"refused while b1 was down", 199, 202, streamResult{err: cut}, &s.live.short.killed},
		{"refused with b1 just back", 206, 207, streamResult{err: cut}, &s.live.short.refusedNone},
	} {
		before := tc.want.Load()
		if tc.r.gotTag && tc.r.tagAt.IsZero() {
			tc.r.tagAt = at(tc.start)
		}
		s.classifyLive(&s.live.short, "short", 100, at(tc.start), at(tc.end), tc.r)
		if tc.want.Load() != before+1 {
			t.Errorf("%s: not counted where expected (%+v)", tc.name, &s.live.short)
		}
	}
}
