package server

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/prometheus/client_golang/prometheus"
)

// bgpLab is a bird router in its own namespace, peering with the test
// process (lbctl's speaker, AS 65010) from the host side of a veth pair.
type bgpLab struct {
	ns *lbtest.Netns
	r  *lbtest.Bird
}

func newBGPLab(t *testing.T) *bgpLab {
	t.Helper()
	ns := lbtest.NewNetns(t)
	r := lbtest.NewBird(t, ns, lbtest.BirdBGP(ns.NSAddr, 65000,
		[]lbtest.BirdPeer{{Name: "lbctl", Address: ns.HostAddr, ASN: 65010}}, ""))
	return &bgpLab{ns: ns, r: r}
}

// peerTOML is a [[bgp.peers]] entry for the lab's router.
func (l *bgpLab) peerTOML() string {
	return fmt.Sprintf("[[bgp.peers]]\naddress = %q\nasn = 65000\n", l.ns.NSAddr)
}

// waitRoute waits until the router's next hops for prefix are want (none:
// no route).
func (l *bgpLab) waitRoute(t *testing.T, prefix string, want ...netip.Addr) {
	t.Helper()
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		got := l.r.Route(prefix)
		return slices.Equal(got, want), fmt.Sprintf("bird's next hops for %s: %v, want %v", prefix, got, want)
	})
}

// gauges returns the values of the series of a gauge vector by its one
// label's value.
func gauges(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
	}
	return out
}

func waitGauge(t *testing.T, reg *prometheus.Registry, name, label string, want float64) {
	t.Helper()
	lbtest.Until(t, 15*time.Second, func() (bool, string) {
		g := gauges(t, reg, name)
		v, ok := g[label]
		return ok && v == want, fmt.Sprintf("%s = %v, want {%s} = %v", name, g, label, want)
	})
}

const bgpHealth = `
[pools.web.health]
check = "tcp"
interval = "200ms"
timeout = "500ms"
rise = 1
fall = 1
`

// TestBGPAnnouncesWhileEligible: the prefix is at a real router, with
// lbctl's address towards it as next hop, while the listener's pool has an
// eligible backend; it goes when the only backend fails its health check
// and comes back with it; a router that crashes and comes back is
// reconnected within the back-off cap; metrics and status follow.
func TestBGPAnnouncesWhileEligible(t *testing.T) {
	lab := newBGPLab(t)
	be := lbtest.NewTCP(t, lbtest.Echo)
	prefix := "10.99.0.1/32"
	h := startServer(t, listenerTOML("web", "web", "")+poolTOML("web", "", be.Addr)+bgpHealth+fmt.Sprintf(`
[bgp]
asn = 65010
router_id = %q
%s
[[bgp.announce]]
prefix = %q
listeners = ["web"]
`, lab.ns.HostAddr, lab.peerTOML(), prefix))
	peer := lab.ns.NSAddr.String()

	lab.waitRoute(t, prefix, lab.ns.HostAddr)
	waitGauge(t, h.reg, "lbctl_bgp_peer_up", peer, 1)
	waitGauge(t, h.reg, "lbctl_bgp_announced", prefix, 1)
	st := h.srv.Status().BGP
	if st == nil || len(st.Peers) != 1 || st.Peers[0].Address != peer || st.Peers[0].ASN != 65000 ||
		st.Peers[0].State != "established" || st.Peers[0].Since == nil {
		t.Fatalf("status bgp peers: %+v", st)
	}
	if len(st.Announcements) != 1 || st.Announcements[0].Prefix != prefix || !st.Announcements[0].Announced ||
		!slices.Equal(st.Announcements[0].Listeners, []string{"web"}) {
		t.Fatalf("status bgp announcements: %+v", st.Announcements)
	}

	// The only backend goes down: withdrawn.
	addr := be.Addr
	be.Close()
	lab.waitRoute(t, prefix)
	waitGauge(t, h.reg, "lbctl_bgp_announced", prefix, 0)
	if st := h.srv.Status().BGP; st.Announcements[0].Announced {
		t.Fatalf("status says announced with no eligible backend: %+v", st.Announcements)
	}
	// It comes back: announced again.
	lbtest.NewTCPAt(t, addr, lbtest.Echo)
	lab.waitRoute(t, prefix, lab.ns.HostAddr)
	waitGauge(t, h.reg, "lbctl_bgp_announced", prefix, 1)

	// The router crashes: the peer is down; back within the back-off cap
	// (5 s idle hold, then attempts at most 10 s apart) plus a margin.
	lab.r.Kill()
	waitGauge(t, h.reg, "lbctl_bgp_peer_up", peer, 0)
	if st := h.srv.Status().BGP; st.Peers[0].State == "established" {
		t.Fatalf("status: peer still established after the router died: %+v", st.Peers)
	}
	lab.r.Start()
	back := time.Now()
	waitGauge(t, h.reg, "lbctl_bgp_peer_up", peer, 1)
	t.Logf("reconnected %v after the router's restart", time.Since(back).Round(time.Millisecond))
	lab.waitRoute(t, prefix, lab.ns.HostAddr)
}

