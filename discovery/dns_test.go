package discovery

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// dnsInterval is the refresh period in these tests; a change must show
// within dnsInterval + 1s of dnsmasq serving it.
const dnsInterval = time.Second

// A and AAAA records of a name: the set follows the hosts file within an
// interval and a second; dnsmasq stopped, errors and never a set; started
// again, the set follows again; NXDOMAIN is a failure too.
func TestDNSSource(t *testing.T) {
	t.Parallel()
	ns := lbtest.NewDnsmasq(t, "127.0.0.11 web.lbctl.test\n::1 web.lbctl.test\n::ffff:127.0.0.12 web.lbctl.test")
	r := run(t, NewDNS(DNSOptions{Name: "web.lbctl.test", Port: 8080, Weight: 2, Backup: true,
		Resolver: ns.Addr(), Interval: dnsInterval}))
	r.waitSet(t, 5*time.Second, "127.0.0.11:8080 w=2 backup", "127.0.0.12:8080 w=2 backup", "[::1]:8080 w=2 backup")

	t.Run("record added", func(t *testing.T) {
		ns.SetHosts("127.0.0.11 web.lbctl.test\n127.0.0.13 web.lbctl.test\n::1 web.lbctl.test")
		d := r.waitSet(t, dnsInterval+time.Second, "127.0.0.11:8080 w=2 backup", "127.0.0.13:8080 w=2 backup", "[::1]:8080 w=2 backup")
		t.Logf("seen after %v", d)
	})
	t.Run("record removed", func(t *testing.T) {
		ns.SetHosts("127.0.0.13 web.lbctl.test")
		d := r.waitSet(t, dnsInterval+time.Second, "127.0.0.13:8080 w=2 backup")
		t.Logf("seen after %v", d)
	})
	t.Run("server stopped, then back", func(t *testing.T) {
		m := r.mark()
		ns.Stop()
		err, failed := r.waitErr(t, dnsInterval+maxQueryTime+2*time.Second, m, "lookup web.lbctl.test.")
		t.Logf("error: %v", err)
		lbtest.Until(t, 3*dnsInterval+2*time.Second, func() (bool, string) {
			n := len(r.since(failed))
			return n >= 3, fmt.Sprintf("%d results since the first failure, want 3", n)
		})
		r.errorsOnly(t, failed)
		ns.Restart()
		ns.SetHosts("127.0.0.14 web.lbctl.test")
		d := r.waitSet(t, dnsInterval+time.Second, "127.0.0.14:8080 w=2 backup")
		t.Logf("seen after %v", d)
	})
	t.Run("NXDOMAIN", func(t *testing.T) {
		m := r.mark()
		ns.SetHosts("127.0.0.15 other.lbctl.test")
		err, failed := r.waitErr(t, dnsInterval+time.Second, m, "no such host")
		t.Logf("error: %v", err)
		r.errorsOnly(t, failed)
		ns.SetHosts("127.0.0.15 web.lbctl.test")
		r.waitSet(t, dnsInterval+time.Second, "127.0.0.15:8080 w=2 backup")
	})
}

// SRV records: the lowest priority are primaries and the rest backups,
// SRV weights become weights (0 counts as 1), each target's port is used,
// a target that does not exist is left out, a target whose lookup fails
// fails the refresh, and no record at all is a failure.
func TestSRVSource(t *testing.T) {
	t.Parallel()
	hosts := "127.0.0.21 a.lbctl.test\n::1 a.lbctl.test\n127.0.0.22 b.lbctl.test\n127.0.0.23 c.lbctl.test"
	ns := lbtest.NewDnsmasq(t, hosts,
		"_web._tcp.lbctl.test,a.lbctl.test,8001,10,5",
		"_web._tcp.lbctl.test,b.lbctl.test,8002,10,0",
		"_web._tcp.lbctl.test,c.lbctl.test,8003,20,7",
		"_web._tcp.lbctl.test,gone.lbctl.test,8004,10,1", // NXDOMAIN: left out
		"_web._tcp.lbctl.test,a.lbctl.test,8003,30,9",    // a second port on a
		"_web._tcp.lbctl.test,b.lbctl.test,8002,20,3",    // b:8002 again, as a backup: the primary wins
	)
	r := run(t, NewSRV(SRVOptions{Name: "_web._tcp.lbctl.test", Resolver: ns.Addr(), Interval: dnsInterval}))
	r.waitSet(t, 5*time.Second,
		"127.0.0.21:8001 w=5", "127.0.0.21:8003 w=9 backup", "127.0.0.22:8002 w=1",
		"127.0.0.23:8003 w=7 backup", "[::1]:8001 w=5", "[::1]:8003 w=9 backup")

	t.Run("a target whose lookup fails fails the refresh", func(t *testing.T) {
		m := r.mark()
		ns.Restart("_web._tcp.lbctl.test,a.lbctl.test,8001,10,5", "_web._tcp.lbctl.test,x.elsewhere.test,8001,10,5")
		err, failed := r.waitErr(t, dnsInterval+maxQueryTime+2*time.Second, m, "SRV target x.elsewhere.test.")
		t.Logf("error: %v", err)
		r.errorsOnly(t, failed)
	})
	t.Run("no record", func(t *testing.T) {
		m := r.mark()
		ns.Restart()
		err, failed := r.waitErr(t, dnsInterval+2*time.Second, m, "lookup _web._tcp.lbctl.test.")
		t.Logf("error: %v", err)
		r.errorsOnly(t, failed)
	})
	t.Run("only targets that do not exist", func(t *testing.T) {
		m := r.mark()
		ns.Restart("_web._tcp.lbctl.test,gone.lbctl.test,8001,10,5")
		_, failed := r.waitErr(t, dnsInterval+2*time.Second, m, "no SRV target has an address")
		r.errorsOnly(t, failed)
	})
	t.Run("records changed", func(t *testing.T) {
		ns.Restart("_web._tcp.lbctl.test,c.lbctl.test,9003,1,0", "_web._tcp.lbctl.test,b.lbctl.test,9002,2,4")
		r.waitSet(t, dnsInterval+time.Second, "127.0.0.22:9002 w=4 backup", "127.0.0.23:9003 w=1")
	})
}

