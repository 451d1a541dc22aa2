package lbtest

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Bird is a real BIRD 2 router (Debian's bird2) running in a namespace the
// test created, with its control socket in the test's temporary directory;
// the test reads its routes and sessions with birdc.
//
//	ns := lbtest.NewNetns(t)
//	r := lbtest.NewBird(t, ns, lbtest.BirdBGP(ns.NSAddr, 65000, lbtest.BirdPeer{Name: "lb", Address: ns.HostAddr, ASN: 65010}))
//	... lbctl's speaker connects to ns.NSAddr:179 from ns.HostAddr ...
//	lbtest.Until(t, 10*time.Second, func() (bool, string) { hops := r.Route("10.99.0.1/32"); ... })
type Bird struct {
	t    testing.TB
	ns   *Netns
	bin  string
	conf string
	sock string
	proc *Process
}

// BirdPeer is one BGP neighbour of a router made by BirdBGP.
type BirdPeer struct {
	Name    string // the BGP protocol's name in bird (show protocols NAME)
	Address netip.Addr
	ASN     uint32
	Local   netip.Addr // the router's address for this session; zero: BirdBGP's local
}

// BirdBGP is a bird configuration for a router at local (an IPv4 address,
// its router ID too; a peer's Local overrides it for that session) in AS asn that listens on port 179 (passive: the peers connect to
// it), accepts every IPv4 and IPv6 route its peers announce and sends
// them none. extra is appended (a kernel protocol, ECMP settings, ...).
func BirdBGP(local netip.Addr, asn uint32, peers []BirdPeer, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "router id %s;\nlog stderr all;\nprotocol device { scan time 1; }\n", local)
	for _, p := range peers {
		l := local
		if p.Local.IsValid() {
			l = p.Local
		}
		fmt.Fprintf(&b, `protocol bgp %s {
	local %s as %d;
	neighbor %s as %d;
	passive on;
	connect retry time 1;
	error wait time 1, 2;
	ipv4 { import all; export none; };
	ipv6 { import all; export none; };
}
`, p.Name, l, asn, p.Address, p.ASN)
	}
	b.WriteString(extra)
	return b.String()
}

// NewBird writes conf and starts bird in ns; it returns once birdc
// answers. It skips the test without bird2 (fails it under CI=true).
func NewBird(t testing.TB, ns *Netns, conf string) *Bird {
	t.Helper()
	dir := t.TempDir()
	r := &Bird{t: t, ns: ns, bin: Binary(t, "bird", "/usr/sbin/bird", "bird2"),
		conf: filepath.Join(dir, "bird.conf"), sock: filepath.Join(dir, "bird.ctl")}
	Binary(t, "birdc", "/usr/sbin/birdc", "bird2")
	if err := os.WriteFile(r.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	r.Start()
	return r
}

// Start starts bird (again, after Kill or Stop) and waits until birdc
// answers.
func (r *Bird) Start() {
	r.t.Helper()
	r.proc = r.ns.Start(r.t, r.bin, "-f", "-c", r.conf, "-s", r.sock)
	Until(r.t, 10*time.Second, func() (bool, string) {
		out, err := exec.Command("birdc", "-s", r.sock, "show", "status").CombinedOutput()
		return err == nil && strings.Contains(string(out), "Daemon is up"), fmt.Sprintf("birdc: %v %s\nbird: %s", err, out, r.proc.Output())
	})
}

// Stop stops bird with SIGTERM (it ends its sessions with a CEASE) and
// waits for it to exit.
func (r *Bird) Stop() { r.proc.Stop() }

// Kill kills bird with SIGKILL, as a crash would, and waits for it to exit.
func (r *Bird) Kill() {
	r.proc.Signal(syscall.SIGKILL)
	Until(r.t, 10*time.Second, func() (bool, string) { return !r.proc.Running(), "bird still running after SIGKILL" })
}

// Output is what bird logged so far (its current run).
func (r *Bird) Output() string { return r.proc.Output() }

// Show runs birdc show ARGS and returns its output ("" if birdc failed).
func (r *Bird) Show(args ...string) string {
	out, err := exec.Command("birdc", append([]string{"-s", r.sock, "show"}, args...)...).CombinedOutput()
	if err != nil {
		return ""
	}
	return string(out)
}

// Route returns the next hops of bird's route to exactly prefix, none when
// it has no such route (several with ECMP, merge paths on).
func (r *Bird) Route(prefix string) []netip.Addr {
	var hops []netip.Addr
	for _, line := range strings.Split(r.Show("route", prefix), "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "via" {
				if a, err := netip.ParseAddr(f[i+1]); err == nil {
					hops = append(hops, a)
				}
			}
		}
	}
	return hops
}

// Session returns the state of the BGP protocol name as birdc shows it
// ("Established", "Passive", "Active", ...), "" when unknown.
func (r *Bird) Session(name string) string {
	for _, line := range strings.Split(r.Show("protocols", name), "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 && f[0] == name && f[1] == "BGP" {
			return f[len(f)-1]
		}
	}
	return ""
}