// TestBGPShutdownWithdrawsFirst: at Shutdown the router loses the route
// while the listener still accepts (a client connects successfully until
// after the router shows the route gone), and the listener closes
// withdraw_delay later.
func TestBGPShutdownWithdrawsFirst(t *testing.T) {
	lab := newBGPLab(t)
	be := lbtest.NewTCP(t, lbtest.Echo)
	prefix := "10.99.0.2/32"
	const delay = 3 * time.Second
	h := startServer(t, listenerTOML("web", "web", "")+poolTOML("web", "", be.Addr)+fmt.Sprintf(`
[bgp]
asn = 65010
router_id = %q
withdraw_delay = %q
%s
[[bgp.announce]]
prefix = %q
listeners = ["web"]
`, lab.ns.HostAddr, delay.String(), lab.peerTOML(), prefix))
	lab.waitRoute(t, prefix, lab.ns.HostAddr)
	web := h.addr("web")

	// A client connects again and again; it records its last success and
	// its first refusal.
	var (
		mu                    sync.Mutex
		lastOK, firstRefused  time.Time
		failuresBeforeRefusal int
	)
	stopClient := make(chan struct{})
	clientDone := make(chan struct{})
	go func() {
		defer close(clientDone)
		for {
			select {
			case <-stopClient:
				return
			default:
			}
			c, err := net.DialTimeout("tcp", web, 2*time.Second)
			now := time.Now()
			mu.Lock()
			if err == nil {
				c.Close()
				if firstRefused.IsZero() {
					lastOK = now
				}
			} else if firstRefused.IsZero() {
				firstRefused = now
			} else {
				failuresBeforeRefusal++
			}
			mu.Unlock()
			time.Sleep(10 * time.Millisecond) // pacing, not synchronisation
		}
	}()
	defer func() { close(stopClient); <-clientDone }()

	begin := time.Now()
	shutdownDone := make(chan struct{})
	go func() {
		defer close(shutdownDone)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		h.srv.Shutdown(ctx)
	}()
	var routeGone time.Time
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		if len(lab.r.Route(prefix)) == 0 {
			routeGone = time.Now()
			return true, ""
		}
		return false, "the router still has the route after Shutdown began"
	})
	// Not ready (/readyz 503) from the start of Shutdown, also while the
	// listener still accepts during withdraw_delay.
	if h.srv.Ready() {
		t.Errorf("Ready is true while the routes are withdrawn at shutdown")
	}
	lbtest.Until(t, 15*time.Second, func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return !firstRefused.IsZero(), "the listener still accepts"
	})
	<-shutdownDone
	mu.Lock()
	defer mu.Unlock()
	t.Logf("shutdown began; route gone at +%v; last accepted connect at +%v; first refused at +%v",
		routeGone.Sub(begin).Round(time.Millisecond), lastOK.Sub(begin).Round(time.Millisecond),
		firstRefused.Sub(begin).Round(time.Millisecond))
	if !lastOK.After(routeGone) {
		t.Errorf("no connect succeeded after the router dropped the route (last success %v before)", routeGone.Sub(lastOK))
	}
	if !firstRefused.After(routeGone) {
		t.Errorf("the listener refused a connect before the router dropped the route")
	}
	if got := firstRefused.Sub(begin); got < delay {
		t.Errorf("the listener closed %v after Shutdown began, before withdraw_delay %v", got, delay)
	}
	if g := gauges(t, h.reg, "lbctl_bgp_announced"); len(g) != 0 {
		t.Errorf("lbctl_bgp_announced after shutdown: %v", g)
	}
}

