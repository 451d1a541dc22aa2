package lbtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Dnsmasq is a real DNS server on 127.0.0.1 answering from a hosts file (A
// and AAAA, re-read on SIGHUP: SetHosts) and --srv-host flags (read at start
// only: Restart with new ones). Names under lbctl.test that it does not know
// get NXDOMAIN; names elsewhere get REFUSED (it has no upstream).
//
//	ns := lbtest.NewDnsmasq(t, "127.0.0.2 web.lbctl.test")
//	... resolver = ns.Addr() ...
//	ns.SetHosts("127.0.0.2 web.lbctl.test\n127.0.0.3 web.lbctl.test")
type Dnsmasq struct {
	t     testing.TB
	bin   string
	port  int
	hosts string
	srv   []string
	gen   int
	proc  *Process
}

// NewDnsmasq starts dnsmasq serving hosts (lines of a hosts file) and the
// SRV records srv (dnsmasq's --srv-host values), and returns once it
// answers. It skips the test without dnsmasq (fails it under CI=true).
func NewDnsmasq(t testing.TB, hosts string, srv ...string) *Dnsmasq {
	t.Helper()
	d := &Dnsmasq{t: t, bin: Binary(t, "dnsmasq", "/usr/sbin/dnsmasq", "dnsmasq"),
		hosts: filepath.Join(t.TempDir(), "hosts"), srv: srv}
	d.writeHosts(hosts)
	for range 3 {
		d.port = FreePort(t)
		if d.start() {
			return d
		}
		// The port was taken between probing and dnsmasq's bind: retry.
	}
	t.Fatalf("dnsmasq did not start:\n%s", d.proc.Output())
	return nil
}

// Addr is the server's address, 127.0.0.1:port.
func (d *Dnsmasq) Addr() string { return fmt.Sprintf("127.0.0.1:%d", d.port) }

// writeHosts writes the hosts file with a marker name of a new generation,
// so that SetHosts can tell the new file is being served.
func (d *Dnsmasq) writeHosts(hosts string) {
	d.gen++
	data := fmt.Sprintf("127.0.0.254 ready.lbctl.test gen-%d.lbctl.test\n%s\n", d.gen, hosts)
	if err := os.WriteFile(d.hosts, []byte(data), 0o644); err != nil {
		d.t.Fatal(err)
	}
}

// start runs dnsmasq on d.port and reports whether it answers.
func (d *Dnsmasq) start() bool {
	args := []string{"--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
		"--listen-address=127.0.0.1", "--bind-interfaces", fmt.Sprintf("--port=%d", d.port),
		"--addn-hosts=" + d.hosts, "--local=/lbctl.test/", "--log-facility=-", "--pid-file="}
	if os.Geteuid() == 0 {
		args = append(args, "--user=root") // else it drops to nobody, who cannot read the temp dir
	}
	for _, s := range d.srv {
		args = append(args, "--srv-host="+s)
	}
	d.proc = Start(d.t, d.bin, args...)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && d.proc.Running() {
		if d.Served(fmt.Sprintf("gen-%d.lbctl.test", d.gen)) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.proc.Stop()
	return false
}

// Served reports whether dnsmasq answers name with an address now.
func (d *Dnsmasq) Served(name string) bool {
	addr := d.Addr()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, network, addr)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	addrs, err := r.LookupNetIP(ctx, "ip", name+".")
	return err == nil && len(addrs) > 0
}

// SetHosts rewrites the hosts file, sends SIGHUP and waits until dnsmasq
// serves the new file: from then on a DNS source must see it within an
// interval and a second.
func (d *Dnsmasq) SetHosts(hosts string) {
	d.t.Helper()
	d.writeHosts(hosts)
	if err := d.proc.Signal(syscall.SIGHUP); err != nil {
		d.t.Fatal(err)
	}
	marker := fmt.Sprintf("gen-%d.lbctl.test", d.gen)
	Eventually(d.t, 5*time.Second, func() bool { return d.Served(marker) }, "dnsmasq does not serve the new hosts file")
}

// Stop stops dnsmasq (by its PID) and returns once it has exited.
func (d *Dnsmasq) Stop() { d.proc.Stop() }

// Restart stops dnsmasq and starts it again on the same port with the SRV
// records srv.
func (d *Dnsmasq) Restart(srv ...string) {
	d.t.Helper()
	d.proc.Stop()
	d.srv = srv
	deadline := time.Now().Add(5 * time.Second)
	for !d.start() {
		if time.Now().After(deadline) {
			d.t.Fatalf("dnsmasq did not start again on port %d:\n%s", d.port, d.proc.Output())
		}
		time.Sleep(100 * time.Millisecond) // the old socket may linger a moment
	}
}
