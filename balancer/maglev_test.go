package balancer

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// keys returns n distinct client address:port keys: IPv4 addresses in
// sequence (the hardest case for a hash), a few ports each.
func keys(n int) []netip.AddrPort {
	ks := make([]netip.AddrPort, n)
	for i := range ks {
		j := i / 4
		ks[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(j >> 16), byte(j >> 8), byte(j)}), uint16(40000+i%4))
	}
	return ks
}

// picks returns the backend address of each key, "" for nil.
func picks(p *Pool, ks []netip.AddrPort) []string {
	got := make([]string, len(ks))
	for i, k := range ks {
		if b := p.Pick(k, nil); b != nil {
			got[i] = b.Address()
		}
	}
	return got
}

func maglevPool(t testing.TB, ms []Member, opts ...Option) *Pool {
	t.Helper()
	p, err := New(Maglev, ms, opts...)
	if err != nil {
		t.Fatalf("New(maglev): %v", err)
	}
	return p
}

// TestMaglevWeights: over 1,000,000 keys each backend's share is its
// weight's share within 2 % (of that share); so is its share of the table.
func TestMaglevWeights(t *testing.T) {
	weights := []int{1, 2, 3, 4, 5, 1, 1, 10, 7, 1}
	var sum float64
	for _, w := range weights {
		sum += float64(w)
	}
	ms := members(weights...)
	p := maglevPool(t, ms, WithHashKey(HashKeyIPPort))
	got := map[string]int{}
	ks := keys(1_000_000)
	for _, k := range ks {
		got[p.Pick(k, nil).Address()]++
	}
	entries := map[string]int{}
	for _, x := range p.primary.mg.table {
		entries[p.primary.mg.cands[x].b.Address()]++
	}
	for i, m := range ms {
		want := float64(weights[i]) / sum
		share := float64(got[m.Backend.Address()]) / float64(len(ks))
		if d := share/want - 1; d > 0.02 || d < -0.02 {
			t.Errorf("%s (weight %d): %.4f of the keys, want %.4f ± 2%%", m.Backend, weights[i], share, want)
		}
		tshare := float64(entries[m.Backend.Address()]) / DefaultTableSize
		if d := tshare/want - 1; d > 0.002 || d < -0.002 {
			t.Errorf("%s (weight %d): %.5f of the table, want %.5f", m.Backend, weights[i], tshare, want)
		}
	}
}

// TestMaglevAddBackend: adding a backend to N moves about 1/(N+1) of the
// keys, nearly all of them to the new backend.
func TestMaglevAddBackend(t *testing.T) {
	ks := keys(200_000)
	for _, n := range []int{3, 10, 50} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			ms := members(slices.Repeat([]int{1}, n+1)...)
			before := picks(maglevPool(t, ms[:n]), ks)
			after := picks(maglevPool(t, ms), ks)
			newcomer := ms[n].Backend.Address()
			moved, toNew := 0, 0
			for i := range ks {
				if before[i] != after[i] {
					moved++
					if after[i] == newcomer {
						toNew++
					}
				}
			}
			ideal := 1 / float64(n+1)
			frac := float64(moved) / float64(len(ks))
			t.Logf("N=%d: %.4f of the keys moved (ideal %.4f), %d of %d to the new backend", n, frac, ideal, toNew, moved)
			if frac < ideal-0.01 || frac > ideal+0.03 {
				t.Errorf("%.4f of the keys moved, want %.4f (+3%% of the keys at most)", frac, ideal)
			}
			if got := float64(toNew) / float64(len(ks)); got < ideal-0.01 || got > ideal+0.01 {
				t.Errorf("%.4f of the keys went to the new backend, want %.4f", got, ideal)
			}
		})
	}
}

