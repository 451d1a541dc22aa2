package balancer

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"testing"
)

// assignments returns the backend each client is given, or nil.
func assignments(p *Pool, ips []netip.Addr) []*Backend {
	got := make([]*Backend, len(ips))
	for i, ip := range ips {
		got[i] = p.Pick(at(ip), nil)
	}
	return got
}

// TestIPHashMovesOnlyTheLeavingBackendsClients: 10,000 clients over 5
// backends; when one leaves (in any of the ways a backend can leave) only its
// clients move, spread over the other four; when it returns every client is
// back where it was.
func TestIPHashMovesOnlyTheLeavingBackendsClients(t *testing.T) {
	ips := clientIPs(10_000)
	for _, tc := range []struct {
		name          string
		leave, rejoin func(p *Pool, b *Backend) *Pool
	}{
		{"down",
			func(p *Pool, b *Backend) *Pool { b.SetHealthy(false); return p },
			func(p *Pool, b *Backend) *Pool { b.SetHealthy(true); return p }},
		{"drained",
			func(p *Pool, b *Backend) *Pool { b.SetAdmin(Draining); return p },
			func(p *Pool, b *Backend) *Pool { b.SetAdmin(Enabled); return p }},
		{"weight 0 by reload",
			func(p *Pool, b *Backend) *Pool { return reweighted(t, p, b, 0) },
			func(p *Pool, b *Backend) *Pool { return reweighted(t, p, b, 1) }},
		{"removed by reload",
			func(p *Pool, b *Backend) *Pool {
				var rest []Member
				for _, m := range p.Members() {
					if m.Backend != b {
						rest = append(rest, m)
					}
				}
				return mustPool(t, IPHash, rest)
			},
			func(p *Pool, b *Backend) *Pool {
				return mustPool(t, IPHash, append([]Member{{Backend: b, Weight: 1}}, p.Members()...)) // order does not matter
			}},
	} {
		for leaving := range 5 {
			t.Run(fmt.Sprintf("%s/%d", tc.name, leaving), func(t *testing.T) {
				ms := members(1, 1, 1, 1, 1)
				bs := backendsOf(ms)
				p := mustPool(t, IPHash, ms)
				before := assignments(p, ips)
				gone := bs[leaving]

				p = tc.leave(p, gone)
				during := assignments(p, ips)
				moved, others := 0, 0
				spread := map[*Backend]int{}
				for i := range ips {
					switch {
					case before[i] == gone:
						moved++
						spread[during[i]]++
						if during[i] == gone || during[i] == nil {
							t.Fatalf("client %v still on %v after it left", ips[i], during[i])
						}
					case during[i] != before[i]:
						others++
					}
				}
				if others != 0 {
					t.Errorf("%d clients of staying backends moved, want 0", others)
				}
				if moved < 1500 || moved > 2500 {
					t.Errorf("leaving backend had %d of 10000 clients, want about 2000", moved)
				}
				if len(spread) != 4 {
					t.Errorf("its clients went to %d backends, want 4", len(spread))
				}
				for b, n := range spread {
					if n < moved/4-moved/10 || n > moved/4+moved/10 {
						t.Errorf("%s took %d of %d moved clients, want about a quarter", b, n, moved)
					}
				}

				p = tc.rejoin(p, gone)
				after := assignments(p, ips)
				for i := range ips {
					if after[i] != before[i] {
						t.Fatalf("client %v is on %s after the rejoin, was on %s", ips[i], after[i], before[i])
					}
				}
			})
		}
	}
}

// reweighted rebuilds p (as a reload would) with b's weight set to w.
func reweighted(t *testing.T, p *Pool, b *Backend, w int) *Pool {
	t.Helper()
	ms := slices.Clone(p.Members())
	for i := range ms {
		if ms[i].Backend == b {
			ms[i].Weight = w
		}
	}
	return mustPool(t, p.Algorithm(), ms)
}

