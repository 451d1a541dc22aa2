package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"go.uber.org/zap/zaptest"
)

// events records the OnPeer calls of a speaker.
type events struct {
	mu  sync.Mutex
	got []PeerStatus
}

func (e *events) add(p PeerStatus) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, p)
}

// downs counts the down events of addr so far.
func (e *events) downs(addr netip.Addr) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, p := range e.got {
		if p.Address == addr && !p.Up() {
			n++
		}
	}
	return n
}

func peerState(sp *Speaker, addr netip.Addr) PeerStatus {
	for _, p := range sp.Status() {
		if p.Address == addr {
			return p
		}
	}
	return PeerStatus{}
}

// router is a bird in its own namespace that accepts lbctl's routes (AS
// 65010) as AS 65000.
func router(t *testing.T) (*lbtest.Netns, *lbtest.Bird) {
	ns := lbtest.NewNetns(t)
	r := lbtest.NewBird(t, ns, lbtest.BirdBGP(ns.NSAddr, 65000,
		[]lbtest.BirdPeer{{Name: "lbctl", Address: ns.HostAddr, ASN: 65010}}, ""))
	return ns, r
}

func waitRoute(t *testing.T, r *lbtest.Bird, prefix string, want []netip.Addr) {
	t.Helper()
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		got := r.Route(prefix)
		return slices.Equal(got, want), fmt.Sprintf("bird's next hops for %s: %v, want %v\n%s", prefix, got, want, r.Show("route", "all"))
	})
}

func waitState(t *testing.T, sp *Speaker, addr netip.Addr, up bool, within time.Duration) {
	t.Helper()
	lbtest.Until(t, within, func() (bool, string) {
		st := peerState(sp, addr)
		return st.Up() == up, fmt.Sprintf("peer %s state %q, want up=%v", addr, st.State, up)
	})
}

// TestAnnounceToBird: a real bird learns the prefix with lbctl's own
// address towards it as the next hop, loses it at a withdrawal, and a
// killed and restarted bird is reconnected within the back-off cap and
// learns the prefix again.
func TestAnnounceToBird(t *testing.T) {
	ns, r := router(t)
	var ev events
	sp, err := New(Config{ASN: 65010, RouterID: ns.HostAddr, Peers: []Peer{{Address: ns.NSAddr, ASN: 65000}}},
		Options{Log: zaptest.NewLogger(t), OnPeer: ev.add})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	prefix := "10.99.0.1/32"
	// Announced before Start: sent once the session is up.
	if err := sp.SetAnnounced(ctx, netip.MustParsePrefix(prefix), true); err != nil {
		t.Fatal(err)
	}
	if err := sp.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer sp.Stop()
	waitState(t, sp, ns.NSAddr, true, 10*time.Second)
	if st := peerState(sp, ns.NSAddr); st.Local != ns.HostAddr || st.ASN != 65000 || st.Since.IsZero() {
		t.Fatalf("peer status %+v: want local %s, asn 65000, since set", st, ns.HostAddr)
	}
	if s := r.Session("lbctl"); s != "Established" {
		t.Fatalf("bird session %q, want Established", s)
	}
	waitRoute(t, r, prefix, []netip.Addr{ns.HostAddr})

	if err := sp.SetAnnounced(ctx, netip.MustParsePrefix(prefix), false); err != nil {
		t.Fatal(err)
	}
	waitRoute(t, r, prefix, nil)
	if got := sp.Announced(); len(got) != 0 {
		t.Fatalf("Announced() = %v after the withdrawal", got)
	}
	if err := sp.SetAnnounced(ctx, netip.MustParsePrefix(prefix), true); err != nil {
		t.Fatal(err)
	}
	waitRoute(t, r, prefix, []netip.Addr{ns.HostAddr})

	// The router crashes: the session goes down, lbctl retries.
	r.Kill()
	waitState(t, sp, ns.NSAddr, false, 10*time.Second)
	if ev.downs(ns.NSAddr) != 1 {
		t.Fatalf("OnPeer down events %d, want 1: %+v", ev.downs(ns.NSAddr), ev.got)
	}
	// Idle hold (5 s) then retries at most 10 s apart: back within 10 s of
	// bird's return, plus a margin for a loaded machine.
	r.Start()
	back := time.Now()
	waitState(t, sp, ns.NSAddr, true, 14*time.Second)
	t.Logf("session re-established %v after bird's restart", time.Since(back).Round(time.Millisecond))
	waitRoute(t, r, prefix, []netip.Addr{ns.HostAddr})

	// Stop withdraws: bird drops the route.
	sp.Stop()
	waitRoute(t, r, prefix, nil)
}

