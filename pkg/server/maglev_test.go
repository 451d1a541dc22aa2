package server

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/lbtest"
)

// maglevSources are the client source addresses of the maglev tests,
// 127.0.1.1 ... on loopback.
func maglevSources(n int) []string {
	src := make([]string, n)
	for i := range src {
		src[i] = fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250)
	}
	return src
}

// servedFrom connects to addr from source IP src and returns the name of
// the backend that answered.
func servedFrom(t *testing.T, src, addr string) string {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	defer c.Close()
	got, err := lbtest.ReadAllTimeout(t, c, 5*time.Second)
	if err != nil {
		t.Fatalf("read from %s (client %s): %v", addr, src, err)
	}
	return string(got)
}

// poolStatus is the status of the named pool.
func (h *harness) poolStatus(name string) PoolStatus {
	h.t.Helper()
	for _, p := range h.srv.Status().Pools {
		if p.Name == name {
			return p
		}
	}
	h.t.Fatalf("no pool %q in status", name)
	return PoolStatus{}
}

// TestMaglevInstancesAgree: two lbctl servers with the same maglev pool
// over three real backends show the same table digest (status and
// lbctl_pool_table_info) and send each client source address to the same
// backend, the one the balancer's table gives, whatever the client's port.
// When one instance drains a backend, only that backend's clients move
// there, and the table (digest) stays; a weight override rebuilds it.
func TestMaglevInstancesAgree(t *testing.T) {
	names := []string{"a", "b", "c"}
	byAddr := map[string]string{}
	var addrs []string
	for _, n := range names {
		be := lbtest.NewTCP(t, lbtest.Named(n))
		addrs = append(addrs, be.Addr)
		byAddr[be.Addr] = n
	}
	toml := listenerTOML("l", "p", "") + poolTOML("p", `algorithm = "maglev"`, addrs...) + noHealth
	h1, h2 := startServer(t, toml), startServer(t, toml)

	ps1, ps2 := h1.poolStatus("p"), h2.poolStatus("p")
	digest := ps1.TableDigest
	if len(digest) != 16 || strings.Trim(digest, "0123456789abcdef") != "" {
		t.Fatalf("table_digest %q, want 16 hex digits", digest)
	}
	if ps2.TableDigest != digest || ps1.TableSize != 65537 || ps1.HashKey != "ip" {
		t.Fatalf("status: digests %q and %q, table_size %d, hash_key %q; want equal digests, 65537, ip",
			digest, ps2.TableDigest, ps1.TableSize, ps1.HashKey)
	}
	for _, h := range []*harness{h1, h2} {
		if v := value(t, h.reg, "lbctl_pool_table_info", "pool", "p", "digest", digest); v != 1 {
			t.Fatalf("lbctl_pool_table_info{pool=p,digest=%s} = %v, want 1", digest, v)
		}
	}

	// What every instance must pick: the balancer's table over the same
	// addresses, built here in the test process.
	var ms []balancer.Member
	for _, a := range addrs {
		ms = append(ms, balancer.Member{Backend: balancer.NewBackend(a), Weight: 1})
	}
	want, err := balancer.New(balancer.Maglev, ms)
	if err != nil {
		t.Fatal(err)
	}
	sources := maglevSources(150)
	first := map[string]string{}
	spread := map[string]int{}
	for _, src := range sources {
		exp := byAddr[want.Pick(netip.AddrPortFrom(netip.MustParseAddr(src), 0), nil).Address()]
		for i, h := range []*harness{h1, h2, h1} {
			if got := servedFrom(t, src, h.addr("l")); got != exp {
				t.Fatalf("client %s, instance %d: backend %s, want %s (the table's)", src, 1+i%2, got, exp)
			}
		}
		first[src] = exp
		spread[exp]++
	}
	for _, n := range names {
		if spread[n] < 20 {
			t.Errorf("backend %s served %d of %d clients, want about a third (%v)", n, spread[n], len(sources), spread)
		}
	}

	// Instance 1 drains b: b's clients go elsewhere there, everyone else
	// stays where instance 2 still sends them.
	if _, err := h1.srv.SetBackendAdmin("p", addrs[1], balancer.Draining); err != nil {
		t.Fatal(err)
	}
	for _, src := range sources {
		got1, got2 := servedFrom(t, src, h1.addr("l")), servedFrom(t, src, h2.addr("l"))
		switch {
		case got2 != first[src]:
			t.Fatalf("client %s: instance 2 moved it from %s to %s", src, first[src], got2)
		case first[src] == "b" && got1 == "b":
			t.Fatalf("client %s: still on the drained backend b", src)
		case first[src] != "b" && got1 != first[src]:
			t.Fatalf("client %s moved from %s to %s on instance 1, though only b drains", src, first[src], got1)
		}
	}
	if d := h1.poolStatus("p").TableDigest; d != digest {
		t.Errorf("draining a backend changed the digest from %s to %s", digest, d)
	}

	// A weight override is configuration: the table is rebuilt, and the
	// metric shows the new digest only.
	w := 3
	if _, err := h1.srv.SetWeightOverride("p", addrs[0], &w); err != nil {
		t.Fatal(err)
	}
	nd := h1.poolStatus("p").TableDigest
	if nd == digest || nd == "" {
		t.Fatalf("digest after a weight override: %q (was %q), want a new one", nd, digest)
	}
	if v := value(t, h1.reg, "lbctl_pool_table_info", "pool", "p", "digest", nd); v != 1 {
		t.Errorf("lbctl_pool_table_info for the new digest = %v, want 1", v)
	}
	if _, ok := sample(t, h1.reg, "lbctl_pool_table_info", map[string]string{"digest": digest}); ok {
		t.Errorf("the old digest's series is still exported")
	}
}

