package lbtest

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// Netns is a network namespace a test created, joined to the test's own
// (root) namespace by a veth pair on a /30 of 10.0.0.0/8 that no interface
// of the host uses: HostAddr on the host side, NSAddr inside. The namespace
// and the veth pair are deleted in the test's cleanup.
//
//	ns := lbtest.NewNetns(t)                // skips unless root (fails under CI=true)
//	p := ns.Start(t, "bird", "-f", ...)     // a process inside the namespace
//	... dial ns.NSAddr from the test process ...
type Netns struct {
	Name     string     // the namespace (ip netns)
	HostAddr netip.Addr // the test's side of the veth pair
	NSAddr   netip.Addr // the namespace's side
	HostIf   string     // the host side's interface name
	// HostAddr6 and NSAddr6 are the two ends' IPv6 addresses, on a /64 of
	// a random unique local prefix (fdXX:...), usable at once (no DAD).
	HostAddr6, NSAddr6 netip.Addr
}

// NeedRoot skips the test unless it runs as root (network namespaces and
// veth pairs need it), except under CI=true, where CI runs as root and
// this is a failure.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root (network namespaces); CI runs as root")
	}
	t.Skip("needs root to create network namespaces (CI runs it as root)")
}

// NewNetns creates a namespace with a veth pair to the test's namespace.
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	NeedRoot(t)
	Binary(t, "ip", "/usr/sbin/ip", "iproute2")
	used := usedNets()
	var n *Netns
	for range 50 {
		// 10.[200-249].x.(4k): one /30, its .1 and .2 ends.
		r := rand.Uint32()
		base := netip.AddrFrom4([4]byte{10, byte(200 + r%50), byte(r >> 8), byte(r>>16) & 0xfc})
		host, nsAddr := base.Next(), base.Next().Next()
		if slices.ContainsFunc(used, func(p netip.Prefix) bool { return p.Overlaps(netip.PrefixFrom(base, 30)) }) {
			continue
		}
		id := fmt.Sprintf("%d%04x", os.Getpid()%100000, rand.Uint32()&0xffff)
		n = &Netns{Name: "lbt" + id, HostAddr: host, NSAddr: nsAddr, HostIf: "lbh" + id}
		var ula [16]byte
		ula[0] = 0xfd
		for i := 1; i < 8; i++ {
			ula[i] = byte(rand.Uint32())
		}
		ula[15] = 1
		n.HostAddr6 = netip.AddrFrom16(ula)
		n.NSAddr6 = n.HostAddr6.Next()
		break
	}
	if n == nil {
		t.Fatal("no free 10.x /30 for a veth pair")
	}
	peerIf := "lbn" + strings.TrimPrefix(n.Name, "lbt")
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", n.Name).Run()
		exec.Command("ip", "link", "del", n.HostIf).Run() // gone with the namespace already, normally
	})
	run(t, "ip", "netns", "add", n.Name)
	run(t, "ip", "link", "add", n.HostIf, "type", "veth", "peer", "name", peerIf, "netns", n.Name)
	run(t, "ip", "addr", "add", n.HostAddr.String()+"/30", "dev", n.HostIf)
	run(t, "ip", "-6", "addr", "add", n.HostAddr6.String()+"/64", "dev", n.HostIf, "nodad")
	run(t, "ip", "link", "set", n.HostIf, "up")
	n.Exec(t, "ip", "addr", "add", n.NSAddr.String()+"/30", "dev", peerIf)
	n.Exec(t, "ip", "-6", "addr", "add", n.NSAddr6.String()+"/64", "dev", peerIf, "nodad")
	n.Exec(t, "ip", "link", "set", peerIf, "up")
	n.Exec(t, "ip", "link", "set", "lo", "up")
	return n
}

// Exec runs a command inside the namespace and fails the test if it fails.
func (n *Netns) Exec(t testing.TB, bin string, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", n.Name, bin}, args...)...)
}

// Start starts a long-running program inside the namespace (see Start:
// stopped by its PID in the test's cleanup; ip netns exec execs the
// program, so the PID is the program's).
func (n *Netns) Start(t testing.TB, bin string, args ...string) *Process {
	t.Helper()
	return Start(t, "ip", append([]string{"netns", "exec", n.Name, bin}, args...)...)
}

func run(t testing.TB, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// usedNets lists the IPv4 networks of the host's addresses and routes, to
// keep a new veth pair out of their way.
func usedNets() []netip.Prefix {
	var nets []netip.Prefix
	for _, args := range [][]string{{"-4", "-o", "addr", "show"}, {"-4", "-o", "route", "show", "table", "all"}} {
		out, _ := exec.Command("ip", args...).Output()
		for _, f := range strings.Fields(string(out)) {
			if p, err := netip.ParsePrefix(f); err == nil && p.Addr().Is4() && p.Bits() > 0 {
				nets = append(nets, p.Masked())
			}
		}
	}
	return nets
}
