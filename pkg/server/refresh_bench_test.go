package server

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/lbctl/lbctl/discovery"
)

// BenchmarkRefresh: one refresh of a pool of 2,000 discovered backends
// behind a TCP listener, as a source's update hands it over.
//
//   - unchanged: the same set in another order: no allocation per
//     backend, and no new generation;
//   - one_changed: one backend replaced by another: a new generation
//     (balancer, proxy, targets map) swapped into the listener.
func BenchmarkRefresh(b *testing.B) {
	const n = 2000
	set := make([]discovery.Entry, n)
	for i := range set {
		set[i] = discovery.Entry{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(i % 250)}), 80), Weight: 1}
	}
	h, fs := startLive(b, listenerTOML("l", "p", "")+discoverTOML("p", ""), nil)
	fs.get(b, "file:/fake/p.json").push(b, set, nil)
	h.srv.mu.Lock()
	r := h.srv.pools["p"].srcs[0]
	h.srv.mu.Unlock()
	if got := len(poolStatus(h, "p").Backends); got != n {
		b.Fatalf("%d backends, want %d", got, n)
	}

	b.Run("unchanged", func(b *testing.B) {
		shuffled := [2][]discovery.Entry{append([]discovery.Entry(nil), set...), append([]discovery.Entry(nil), set...)}
		rand.Shuffle(n, func(i, j int) { shuffled[1][i], shuffled[1][j] = shuffled[1][j], shuffled[1][i] })
		gens := h.srv.refreshes.Load()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			h.srv.sourceUpdate(r, shuffled[i%2], nil)
		}
		b.StopTimer()
		if g := h.srv.refreshes.Load(); g != gens {
			b.Fatalf("%d new generations for an unchanged set", g-gens)
		}
	})
	flip := 1 // set is in service
	b.Run("one_changed", func(b *testing.B) {
		other := append([]discovery.Entry(nil), set...)
		other[n/2].Addr = netip.MustParseAddrPort("10.9.9.9:80")
		sets := [2][]discovery.Entry{other, set}
		gens := h.srv.refreshes.Load()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			flip++ // across the runs of this benchmark: every update changes one backend
			h.srv.sourceUpdate(r, sets[flip%2], nil)
		}
		b.StopTimer()
		if g := h.srv.refreshes.Load(); g-gens != int64(b.N) {
			b.Fatalf("%d new generations for %d changes", g-gens, b.N)
		}
	})
}

// TestRefreshUnchangedAllocs: an unchanged refresh of 2,000 backends
// allocates a constant amount, nothing per backend.
func TestRefreshUnchangedAllocs(t *testing.T) {
	set := make([]discovery.Entry, 2000)
	for i := range set {
		set[i] = discovery.Entry{Addr: netip.MustParseAddrPort(fmt.Sprintf("10.2.%d.%d:80", i/250, i%250)), Weight: 1}
	}
	h, fs := startLive(t, listenerTOML("l", "p", "")+discoverTOML("p", ""), nil)
	fs.get(t, "file:/fake/p.json").push(t, set, nil)
	h.srv.mu.Lock()
	r := h.srv.pools["p"].srcs[0]
	h.srv.mu.Unlock()
	rev := make([]discovery.Entry, len(set))
	for i := range set {
		rev[len(set)-1-i] = set[i]
	}
	allocs := testing.AllocsPerRun(20, func() { h.srv.sourceUpdate(r, rev, nil) })
	if allocs > 2 {
		t.Fatalf("%v allocations per unchanged refresh of 2,000 backends", allocs)
	}
}