// 200 targets in two priorities (the answer needs TCP): every one is found
// with its own port and weight.
func TestSRVSource200Targets(t *testing.T) {
	t.Parallel()
	var hosts strings.Builder
	var srv, want []string
	for i := range 200 {
		ip := netip.AddrFrom4([4]byte{127, 0, 1 + byte(i/100), byte(1 + i%100)})
		fmt.Fprintf(&hosts, "%s t%d.lbctl.test\n", ip, i)
		prio, weight, port := 10, i%7, 10000+i
		if i >= 100 {
			prio = 20
		}
		srv = append(srv, fmt.Sprintf("_big._tcp.lbctl.test,t%d.lbctl.test,%d,%d,%d", i, port, prio, weight))
		e := fmt.Sprintf("%s:%d w=%d", ip, port, max(weight, 1))
		if prio == 20 {
			e += " backup"
		}
		want = append(want, e)
	}
	slices.SortFunc(want, func(a, b string) int {
		return netip.MustParseAddrPort(strings.Fields(a)[0]).Compare(netip.MustParseAddrPort(strings.Fields(b)[0]))
	})
	ns := lbtest.NewDnsmasq(t, hosts.String(), srv...)
	r := run(t, NewSRV(SRVOptions{Name: "_big._tcp.lbctl.test", Resolver: ns.Addr(), Interval: dnsInterval}))
	d := r.waitSet(t, 10*time.Second, want...)
	res, _ := r.last()
	backups := 0
	for _, e := range res.set {
		if e.Backup {
			backups++
		}
	}
	if len(res.set) != 200 || backups != 100 {
		t.Errorf("%d entries, %d backups; want 200 and 100", len(res.set), backups)
	}
	t.Logf("200 targets resolved after %v", d)
}

func TestDNSOptionsErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  Source
		err  string
	}{
		{"no port", NewDNS(DNSOptions{Name: "web.lbctl.test", Resolver: "127.0.0.1:1"}), "port is required"},
		{"bad weight", NewDNS(DNSOptions{Name: "web.lbctl.test", Port: 80, Weight: -1, Resolver: "127.0.0.1:1"}), "out of range"},
		{"bad resolver", NewDNS(DNSOptions{Name: "web.lbctl.test", Port: 80, Resolver: "ns1:53"}), `resolver "ns1:53"`},
		{"bad resolver (srv)", NewSRV(SRVOptions{Name: "_web._tcp.lbctl.test", Resolver: "127.0.0.1:0"}), `resolver "127.0.0.1:0"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, tc.src)
			r.waitErr(t, 5*time.Second, 0, tc.err)
		})
	}
}

func TestResolverAddr(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(conf, []byte("# generated\nsearch example.com\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := firstNameserver(conf); err != nil || got.String() != "192.0.2.53:53" {
		t.Errorf("firstNameserver = %v, %v; want 192.0.2.53:53", got, err)
	}
	if got, err := firstNameserver(filepath.Join(t.TempDir(), "none")); err != nil || got.String() != "127.0.0.1:53" {
		t.Errorf("firstNameserver(missing) = %v, %v; want 127.0.0.1:53", got, err)
	}
	for in, want := range map[string]string{"127.0.0.1:5353": "127.0.0.1:5353", "::1": "[::1]:53", "[::1]:54": "[::1]:54", "127.0.0.2": "127.0.0.2:53"} {
		if got, err := resolverAddr(in); err != nil || got.String() != want {
			t.Errorf("resolverAddr(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
}