// TestMaglevRemoveBackend: removing one of N moves all of its keys and few
// others.
func TestMaglevRemoveBackend(t *testing.T) {
	ks := keys(200_000)
	for _, n := range []int{4, 10, 50} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			ms := members(slices.Repeat([]int{1}, n)...)
			gone := ms[n/2].Backend.Address()
			before := picks(maglevPool(t, ms), ks)
			after := picks(maglevPool(t, slices.Delete(slices.Clone(ms), n/2, n/2+1)), ks)
			own, others := 0, 0
			for i := range ks {
				switch {
				case after[i] == gone || after[i] == "":
					t.Fatalf("key %v: on %q after %s left", ks[i], after[i], gone)
				case before[i] == gone:
					own++
				case before[i] != after[i]:
					others++
				}
			}
			frac := float64(others) / float64(len(ks))
			t.Logf("N=%d: the removed backend had %d keys; %d others moved (%.4f of all)", n, own, others, frac)
			if frac > 0.03 {
				t.Errorf("%.4f of the other keys moved, want at most 0.03", frac)
			}
		})
	}
}

// TestMaglevIneligibleMovesOnlyItsKeys: when a backend is down, draining,
// disabled or already tried, its keys go elsewhere, spread over the others,
// and every other key stays; when it is back, its keys return. The table
// is not rebuilt, so the digest stays.
func TestMaglevIneligibleMovesOnlyItsKeys(t *testing.T) {
	ks := keys(100_000)
	for _, tc := range []struct {
		name        string
		out, in     func(b *Backend)
		triedToo    bool
		wantSpreadN int
	}{
		{"down", func(b *Backend) { b.SetHealthy(false) }, func(b *Backend) { b.SetHealthy(true) }, false, 4},
		{"draining", func(b *Backend) { b.SetAdmin(Draining) }, func(b *Backend) { b.SetAdmin(Enabled) }, false, 4},
		{"disabled", func(b *Backend) { b.SetAdmin(Disabled) }, func(b *Backend) { b.SetAdmin(Enabled) }, false, 4},
		{"tried", func(*Backend) {}, func(*Backend) {}, true, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms := members(1, 2, 1, 1, 1)
			p := maglevPool(t, ms)
			digest := p.TableDigest()
			before := picks(p, ks)
			gone := ms[1].Backend
			tc.out(gone)
			spread := map[string]int{}
			for i, k := range ks {
				var tried Tried
				if tc.triedToo {
					tried.Add(gone)
				}
				b := p.Pick(k, &tried)
				switch {
				case b == nil || b == gone:
					t.Fatalf("key %v: %v while %s is out", k, b, gone)
				case before[i] == gone.Address():
					spread[b.Address()]++
				case b.Address() != before[i]:
					t.Fatalf("key %v moved from %s to %s though its backend stayed", k, before[i], b)
				}
			}
			if len(spread) != tc.wantSpreadN {
				t.Errorf("its keys went to %d backends (%v), want %d", len(spread), spread, tc.wantSpreadN)
			}
			tc.in(gone)
			if after := picks(p, ks); !slices.Equal(after, before) {
				t.Error("keys did not all return when the backend did")
			}
			if p.TableDigest() != digest {
				t.Error("the digest changed with the health state")
			}
		})
	}
}

