package server

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/metrics"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestAdmits(t *testing.T) {
	for _, tc := range []struct {
		name        string
		allow, deny []netip.Prefix
		yes, no     []string
	}{
		{"no rules admit everyone", nil, nil, []string{"10.0.0.1", "::1", "::ffff:1.2.3.4"}, nil},
		{"allow list", prefixes("10.0.0.0/8", "2001:db8::/32"), nil,
			[]string{"10.1.2.3", "2001:db8::5", "::ffff:10.9.9.9"},
			[]string{"11.0.0.1", "2001:db9::1", "::ffff:11.0.0.1", "::1"}},
		{"deny list alone", nil, prefixes("192.0.2.0/24", "::1/128"),
			[]string{"192.0.3.1", "::2"},
			[]string{"192.0.2.77", "::ffff:192.0.2.77", "::1"}},
		{"deny wins over allow", prefixes("10.0.0.0/8"), prefixes("10.0.13.0/24"),
			[]string{"10.0.12.1", "10.0.14.1"},
			[]string{"10.0.13.1", "::ffff:10.0.13.1", "172.16.0.1"}},
		{"IPv6 rules do not match IPv4 clients", prefixes("::/0"), nil,
			[]string{"2001:db8::1"}, []string{"10.0.0.1", "::ffff:10.0.0.1"}},
		{"zones are ignored", prefixes("fe80::/10"), nil, []string{"fe80::1%eth0"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lc := &config.Listener{Allow: tc.allow, Deny: tc.deny}
			for _, a := range tc.yes {
				if !admits(lc, netip.MustParseAddr(a)) {
					t.Errorf("%s refused", a)
				}
			}
			for _, a := range tc.no {
				if admits(lc, netip.MustParseAddr(a)) {
					t.Errorf("%s admitted", a)
				}
			}
		})
	}
}

// fakeClock is a settable nanotime.
type fakeClock struct{ ns int64 }

func (c *fakeClock) now() int64              { return c.ns }
func (c *fakeClock) advance(seconds float64) { c.ns += int64(seconds * 1e9) }

func newTable(capacity int) (*clientTable, *fakeClock) {
	clk := &fakeClock{ns: 1e12}
	return &clientTable{max: capacity, clock: clk.now}, clk
}

var (
	clientA = netip.MustParseAddr("192.0.2.1")
	clientB = netip.MustParseAddr("192.0.2.2")
)

// admitN admits n connections of client and returns their releases, failing
// on the first refusal.
func admitN(t *testing.T, tab *clientTable, lc *config.Listener, client netip.Addr, n int) []func() {
	t.Helper()
	var rel []func()
	for i := 0; i < n; i++ {
		r, reason := tab.admit(lc, client)
		if reason != 0 {
			t.Fatalf("connection %d of %s refused: %s", i+1, client, reason)
		}
		rel = append(rel, r)
	}
	return rel
}

func wantRefused(t *testing.T, tab *clientTable, lc *config.Listener, client netip.Addr, want metrics.Reason) {
	t.Helper()
	if r, reason := tab.admit(lc, client); reason != want {
		if r != nil {
			r()
		}
		t.Fatalf("%s: reason %q, want %q", client, reason, want)
	}
}

func TestClientTableConcurrentLimit(t *testing.T) {
	tab, _ := newTable(0)
	lc := &config.Listener{MaxConnectionsPerClient: 2}
	rel := admitN(t, tab, lc, clientA, 2)
	wantRefused(t, tab, lc, clientA, metrics.ReasonClientLimit)
	admitN(t, tab, lc, clientB, 2) // other clients are not affected
	rel[0]()
	rel[0]() // a second call of the same release changes nothing...
	admitN(t, tab, lc, clientA, 1)
	wantRefused(t, tab, lc, clientA, metrics.ReasonClientLimit) // ...as this shows
	// IPv4-mapped is the same client.
	wantRefused(t, tab, lc, netip.MustParseAddr("::ffff:192.0.2.1").Unmap(), metrics.ReasonClientLimit)
}

func TestClientTableRate(t *testing.T) {
	for _, tc := range []struct {
		name        string
		rate        float64
		burst       int
		first       int     // admitted at once
		wait        float64 // seconds
		afterWait   int     // admitted after the wait
		longAfter   int     // admitted after a long pause (the bucket is capped)
		description string
	}{
		{"burst above the rate", 2, 5, 5, 0.5, 1, 5, ""},
		{"burst 0 means the rate", 3, 0, 3, 1, 3, 3, ""},
		{"a rate below one per second still admits one", 0.5, 0, 1, 1, 0, 1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, clk := newTable(0)
			lc := &config.Listener{ConnectionRatePerClient: tc.rate, ConnectionBurstPerClient: tc.burst}
			for _, r := range admitN(t, tab, lc, clientA, tc.first) {
				r() // the rate counts new connections, not open ones
			}
			wantRefused(t, tab, lc, clientA, metrics.ReasonRateLimit)
			admitN(t, tab, lc, clientB, tc.first)
			clk.advance(tc.wait)
			admitN(t, tab, lc, clientA, tc.afterWait)
			wantRefused(t, tab, lc, clientA, metrics.ReasonRateLimit)
			clk.advance(3600)
			admitN(t, tab, lc, clientA, tc.longAfter)
			wantRefused(t, tab, lc, clientA, metrics.ReasonRateLimit)
		})
	}
}