// TestIPHashSameInEveryProcess: two pools built from separate backends (as
// two processes would), in different orders, agree on every client.
func TestIPHashSameInEveryProcess(t *testing.T) {
	ips := clientIPs(10_000)
	a := members(3, 1, 2, 1)
	b := members(3, 1, 2, 1)
	p1 := mustPool(t, IPHash, a)
	p2 := mustPool(t, IPHash, []Member{b[3], b[1], b[0], b[2]})
	for i, ip := range ips {
		x, y := p1.Pick(at(ip), nil), p2.Pick(at(ip), nil)
		if x.Address() != y.Address() {
			t.Fatalf("client %v: %s in one pool, %s in the other", ip, x, y)
		}
		if i < 100 {
			if z := p1.Pick(at(ip), nil); z != x {
				t.Fatalf("client %v: %s, then %s", ip, x, z)
			}
		}
	}
}

// TestIPHashGolden pins the mapping itself: changing the hash would move
// clients when lbctl is upgraded, and two versions would disagree.
func TestIPHashGolden(t *testing.T) {
	p := mustPool(t, IPHash, []Member{
		{Backend: NewBackend("10.0.0.11:80"), Weight: 1},
		{Backend: NewBackend("10.0.0.12:80"), Weight: 1},
		{Backend: NewBackend("[2001:db8::1]:80"), Weight: 2},
	})
	for _, tc := range []struct{ client, want string }{
		{"192.0.2.1", "10.0.0.11:80"},
		{"192.0.2.2", "10.0.0.11:80"},
		{"198.51.100.7", "10.0.0.12:80"},
		{"203.0.113.200", "10.0.0.11:80"},
		{"2001:db8:1::1", "10.0.0.12:80"},
		{"2001:db8:1::2", "10.0.0.12:80"},
		{"::1", "10.0.0.11:80"},
		{"127.0.0.1", "10.0.0.12:80"},
		{"8.8.8.8", "[2001:db8::1]:80"},
		{"1.1.1.1", "10.0.0.11:80"},
		{"172.16.5.4", "[2001:db8::1]:80"},
		{"100.64.0.1", "[2001:db8::1]:80"},
	} {
		if got := p.Pick(at(netip.MustParseAddr(tc.client)), nil).Address(); got != tc.want {
			t.Errorf("client %s -> %s, want %s", tc.client, got, tc.want)
		}
	}
}

func TestIPHashHonoursWeights(t *testing.T) {
	for _, weights := range [][]int{{3, 2, 1}, {5, 1, 1}, {1, 1, 1, 1, 1}, {10, 1}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			ms := members(weights...)
			want := make([]float64, len(weights))
			for i, w := range weights {
				want[i] = float64(w)
			}
			// 10,000 clients: one standard deviation of a share is at most 0.5%.
			wantShares(t, pickN(t, mustPool(t, IPHash, ms), 10_000, false), backendsOf(ms), want, 0.02)
		})
	}
}

func TestIPHashClientForms(t *testing.T) {
	p := mustPool(t, IPHash, members(1, 1, 1, 1, 1, 1, 1))
	for _, s := range []string{"10.1.2.3", "192.0.2.44", "127.0.0.1", "0.0.0.0", "255.255.255.255"} {
		v4 := netip.MustParseAddr(s)
		mapped := netip.AddrFrom16(v4.As16())
		if !mapped.Is4In6() {
			t.Fatalf("%v is not IPv4-mapped", mapped)
		}
		if a, b := p.Pick(at(v4), nil), p.Pick(at(mapped), nil); a != b {
			t.Errorf("%v -> %s but %v -> %s", v4, a, mapped, b)
		}
	}
	// A zone does not change the client.
	if a, b := p.Pick(at(netip.MustParseAddr("fe80::1")), nil), p.Pick(at(netip.MustParseAddr("fe80::1%eth0")), nil); a != b {
		t.Errorf("fe80::1 -> %s but fe80::1%%eth0 -> %s", a, b)
	}
	// The zero Addr hashes as all-zero bytes, like ::.
	zero := p.Pick(at(netip.Addr{}), nil)
	if zero == nil || zero != p.Pick(at(netip.IPv6Unspecified()), nil) {
		t.Errorf("zero Addr -> %v, :: -> %v; want the same backend", zero, p.Pick(at(netip.IPv6Unspecified()), nil))
	}
}