// TestMaglevFallbackFindsTheLastOne: with all but one backend out the walk
// along the table misses and the rendezvous fallback finds the last one;
// with none left, backups; then nil.
func TestMaglevFallbackFindsTheLastOne(t *testing.T) {
	ms := members(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
	ms = append(ms, Member{Backend: NewBackend("10.0.1.1:80"), Weight: 1, Backup: true},
		Member{Backend: NewBackend("10.0.1.2:80"), Weight: 3, Backup: true})
	p := maglevPool(t, ms, WithTableSize(251))
	for _, m := range ms[1:20] {
		m.Backend.SetHealthy(false)
	}
	ks := keys(10_000)
	for _, k := range ks {
		if b := p.Pick(k, nil); b != ms[0].Backend {
			t.Fatalf("key %v: %v, want the one primary left %s", k, b, ms[0].Backend)
		}
	}
	ms[0].Backend.SetAdmin(Draining)
	got := map[string]int{}
	for _, k := range ks {
		b := p.Pick(k, nil)
		if b == nil || (b != ms[20].Backend && b != ms[21].Backend) {
			t.Fatalf("key %v: %v, want a backup", k, b)
		}
		got[b.Address()]++
	}
	if n := got["10.0.1.2:80"]; n < 7000 || n > 8000 {
		t.Errorf("the backup of weight 3 took %d of 10000 keys, want about 7500 (%v)", n, got)
	}
	var tried Tried
	tried.Add(ms[20].Backend)
	tried.Add(ms[21].Backend)
	if b := p.Pick(ks[0], &tried); b != nil {
		t.Errorf("every backend out or tried: %v, want nil", b)
	}
}

// TestMaglevWeightZero: a member of weight 0 owns no entry and takes no
// key; a pool of weight-0 members only picks nil.
func TestMaglevWeightZero(t *testing.T) {
	ms := members(1, 0, 1)
	p := maglevPool(t, ms)
	for _, x := range p.primary.mg.table {
		if p.primary.mg.cands[x].b == ms[1].Backend {
			t.Fatal("a weight-0 member owns a table entry")
		}
	}
	if n := picks(p, keys(10_000)); slices.Contains(n, ms[1].Backend.Address()) {
		t.Error("a weight-0 member took a key")
	}
	if b := maglevPool(t, members(0, 0)).Pick(keys(1)[0], nil); b != nil {
		t.Errorf("all weights 0: %v, want nil", b)
	}
}

// TestMaglevHashKey: with "ip" the port does not matter; with "ip-port"
// the ports of one address spread over the backends, each port sticking.
func TestMaglevHashKey(t *testing.T) {
	for _, alg := range []string{Maglev, IPHash} {
		t.Run(alg, func(t *testing.T) {
			ms := members(1, 1, 1, 1)
			ip := mustPool(t, alg, ms)
			ipPort, err := New(alg, ms, WithHashKey(HashKeyIPPort))
			if err != nil {
				t.Fatal(err)
			}
			if ip.HashKey() != HashKeyIP || ipPort.HashKey() != HashKeyIPPort {
				t.Errorf("HashKey() = %q, %q", ip.HashKey(), ipPort.HashKey())
			}
			addr := netip.MustParseAddr("192.0.2.7")
			first := ip.Pick(netip.AddrPortFrom(addr, 1), nil)
			spread := map[*Backend]int{}
			for port := uint16(1000); port < 3000; port++ {
				ap := netip.AddrPortFrom(addr, port)
				if b := ip.Pick(ap, nil); b != first {
					t.Fatalf("hash key ip: port %d went to %s, port 1 to %s", port, b, first)
				}
				b := ipPort.Pick(ap, nil)
				if again := ipPort.Pick(ap, nil); again != b {
					t.Fatalf("hash key ip-port: %v went to %s, then %s", ap, b, again)
				}
				spread[b]++
			}
			for _, m := range ms {
				if n := spread[m.Backend]; n < 350 || n > 650 {
					t.Errorf("hash key ip-port: %s took %d of 2000 ports, want about 500", m.Backend, n)
				}
			}
		})
	}
}

// TestMaglevDigest: the digest is the same for the same members in any
// order, and changes with a weight, a member, a backup flag, the table
// size or the hash key.
func TestMaglevDigest(t *testing.T) {
	base := maglevPool(t, members(1, 2, 3)).TableDigest()
	if len(base) != 16 || strings.Trim(base, "0123456789abcdef") != "" {
		t.Fatalf("digest %q, want 16 hex digits", base)
	}
	ms := members(1, 2, 3)
	if d := maglevPool(t, []Member{ms[2], ms[0], ms[1]}).TableDigest(); d != base {
		t.Errorf("reordered members: digest %s, want %s", d, base)
	}
	backup := members(1, 2, 3)
	backup[2].Backup = true
	for name, d := range map[string]string{
		"weight":     maglevPool(t, members(1, 2, 4)).TableDigest(),
		"member":     maglevPool(t, members(1, 2, 3, 1)).TableDigest(),
		"backup":     maglevPool(t, backup).TableDigest(),
		"table size": maglevPool(t, members(1, 2, 3), WithTableSize(65521)).TableDigest(),
		"hash key":   maglevPool(t, members(1, 2, 3), WithHashKey(HashKeyIPPort)).TableDigest(),
	} {
		if d == base {
			t.Errorf("another %s, same digest %s", name, d)
		}
	}
	ipPort, err := New(IPHash, members(1, 2, 3), WithHashKey(HashKeyIPPort))
	if err != nil {
		t.Fatal(err)
	}
	// Other algorithms: a digest of the members, equal for the same
	// members in any order, changed by a weight or a backup flag.
	ih := mustPool(t, IPHash, members(1, 2, 3)).TableDigest()
	if len(ih) != 16 || ih == base {
		t.Errorf("ip-hash pool: digest %q, want 16 hex digits, not the maglev pool's", ih)
	}
	ms = members(1, 2, 3)
	if d := mustPool(t, IPHash, []Member{ms[1], ms[2], ms[0]}).TableDigest(); d != ih {
		t.Errorf("ip-hash pool, reordered members: digest %s, want %s", d, ih)
	}
	for name, d := range map[string]string{
		"weight":    mustPool(t, IPHash, members(1, 2, 4)).TableDigest(),
		"backup":    mustPool(t, IPHash, backup).TableDigest(),
		"algorithm": mustPool(t, RoundRobin, members(1, 2, 3)).TableDigest(),
		"hash key":  ipPort.TableDigest(),
	} {
		if d == ih {
			t.Errorf("ip-hash pool: another %s, same digest %s", name, d)
		}
	}
}

// TestMaglevNewRejects: table sizes that are not primes in range, and hash
// keys other than ip and ip-port.
func TestMaglevNewRejects(t *testing.T) {
	for _, tc := range []struct {
		opt  Option
		want string
	}{
		{WithTableSize(65536), "table size 65536 is not a prime"},
		{WithTableSize(5), "table size 5 is not a prime"},
		{WithTableSize(MaxTableSize + 2), "is not a prime in [7, 1048583]"},
		{WithHashKey("port"), `unknown hash key "port"`},
	} {
		if _, err := New(Maglev, members(1), tc.opt); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want one containing %q", err, tc.want)
		}
	}
	for _, n := range []int{MinTableSize, 251, DefaultTableSize, MaxTableSize} {
		if !IsPrime(n) {
			t.Errorf("IsPrime(%d) = false", n)
		}
		if _, err := New(Maglev, members(1, 1), WithTableSize(n)); err != nil {
			t.Errorf("table size %d: %v", n, err)
		}
	}
	if IsPrime(65535) || IsPrime(1) || IsPrime(0) || IsPrime(-7) {
		t.Error("IsPrime says yes to a non-prime")
	}
}

