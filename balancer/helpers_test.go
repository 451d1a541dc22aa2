package balancer

import (
	"fmt"
	"net/netip"
	"testing"
)

// algorithms lists every algorithm, for tests that must hold for all of them.
var algorithms = []string{RoundRobin, LeastConnections, IPHash, Maglev}

// members returns one primary member per weight, at 10.0.0.1:80,
// 10.0.0.2:80, ...
func members(weights ...int) []Member {
	ms := make([]Member, len(weights))
	for i, w := range weights {
		ms[i] = Member{Backend: NewBackend(fmt.Sprintf("10.0.0.%d:80", i+1)), Weight: w}
	}
	return ms
}

// backendsOf returns the members' backends, in order.
func backendsOf(ms []Member) []*Backend {
	bs := make([]*Backend, len(ms))
	for i, m := range ms {
		bs[i] = m.Backend
	}
	return bs
}

func mustPool(t testing.TB, algorithm string, ms []Member) *Pool {
	t.Helper()
	p, err := New(algorithm, ms)
	if err != nil {
		t.Fatalf("New(%q): %v", algorithm, err)
	}
	return p
}

// clientIPs returns n distinct client addresses, alternately IPv4 and IPv6,
// in sequence (sequential addresses are the hardest case for a hash).
func clientIPs(n int) []netip.Addr {
	ips := make([]netip.Addr, n)
	for i := range ips {
		if i%2 == 0 {
			ips[i] = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		} else {
			var a [16]byte
			copy(a[:], []byte{0x20, 0x01, 0x0d, 0xb8})
			a[13], a[14], a[15] = byte(i>>16), byte(i>>8), byte(i)
			ips[i] = netip.AddrFrom16(a)
		}
	}
	return ips
}

// counter tallies picks per backend address.
type counter map[string]int

// pickN picks n times, one client IP per pick (cycling), and counts. When
// acquire is set, every picked backend is Acquired (and never Released).
func pickN(t testing.TB, p *Pool, n int, acquire bool) counter {
	t.Helper()
	ips := clientIPs(min(n, 10_000))
	c := counter{}
	for i := range n {
		b := p.Pick(at(ips[i%len(ips)]), nil)
		if b == nil {
			t.Fatalf("pick %d: got nil", i)
		}
		if acquire {
			b.Acquire()
		}
		c[b.Address()]++
	}
	return c
}

// wantShares checks that c holds, for each backend, want[i]/sum(want) of the
// picks, within tol (a fraction of all picks, 0 for exact).
func wantShares(t *testing.T, c counter, bs []*Backend, want []float64, tol float64) {
	t.Helper()
	var total, sum float64
	for _, n := range c {
		total += float64(n)
	}
	for _, w := range want {
		sum += w
	}
	for i, b := range bs {
		got := float64(c[b.Address()]) / total
		exp := want[i] / sum
		if d := got - exp; d > tol+1e-12 || d < -tol-1e-12 {
			t.Errorf("%s: share %.4f (%d of %.0f), want %.4f ± %.4f", b.Address(), got, c[b.Address()], total, exp, tol)
		}
	}
}

// at is client ip as Pick takes it, with port 0.
func at(ip netip.Addr) netip.AddrPort { return netip.AddrPortFrom(ip, 0) }