// TestIPHashRetryIsTheNextChoice: with its backend tried, a client gets the
// backend it would get if that one were down, so retries are consistent too.
func TestIPHashRetryIsTheNextChoice(t *testing.T) {
	p := mustPool(t, IPHash, members(2, 1, 1, 3))
	for _, ip := range clientIPs(2000) {
		first := p.Pick(at(ip), nil)
		var tried Tried
		tried.Add(first)
		retry := p.Pick(at(ip), &tried)
		first.SetHealthy(false)
		down := p.Pick(at(ip), nil)
		first.SetHealthy(true)
		if retry == first || retry != down {
			t.Fatalf("client %v: first %s, retry %s, with first down %s", ip, first, retry, down)
		}
	}
}

// TestHash16IsXXH64 checks the inlined hash against a plain XXH64, itself
// checked against published vectors.
func TestHash16IsXXH64(t *testing.T) {
	for _, v := range []struct {
		in   string
		want uint64
	}{
		{"", 0xef46db3751d8e999},
		{"a", 0xd24ec4f1a98c6e5b},
		{"as", 0x1c330fb2d66be179},
		{"asd", 0x631c37ce72a97393},
		{"asdf", 0x415872f599cea71e},
		{"Call me Ishmael. Some years ago--never mind how long precisely-", 0x02a2e85470d6fd96},
	} {
		if got := xxh64([]byte(v.in), 0); got != v.want {
			t.Fatalf("reference xxh64(%q) = %#x, want %#x", v.in, got, v.want)
		}
	}
	for _, ip := range clientIPs(200) {
		b := ip.As16()
		lo, hi := binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])
		for _, seed := range []uint64{0, 1, hashString("10.0.0.1:80"), ^uint64(0)} {
			if got, want := hash16(lo, hi, seed), xxh64(b[:], seed); got != want {
				t.Fatalf("hash16(%v, %#x) = %#x, want %#x", ip, seed, got, want)
			}
		}
	}
}

// xxh64 is a straightforward XXH64, for TestHash16IsXXH64.
func xxh64(in []byte, seed uint64) uint64 {
	round := func(acc, lane uint64) uint64 {
		return bits.RotateLeft64(acc+lane*prime2, 31) * prime1
	}
	merge := func(acc, v uint64) uint64 {
		return (acc^round(0, v))*prime1 + prime4
	}
	n := uint64(len(in))
	var h uint64
	if len(in) >= 32 {
		v1, v2, v3, v4 := seed+prime1+prime2, seed+prime2, seed, seed-prime1
		for ; len(in) >= 32; in = in[32:] {
			v1 = round(v1, binary.LittleEndian.Uint64(in[0:]))
			v2 = round(v2, binary.LittleEndian.Uint64(in[8:]))
			v3 = round(v3, binary.LittleEndian.Uint64(in[16:]))
			v4 = round(v4, binary.LittleEndian.Uint64(in[24:]))
		}
		h = bits.RotateLeft64(v1, 1) + bits.RotateLeft64(v2, 7) + bits.RotateLeft64(v3, 12) + bits.RotateLeft64(v4, 18)
		h = merge(h, v1)
		h = merge(h, v2)
		h = merge(h, v3)
		h = merge(h, v4)
	} else {
		h = seed + prime5
	}
	h += n
	for ; len(in) >= 8; in = in[8:] {
		h ^= round(0, binary.LittleEndian.Uint64(in))
		h = bits.RotateLeft64(h, 27)*prime1 + prime4
	}
	if len(in) >= 4 {
		h ^= uint64(binary.LittleEndian.Uint32(in)) * prime1
		h = bits.RotateLeft64(h, 23)*prime2 + prime3
		in = in[4:]
	}
	for _, c := range in {
		h ^= uint64(c) * prime5
		h = bits.RotateLeft64(h, 11) * prime1
	}
	h ^= h >> 33
	h *= prime2
	h ^= h >> 29
	h *= prime3
	h ^= h >> 32
	return h
}