// TestUpdateKeepsSessions: a reload that adds a peer and then removes the
// first one never takes down a session that stays.
func TestUpdateKeepsSessions(t *testing.T) {
	nsA, rA := router(t)
	nsB, rB := router(t)
	var ev events
	// One router ID for both sessions: the speaker's own; any address of
	// it will do.
	cfgA := Config{ASN: 65010, RouterID: nsA.HostAddr, Peers: []Peer{{Address: nsA.NSAddr, ASN: 65000}}}
	sp, err := New(cfgA, Options{Log: zaptest.NewLogger(t), OnPeer: ev.add})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := sp.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer sp.Stop()
	prefix := "10.99.0.2/32"
	if err := sp.SetAnnounced(ctx, netip.MustParsePrefix(prefix), true); err != nil {
		t.Fatal(err)
	}
	waitRoute(t, rA, prefix, []netip.Addr{nsA.HostAddr})

	both := cfgA
	both.Peers = []Peer{{Address: nsA.NSAddr, ASN: 65000}, {Address: nsB.NSAddr, ASN: 65000}}
	if err := sp.Update(ctx, both); err != nil {
		t.Fatal(err)
	}
	// The new peer learns the prefix with the speaker's address towards it.
	waitRoute(t, rB, prefix, []netip.Addr{nsB.HostAddr})
	if n := ev.downs(nsA.NSAddr); n != 0 {
		t.Fatalf("peer A went down %d times when B was added", n)
	}
	if got := sp.Status(); len(got) != 2 || got[0].Address != nsA.NSAddr || got[1].Address != nsB.NSAddr {
		t.Fatalf("Status() = %+v, want A then B", got)
	}

	onlyB := cfgA
	onlyB.Peers = []Peer{{Address: nsB.NSAddr, ASN: 65000}}
	if err := sp.Update(ctx, onlyB); err != nil {
		t.Fatal(err)
	}
	waitRoute(t, rA, prefix, nil)
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		s := rA.Session("lbctl")
		return s != "Established", "bird A's session still " + s
	})
	if n := ev.downs(nsB.NSAddr); n != 0 {
		t.Fatalf("peer B went down %d times when A was removed", n)
	}
	if got := rB.Route(prefix); !slices.Equal(got, []netip.Addr{nsB.HostAddr}) {
		t.Fatalf("bird B's route %v after A's removal", got)
	}
	if got := sp.Status(); len(got) != 1 || got[0].Address != nsB.NSAddr || !got[0].Up() {
		t.Fatalf("Status() = %+v, want B up only", got)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	log := zaptest.NewLogger(t)
	a := netip.MustParseAddr("10.0.0.1")
	for name, cfg := range map[string]Config{
		"asn 0":          {ASN: 0, RouterID: a},
		"router id v6":   {ASN: 1, RouterID: netip.MustParseAddr("::1")},
		"router id zero": {ASN: 1, RouterID: netip.IPv4Unspecified()},
		"peer asn 0":     {ASN: 1, RouterID: a, Peers: []Peer{{Address: a}}},
		"peer twice":     {ASN: 1, RouterID: a, Peers: []Peer{{Address: a, ASN: 2}, {Address: a, ASN: 3}}},
	} {
		if _, err := New(cfg, Options{Log: log}); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
}

// TestAnnounceIPv6: over an IPv6 session the IPv6 prefix is announced with
// the speaker's IPv6 address towards the router as next hop, and the IPv4
// prefix is not sent there.
func TestAnnounceIPv6(t *testing.T) {
	ns := lbtest.NewNetns(t)
	r := lbtest.NewBird(t, ns, lbtest.BirdBGP(ns.NSAddr, 65000,
		[]lbtest.BirdPeer{{Name: "lbctl6", Address: ns.HostAddr6, ASN: 65010, Local: ns.NSAddr6}}, ""))
	sp, err := New(Config{ASN: 65010, RouterID: ns.HostAddr, Peers: []Peer{{Address: ns.NSAddr6, ASN: 65000}}},
		Options{Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := sp.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer sp.Stop()
	for _, p := range []string{"fd99:1::/64", "10.99.0.3/32"} {
		if err := sp.SetAnnounced(ctx, netip.MustParsePrefix(p), true); err != nil {
			t.Fatal(err)
		}
	}
	waitState(t, sp, ns.NSAddr6, true, 10*time.Second)
	if st := peerState(sp, ns.NSAddr6); st.Local != ns.HostAddr6 {
		t.Fatalf("local address %v, want %v", st.Local, ns.HostAddr6)
	}
	waitRoute(t, r, "fd99:1::/64", []netip.Addr{ns.HostAddr6})
	if got := r.Route("10.99.0.3/32"); len(got) != 0 {
		t.Fatalf("the IPv4 prefix reached the IPv6 session: %v", got)
	}
	if err := sp.SetAnnounced(ctx, netip.MustParsePrefix("fd99:1::/64"), false); err != nil {
		t.Fatal(err)
	}
	waitRoute(t, r, "fd99:1::/64", nil)
}