// TestBGPReload: a reload that adds a peer and a prefix keeps the
// running session; one that removes a peer and a prefix withdraws it there
// and deletes their series, the other session untouched.
func TestBGPReload(t *testing.T) {
	a, b := newBGPLab(t), newBGPLab(t)
	be := lbtest.NewTCP(t, lbtest.Echo)
	p1, p2 := "10.99.0.1/32", "10.99.0.2/32"
	base := listenerTOML("web", "web", "") + listenerTOML("api", "web", "") + poolTOML("web", "", be.Addr)
	bgpTOML := func(peers string, prefixes ...string) string {
		s := fmt.Sprintf("[bgp]\nasn = 65010\nrouter_id = %q\n%s", a.ns.HostAddr, peers)
		for _, p := range prefixes {
			s += fmt.Sprintf("[[bgp.announce]]\nprefix = %q\nlisteners = [\"web\", \"api\"]\n", p)
		}
		return s
	}
	h := startServer(t, base+bgpTOML(a.peerTOML(), p1))
	a.waitRoute(t, p1, a.ns.HostAddr)
	since := h.srv.Status().BGP.Peers[0].Since

	reload(t, h, base+bgpTOML(a.peerTOML()+b.peerTOML(), p1, p2))
	a.waitRoute(t, p2, a.ns.HostAddr)
	b.waitRoute(t, p1, b.ns.HostAddr)
	b.waitRoute(t, p2, b.ns.HostAddr)
	st := h.srv.Status().BGP
	if len(st.Peers) != 2 || !st.Peers[0].Since.Equal(*since) || st.Peers[0].State != "established" {
		t.Fatalf("peer A's session changed across the reload (since %v): %+v", since, st.Peers)
	}
	waitGauge(t, h.reg, "lbctl_bgp_peer_up", b.ns.NSAddr.String(), 1)

	reload(t, h, base+bgpTOML(b.peerTOML(), p2))
	b.waitRoute(t, p1)
	b.waitRoute(t, p2, b.ns.HostAddr)
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		s := a.r.Session("lbctl")
		return s != "Established", "router A's session is still " + s
	})
	if g := gauges(t, h.reg, "lbctl_bgp_peer_up"); len(g) != 1 || g[b.ns.NSAddr.String()] != 1 {
		t.Errorf("lbctl_bgp_peer_up after removing peer A: %v", g)
	}
	if g := gauges(t, h.reg, "lbctl_bgp_announced"); len(g) != 1 || g[p2] != 1 {
		t.Errorf("lbctl_bgp_announced after removing %s: %v", p1, g)
	}

	// [bgp] removed: every series goes, the status has no bgp.
	reload(t, h, base)
	b.waitRoute(t, p2)
	if g := gauges(t, h.reg, "lbctl_bgp_peer_up"); len(g) != 0 {
		t.Errorf("lbctl_bgp_peer_up without [bgp]: %v", g)
	}
	if st := h.srv.Status().BGP; st != nil {
		t.Errorf("status bgp without [bgp]: %+v", st)
	}
}