// TestMaglevHashKeyIPPortUDP: with hash_key = "ip-port", UDP clients on one
// address but different ports spread over the backends, each port keeping
// its backend, as the table says.
func TestMaglevHashKeyIPPortUDP(t *testing.T) {
	var addrs []string
	byName := map[string]string{}
	for _, n := range []string{"a", "b", "c"} {
		addrs = append(addrs, lbtest.NewUDP(t, n, lbtest.UDPTagged(n)).Addr)
		byName[n] = addrs[len(addrs)-1]
	}
	h := startUDPServer(t, udpListenerTOML("u", "p", "")+
		poolTOML("p", "algorithm = \"maglev\"\nhash_key = \"ip-port\"", addrs...)+noHealth, nil)
	var ms []balancer.Member
	for _, a := range addrs {
		ms = append(ms, balancer.Member{Backend: balancer.NewBackend(a), Weight: 1})
	}
	want, err := balancer.New(balancer.Maglev, ms, balancer.WithHashKey(balancer.HashKeyIPPort))
	if err != nil {
		t.Fatal(err)
	}
	if d := h.poolStatus("p").TableDigest; d != want.TableDigest() {
		t.Fatalf("table_digest %s, the balancer's %s", d, want.TableDigest())
	}
	spread := map[string]int{}
	for i := range 30 {
		c := udpClient(t)
		ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
		exp := want.Pick(ap, nil).Address()
		for round := range 2 {
			reply := lbtest.UDPExchange(t, c, h.udpAddr("u"), fmt.Appendf(nil, "q%d", i), 5*time.Second)
			name, _, _ := strings.Cut(string(reply), "|")
			if got := byName[name]; got != exp {
				t.Fatalf("client %v, datagram %d: answered by %q, want the table's %s", ap, round, reply, exp)
			}
		}
		spread[exp]++
	}
	if len(spread) < 2 {
		t.Errorf("30 client ports of one address all went to %v, want a spread", spread)
	}
}

// TestMaglevRebuildOnSetChange: a backend added through the API rebuilds
// the table (the digest is the balancer's over the four, the metric shows
// it alone) and takes about a quarter of the clients, nearly all others
// staying; removing it again gives back the first table, digest and
// assignment exactly.
func TestMaglevRebuildOnSetChange(t *testing.T) {
	var addrs []string
	for _, n := range []string{"a", "b", "c", "d"} {
		addrs = append(addrs, lbtest.NewTCP(t, lbtest.Named(n)).Addr)
	}
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", `algorithm = "maglev"`, addrs[:3]...)+noHealth)
	digest0 := h.poolStatus("p").TableDigest
	sources := maglevSources(120)
	before := map[string]string{}
	for _, src := range sources {
		before[src] = servedFrom(t, src, h.addr("l"))
	}

	if _, err := h.srv.AddBackend("p", BackendSpec{Address: addrs[3], Weight: 1}); err != nil {
		t.Fatal(err)
	}
	var ms []balancer.Member
	for _, a := range addrs {
		ms = append(ms, balancer.Member{Backend: balancer.NewBackend(a), Weight: 1})
	}
	want, err := balancer.New(balancer.Maglev, ms)
	if err != nil {
		t.Fatal(err)
	}
	digest1 := h.poolStatus("p").TableDigest
	if digest1 != want.TableDigest() || digest1 == digest0 {
		t.Fatalf("digest after the add %s (before %s), want the balancer's over four backends %s", digest1, digest0, want.TableDigest())
	}
	if _, ok := sample(t, h.reg, "lbctl_pool_table_info", map[string]string{"digest": digest0}); ok {
		t.Error("the first table's series is still exported after the add")
	}
	if v := value(t, h.reg, "lbctl_pool_table_info", "pool", "p", "digest", digest1); v != 1 {
		t.Errorf("lbctl_pool_table_info for the new table = %v, want 1", v)
	}
	toD, others := 0, 0
	for _, src := range sources {
		switch got := servedFrom(t, src, h.addr("l")); {
		case got == "d":
			toD++
		case got != before[src]:
			others++
		}
	}
	if toD < 15 || toD > 50 || others > 6 {
		t.Errorf("after adding d: %d of %d clients moved to d (want about a quarter), %d moved elsewhere (want few)", toD, len(sources), others)
	}

	if _, err := h.srv.RemoveBackend("p", addrs[3]); err != nil {
		t.Fatal(err)
	}
	if d := h.poolStatus("p").TableDigest; d != digest0 {
		t.Errorf("digest after the removal %s, want the first one %s", d, digest0)
	}
	for _, src := range sources {
		if got := servedFrom(t, src, h.addr("l")); got != before[src] {
			t.Fatalf("client %s on %s after the removal, was on %s with the same set", src, got, before[src])
		}
	}
}