// goldenMembers is a pool as two lbctl instances would configure it.
func goldenMembers() []Member {
	return []Member{
		{Backend: NewBackend("10.0.0.11:80"), Weight: 1},
		{Backend: NewBackend("10.0.0.12:80"), Weight: 2},
		{Backend: NewBackend("[2001:db8::1]:80"), Weight: 1},
		{Backend: NewBackend("web4.internal:80"), Weight: 3},
		{Backend: NewBackend("10.0.0.99:80"), Weight: 1, Backup: true},
	}
}

// TestMaglevGolden pins the digest and a few picks: changing the hashes or
// the population loop moves clients when lbctl is upgraded, and two
// versions would disagree.
func TestMaglevGolden(t *testing.T) {
	p := maglevPool(t, goldenMembers())
	if d := p.TableDigest(); d != goldenDigest {
		t.Errorf("digest %s, want %s", d, goldenDigest)
	}
	for _, tc := range []struct{ client, want string }{
		{"192.0.2.1:1", "web4.internal:80"},
		{"192.0.2.2:1", "web4.internal:80"},
		{"198.51.100.7:1", "10.0.0.12:80"},
		{"203.0.113.200:1", "10.0.0.12:80"},
		{"[2001:db8:1::1]:1", "web4.internal:80"},
		{"127.0.0.1:1", "10.0.0.11:80"},
		{"8.8.8.8:1", "10.0.0.12:80"},
		{"1.1.1.1:1", "[2001:db8::1]:80"},
		{"172.16.5.4:1", "10.0.0.12:80"},
		{"100.64.0.1:1", "[2001:db8::1]:80"},
		{"[::1]:1", "web4.internal:80"},
	} {
		if b := p.Pick(netip.MustParseAddrPort(tc.client), nil); b.Address() != tc.want {
			t.Errorf("%s: %s, want %s", tc.client, b, tc.want)
		}
	}
}