func TestClientTableBothLimits(t *testing.T) {
	tab, clk := newTable(0)
	lc := &config.Listener{MaxConnectionsPerClient: 1, ConnectionRatePerClient: 1, ConnectionBurstPerClient: 2}
	rel := admitN(t, tab, lc, clientA, 1)
	// Refused for holding a connection: that must not cost a token.
	wantRefused(t, tab, lc, clientA, metrics.ReasonClientLimit)
	wantRefused(t, tab, lc, clientA, metrics.ReasonClientLimit)
	rel[0]()
	admitN(t, tab, lc, clientA, 1)[0]()
	wantRefused(t, tab, lc, clientA, metrics.ReasonRateLimit)
	clk.advance(1)
	admitN(t, tab, lc, clientA, 1)
}

func TestClientTableForgetsIdleClients(t *testing.T) {
	tab, clk := newTable(0)
	conns := &config.Listener{MaxConnectionsPerClient: 3}
	rel := admitN(t, tab, conns, clientA, 2)
	if tab.size() != 1 {
		t.Fatalf("size %d while a client holds connections", tab.size())
	}
	rel[0]()
	rel[1]()
	if tab.size() != 0 {
		t.Fatalf("size %d after the client's last connection closed (no rate limit)", tab.size())
	}

	rated := &config.Listener{ConnectionRatePerClient: 10, ConnectionBurstPerClient: 10}
	admitN(t, tab, rated, clientA, 1)[0]()
	if tab.size() != 1 {
		t.Fatalf("size %d: a client whose bucket refills must be remembered", tab.size())
	}
	clk.advance(2) // refilled, and past the sweep period
	admitN(t, tab, rated, clientB, 1)
	if tab.size() != 1 {
		t.Fatalf("size %d: the refilled client was not forgotten by the sweep", tab.size())
	}
	// No limits: nothing is tracked at all.
	admitN(t, tab, &config.Listener{}, netip.MustParseAddr("10.9.9.9"), 5)
	if tab.size() != 1 {
		t.Fatalf("size %d: a listener without limits tracked a client", tab.size())
	}
}

// TestClientTableBounded: a flood of source addresses never grows the table
// beyond its capacity; new clients get room from clients without
// connections, and are refused only while every entry holds one.
func TestClientTableBounded(t *testing.T) {
	const capacity = 100
	tab, clk := newTable(capacity)
	// A rate so slow that no bucket refills during the test: every entry
	// would be kept if the table were unbounded.
	lc := &config.Listener{ConnectionRatePerClient: 0.0001, MaxConnectionsPerClient: 5}
	admitted, refusedFull := 0, 0
	for i := 0; i < 20000; i++ {
		client := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		r, reason := tab.admit(lc, client)
		switch reason {
		case 0:
			admitted++
			r()
		case metrics.ReasonClientLimit:
			refusedFull++
		default:
			t.Fatalf("client %d: %s", i, reason)
		}
		if n := tab.size(); n > capacity {
			t.Fatalf("table holds %d clients, capacity %d", n, capacity)
		}
		clk.advance(0.0001)
	}
	// 10,000 new clients a second for 2s, one eviction scan per 100ms: each
	// scan lets a table's worth in, the rest are refused.
	if admitted < 20*capacity || admitted > 21*capacity+capacity || refusedFull != 20000-admitted {
		t.Fatalf("admitted %d, refused %d of 20000 new clients", admitted, refusedFull)
	}

	// A table full of clients that hold connections refuses newcomers...
	busy, _ := newTable(capacity)
	var held []func()
	for i := 0; i < capacity; i++ {
		held = append(held, admitN(t, busy, lc, netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 1)...)
	}
	wantRefused(t, busy, lc, clientA, metrics.ReasonClientLimit)
	if !busy.takeFullNotice() || busy.takeFullNotice() {
		t.Fatal("a full episode must be noticed exactly once")
	}
	// ...and lets them in once a client has left and the next scan runs.
	held[0]()
	busy.clock = func() int64 { return 2e12 }
	admitN(t, busy, lc, clientA, 1)
	if busy.size() > capacity {
		t.Fatalf("table holds %d clients", busy.size())
	}
}

// TestClientTableConcurrent: admissions and releases from many goroutines
// (run with -race) leave no entry behind.
func TestClientTableConcurrent(t *testing.T) {
	var tab clientTable // the zero value works
	lc := &config.Listener{MaxConnectionsPerClient: 1000}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				client := netip.MustParseAddr(fmt.Sprintf("10.0.%d.%d", g, i%7))
				r, reason := tab.admit(lc, client)
				if reason != 0 {
					t.Errorf("refused: %s", reason)
					return
				}
				r()
			}
		}(g)
	}
	wg.Wait()
	if n := tab.size(); n != 0 {
		t.Fatalf("%d entries left after every connection ended", n)
	}
}