const goldenDigest = "b91daf78cd317113"

// TestMaglevSameInAnotherProcess runs this test binary again as a child
// process, which builds the same pool (members in another order) and
// prints its digest and 10,000 picks; they must equal this process's.
func TestMaglevSameInAnotherProcess(t *testing.T) {
	ks := keys(10_000)
	if os.Getenv("LBCTL_MAGLEV_CHILD") == "1" {
		ms := goldenMembers()
		slices.Reverse(ms)
		p := maglevPool(t, ms, WithHashKey(HashKeyIPPort))
		w := bufio.NewWriter(os.Stdout)
		fmt.Fprintf(w, "digest %s\n", p.TableDigest())
		for _, a := range picks(p, ks) {
			fmt.Fprintf(w, "pick %s\n", a)
		}
		w.Flush()
		return
	}
	p := maglevPool(t, goldenMembers(), WithHashKey(HashKeyIPPort))
	cmd := exec.Command(os.Args[0], "-test.run=^TestMaglevSameInAnotherProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "LBCTL_MAGLEV_CHILD=1")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Logf("child stderr: %s", ee.Stderr)
		}
		t.Fatalf("child: %v", err)
	}
	var digest string
	var got []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "digest "); ok {
			digest = d
		} else if a, ok := strings.CutPrefix(sc.Text(), "pick "); ok {
			got = append(got, a)
		}
	}
	if digest != p.TableDigest() {
		t.Errorf("child's digest %q, this process's %q", digest, p.TableDigest())
	}
	want := picks(p, ks)
	if len(got) != len(want) {
		t.Fatalf("child printed %d picks, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("key %v: child picked %s, this process %s", ks[i], got[i], want[i])
		}
	}
}

// BenchmarkMaglevPick is one pick from a table of 65537 entries over N
// backends, a different key each time, beside ip-hash (rendezvous: O(N))
// over the same backends.
func BenchmarkMaglevPick(b *testing.B) {
	for _, alg := range []string{Maglev, IPHash} {
		for _, n := range []int{10, 100, 1000} {
			b.Run(fmt.Sprintf("%s/N=%d", alg, n), func(b *testing.B) {
				ms := make([]Member, n)
				for i := range ms {
					ms[i] = Member{Backend: NewBackend(fmt.Sprintf("10.0.%d.%d:80", i/250, 1+i%250)), Weight: 1}
				}
				p := mustPool(b, alg, ms)
				ks := keys(1024)
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					var tried Tried
					if p.Pick(ks[i&1023], &tried) == nil {
						b.Fatal("nil pick")
					}
					i++
				}
			})
		}
	}
}

// BenchmarkMaglevBuild is building a pool's table (and its digest), as a
// reload or a change of the backend set does: M=65537, N backends of mixed
// weights.
func BenchmarkMaglevBuild(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			ms := make([]Member, n)
			for i := range ms {
				ms[i] = Member{Backend: NewBackend(fmt.Sprintf("10.0.%d.%d:80", i/250, 1+i%250)), Weight: 1 + i%5}
			}
			b.ReportAllocs()
			for b.Loop() {
				maglevPool(b, ms)
			}
		})
	}
}
