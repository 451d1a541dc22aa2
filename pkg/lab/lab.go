// Package lab builds, in network namespaces, the setup of README "Scaling
// out": a router running bird2 that spreads the flows to one service
// address over three lbctl instances with kernel ECMP, the instances
// announcing that address to it with BGP, three backends behind them and a
// client with 1,000 addresses. Both make lab (cmd/lblab, which prints what
// happens) and this package's test (which asserts it) drive it, so the
// demo and the test are the same topology.
//
//	       client (10.78.0.0/22 + 10.77.0.2)
//	          |
//	       router 10.77.0.1, bird2 AS 65000, ECMP on the L4 hash
//	      /   |   \                          \
//	   lb1   lb2   lb3  (10.77.N.2, AS 65010)  backends b1 b2 b3
//	each: lbctl, VIP 10.99.0.1 on lo,           (10.77.9.11-13, TCP :80
//	listeners VIP:80/tcp and VIP:53/udp          and UDP :53; each reply
//	(tcp also on its own address)                names the backend and
//	                                             the instance that sent it)
//
// Everything is real: lbctl is the built binary (one process per
// instance, run with ip netns exec), bird is Debian's bird2 with its
// kernel protocol installing a multipath route, the kernel hashes each
// flow's addresses and ports (fib_multipath_hash_policy = 1) to pick the
// instance. The backends and the client are sockets of this process,
// opened inside their namespaces (see netns.do); a backend's reply names
// itself and the address the connection came from, which is the instance
// that served it.
//
//	l, err := lab.Start(lab.Options{Lbctl: "bin/lbctl"})
//	defer l.Close()
//	r, err := l.Tour(os.Stdout)          // every step below, printed as it goes
//	flows, err := l.Flows(1000)          // or one step: each client via the router and via each instance
//	stop, err := l.Stop(l.Instances[0])  // SIGTERM: withdrawal, then the listener closes
//
// It measures behaviour, not speed: the clients pace themselves, and the
// numbers it prints are counts and delays, not throughput. It needs root
// (namespaces), ip (iproute2), bird and birdc (bird2). It touches nothing
// outside its namespaces: no address, route or sysctl of the caller's
// namespace changes, and Close kills every process it started (by PID)
// and deletes the namespaces, and with them every veth pair.
package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// The lab's addresses and numbers.
var (
	VIP        = netip.MustParseAddr("10.99.0.1") // the service address the instances announce
	VIPPrefix  = netip.PrefixFrom(VIP, 32)
	RouterAddr = netip.MustParseAddr("10.77.0.1") // the router towards the client
	ClientNet  = netip.MustParsePrefix("10.78.0.0/22")
)

// Ports of the service: TCP (pool "web", maglev, hash_key "ip") and UDP
// (pool "dns", maglev, hash_key "ip-port").
const (
	TCPPort   = 80
	UDPPort   = 53
	RouterASN = 65000
	LbctlASN  = 65010
	// Clients is the number of client addresses, the first of ClientNet.
	Clients = 1000
)

// Options say where the programs are and how the instances behave.
type Options struct {
	Lbctl string // the lbctl binary (required)
	Bird  string // default: bird in PATH, else /usr/sbin/bird
	Birdc string // default: birdc in PATH, else /usr/sbin/birdc
	// Dir holds configurations, sockets and logs; default: a new
	// temporary directory, removed by Close.
	Dir string
	// WithdrawDelay is the instances' [bgp] withdraw_delay; default 2s.
	WithdrawDelay time.Duration
	// Progress, if set, receives a line per setup step.
	Progress io.Writer
}

// Lab is a running lab. Its methods are not safe for concurrent use.
type Lab struct {
	opts      Options
	tmp       bool // Dir is ours to remove
	router    netns
	client    netns
	backendNS netns
	Instances []*Instance
	Backends  []*Backend
	Bird      *Process
	clients   []netip.Addr
	made      []netns
	udp       []*udpFlow
	closeOnce sync.Once
}

// Instance is one lbctl instance in its own namespace.
type Instance struct {
	Name    string     // lb1, lb2, lb3
	Addr    netip.Addr // its address towards the router, BGP next hop and router_id
	ns      netns
	config  string
	control string // its control socket (a unix socket: reachable from any namespace)
	Proc    *Process
}

// Start builds the lab and returns once the router has a route to VIP
// through all three instances. On error everything made so far is undone.
func Start(opts Options) (l *Lab, err error) {
	if opts.Lbctl == "" {
		return nil, errors.New("lab: Options.Lbctl (the lbctl binary) is required")
	}
	if opts.Bird, err = findBinary(opts.Bird, "bird"); err != nil {
		return nil, err
	}
	if opts.Birdc, err = findBinary(opts.Birdc, "birdc"); err != nil {
		return nil, err
	}
	if opts.WithdrawDelay == 0 {
		opts.WithdrawDelay = 2 * time.Second
	}
	l = &Lab{opts: opts}
	if l.opts.Dir == "" {
		if l.opts.Dir, err = os.MkdirTemp("", "lblab-"); err != nil {
			return nil, err
		}
		l.tmp = true
	}
	defer func() {
		if err != nil {
			l.Close()
			l = nil
		}
	}()
	if err = l.network(); err != nil {
		return l, err
	}
	l.progress("network: router, client with %d addresses, 3 instance and 1 backend namespaces", Clients)
	if err = l.startBackends(); err != nil {
		return l, err
	}
	if err = l.startBird(); err != nil {
		return l, err
	}
	l.progress("router: bird up")
	for _, in := range l.Instances {
		if err = l.startInstance(in); err != nil {
			return l, err
		}
	}
	l.progress("instances: 3 lbctl processes started")
	begin := time.Now()
	var at time.Time
	if at, err = l.WaitHops(30*time.Second, "lb1", "lb2", "lb3"); err != nil {
		return l, err
	}
	l.progress("router: ECMP route through lb1, lb2 and lb3, %v after their start", at.Sub(begin).Round(time.Millisecond))
	return l, nil
}

func (l *Lab) progress(format string, args ...any) {
	if l.opts.Progress != nil {
		fmt.Fprintf(l.opts.Progress, "lab: "+format+"\n", args...)
	}
}

func findBinary(given, name string) (string, error) {
	if given != "" {
		return given, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if p := "/usr/sbin/" + name; fileExists(p) {
		return p, nil
	}
	return "", fmt.Errorf("lab: %s not found (apt-get install bird2)", name)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// network makes the namespaces, veth pairs, addresses and routes.
func (l *Lab) network() error {
	id := fmt.Sprintf("lblab%d", os.Getpid())
	l.router, l.client, l.backendNS = netns(id+"-r"), netns(id+"-c"), netns(id+"-b")
	for i := 1; i <= 3; i++ {
		l.Instances = append(l.Instances, &Instance{
			Name: fmt.Sprintf("lb%d", i), Addr: netip.AddrFrom4([4]byte{10, 77, byte(i), 2}),
			ns: netns(fmt.Sprintf("%s-lb%d", id, i)),
		})
	}
	all := []netns{l.router, l.client, l.backendNS}
	for _, in := range l.Instances {
		all = append(all, in.ns)
	}
	for _, n := range all {
		if _, err := netns("").ip("netns", "add", string(n)); err != nil {
			return err
		}
		l.made = append(l.made, n)
		if _, err := n.ip("link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	// The router forwards, hashes flows on addresses and ports across the
	// paths of a multipath route, and checks no source path (a reply of
	// an instance is routed independently of the flow's way in).
	if err := l.router.sysctl("net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"); err != nil {
		return err
	}
	// link joins the router (interface name, address rAddr/24) to a
	// namespace (eth0, address nAddr/24, default route via the router).
	link := func(n netns, name string, rAddr, nAddr netip.Addr) error {
		for _, args := range [][]string{
			{"link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", string(n)},
			{"addr", "add", rAddr.String() + "/24", "dev", name},
			{"link", "set", name, "up"},
		} {
			if _, err := l.router.ip(args...); err != nil {
				return err
			}
		}
		for _, args := range [][]string{
			{"addr", "add", nAddr.String() + "/24", "dev", "eth0"},
			{"link", "set", "eth0", "up"},
			{"route", "add", "default", "via", rAddr.String()},
		} {
			if _, err := n.ip(args...); err != nil {
				return err
			}
		}
		return nil
	}
	if err := link(l.client, "client", RouterAddr, netip.MustParseAddr("10.77.0.2")); err != nil {
		return err
	}
	if err := link(l.backendNS, "backends", netip.MustParseAddr("10.77.9.1"), netip.MustParseAddr("10.77.9.11")); err != nil {
		return err
	}
	for _, in := range l.Instances {
		if err := link(in.ns, in.Name, in.Addr.Prev(), in.Addr); err != nil {
			return err
		}
		if _, err := in.ns.ip("addr", "add", VIPPrefix.String(), "dev", "lo"); err != nil {
			return err
		}
	}
	// The client's 1,000 addresses, and the router's way to them.
	var lines []string
	a := ClientNet.Addr().Next()
	for range Clients {
		l.clients = append(l.clients, a)
		lines = append(lines, "addr add "+a.String()+"/32 dev eth0")
		a = a.Next()
	}
	if err := l.client.batch(lines); err != nil {
		return err
	}
	if _, err := l.router.ip("route", "add", ClientNet.String(), "via", "10.77.0.2"); err != nil {
		return err
	}
	// The three backends' addresses (the first is eth0's).
	for _, b := range []string{"10.77.9.12/24", "10.77.9.13/24"} {
		if _, err := l.backendNS.ip("addr", "add", b, "dev", "eth0"); err != nil {
			return err
		}
	}
	return nil
}

// birdConf is the router's bird configuration: a passive BGP session per
// instance accepting its routes, and a kernel protocol that merges equal
// paths into one multipath route (ECMP).
func (l *Lab) birdConf() string {
	var b strings.Builder
	fmt.Fprintf(&b, `# The lab's router (pkg/lab): routes learnt from the lbctl instances go
# to the kernel, equal ones merged into one multipath route.
router id %s;
log stderr all;
protocol device { scan time 1; }
protocol kernel {
	ipv4 { import none; export all; };
	merge paths on;
}
`, RouterAddr)
	for _, in := range l.Instances {
		fmt.Fprintf(&b, `protocol bgp %s {
	local %s as %d;
	neighbor %s as %d;
	passive on;
	connect retry time 1;
	error wait time 1, 2;
	ipv4 { import all; export none; };
}
`, in.Name, in.Addr.Prev(), RouterASN, in.Addr, LbctlASN)
	}
	return b.String()
}

func (l *Lab) startBird() error {
	conf := filepath.Join(l.opts.Dir, "bird.conf")
	if err := os.WriteFile(conf, []byte(l.birdConf()), 0o644); err != nil {
		return err
	}
	var err error
	l.Bird, err = start(filepath.Join(l.opts.Dir, "bird.log"), "ip", "netns", "exec", string(l.router),
		l.opts.Bird, "-f", "-c", conf, "-s", l.birdSock())
	if err != nil {
		return err
	}
	return until(10*time.Second, func() (bool, string) {
		out, err := l.Birdc("show", "status")
		return err == nil && strings.Contains(out, "Daemon is up"), fmt.Sprintf("birdc: %v %s\nbird: %s", err, out, l.Bird.Output())
	})
}

func (l *Lab) birdSock() string { return filepath.Join(l.opts.Dir, "bird.ctl") }

// Dir is the directory of the lab's configurations, sockets and logs.
func (l *Lab) Dir() string { return l.opts.Dir }

// Birdc runs birdc ARGS against the router's bird.
func (l *Lab) Birdc(args ...string) (string, error) {
	return run(l.opts.Birdc, append([]string{"-s", l.birdSock()}, args...)...)
}

// instanceConf is an instance's configuration: the same pools on every
// instance (so the same maglev tables), its own router_id and peer.
func (l *Lab) instanceConf(in *Instance) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# lbctl instance %s of the lab (pkg/lab).
shutdown_timeout = "5s"
control_socket = %q

[log]
level = "info"
format = "json"
access = false

[listeners.web]
protocol = "tcp"
bind = "0.0.0.0:%d"               # the VIP, and the instance's own address (to ask it directly)
pool = "web"

[listeners.dns]
protocol = "udp"
bind = "%s:%d"
pool = "dns"
responses = 1                     # a session per exchange, as for DNS: none is left to drain at SIGTERM

[pools.web]
algorithm = "maglev"
hash_key = "ip"
`, in.Name, in.control, TCPPort, VIP, UDPPort)
	for _, be := range l.Backends {
		fmt.Fprintf(&b, "  [[pools.web.backends]]\n  address = \"%s:%d\"\n", be.Addr, TCPPort)
	}
	b.WriteString(`  [pools.web.health]
  check = "tcp"
  interval = "200ms"
  timeout = "500ms"
  rise = 1
  fall = 1

[pools.dns]
algorithm = "maglev"
hash_key = "ip-port"
`)
	for _, be := range l.Backends {
		fmt.Fprintf(&b, "  [[pools.dns.backends]]\n  address = \"%s:%d\"\n", be.Addr, UDPPort)
	}
	fmt.Fprintf(&b, `  [pools.dns.health]
  check = "none"

[bgp]
asn = %d
router_id = %q
withdraw_delay = %q
  [[bgp.peers]]
  address = %q
  asn = %d
  [[bgp.announce]]
  prefix = %q
  listeners = ["web"]              # the dns pool has the same backends
`, LbctlASN, in.Addr, l.opts.WithdrawDelay, in.Addr.Prev(), RouterASN, VIPPrefix)
	return b.String()
}

func (l *Lab) startInstance(in *Instance) error {
	in.config = filepath.Join(l.opts.Dir, in.Name+".toml")
	in.control = filepath.Join(l.opts.Dir, in.Name+".sock")
	if err := os.WriteFile(in.config, []byte(l.instanceConf(in)), 0o644); err != nil {
		return err
	}
	var err error
	in.Proc, err = start(filepath.Join(l.opts.Dir, in.Name+".log"), "ip", "netns", "exec", string(in.ns),
		l.opts.Lbctl, "serve", "--config", in.config)
	return err
}

// Status is the part of an instance's status JSON the lab reads.
type Status struct {
	Pools []struct {
		Name        string `json:"name"`
		Algorithm   string `json:"algorithm"`
		TableDigest string `json:"table_digest"`
		HashKey     string `json:"hash_key"`
		Backends    []struct {
			Address string `json:"address"`
			Health  string `json:"health"`
		} `json:"backends"`
	} `json:"pools"`
	BGP *struct {
		Peers []struct {
			Address string `json:"address"`
			State   string `json:"state"`
		} `json:"peers"`
		Announcements []struct {
			Prefix    string `json:"prefix"`
			Announced bool   `json:"announced"`
		} `json:"announcements"`
	} `json:"bgp"`
}

// Status reads the instance's status through its control socket.
func (in *Instance) Status() (*Status, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", in.control)
		},
	}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://lbctl/api/v1/status")
	if err != nil {
		return nil, fmt.Errorf("%s status: %w", in.Name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s status: %s %v %s", in.Name, resp.Status, err, bytes.TrimSpace(body))
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("%s status: %w", in.Name, err)
	}
	return &st, nil
}

// Hops are the instances the router's kernel sends VIP's flows to now,
// read from its multipath route (ip route), by name.
func (l *Lab) Hops() ([]string, error) {
	out, err := l.router.ip("-4", "route", "show", VIPPrefix.String())
	if err != nil {
		return nil, err
	}
	var hops []string
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "via" {
			if in := l.instanceAt(f[i+1]); in != nil {
				hops = append(hops, in.Name)
			}
		}
	}
	slices.Sort(hops)
	return hops, nil
}

// WaitHops waits until the router's route to VIP goes through exactly the
// named instances (none: no route) and returns when it saw that.
func (l *Lab) WaitHops(timeout time.Duration, names ...string) (time.Time, error) {
	_, at, err := l.waitHops(timeout, names...)
	return at, err
}

// waitHops is WaitHops, also returning when it last saw other hops: the
// change happened between before and at.
func (l *Lab) waitHops(timeout time.Duration, names ...string) (before, at time.Time, err error) {
	err = until(timeout, func() (bool, string) {
		t := time.Now()
		hops, err := l.Hops()
		if err == nil && slices.Equal(hops, names) {
			at = time.Now()
			return true, ""
		}
		before = t
		return false, fmt.Sprintf("router's next hops for %s: %v (%v), want %v", VIPPrefix, hops, err, names)
	})
	if err != nil {
		err = fmt.Errorf("%w\n%s", err, l.diagnose())
	}
	return before, at, err
}

// diagnose is what to show when the router does not get where it
// should: its sessions and the instances' logs' tails.
func (l *Lab) diagnose() string {
	var b strings.Builder
	out, _ := l.Birdc("show", "protocols")
	b.WriteString(out)
	for _, in := range l.Instances {
		if in.Proc != nil {
			fmt.Fprintf(&b, "%s (running %v): %s\n", in.Name, in.Proc.Running(), tail(in.Proc.Output(), 600))
		}
	}
	return b.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func (l *Lab) instanceAt(addr string) *Instance {
	for _, in := range l.Instances {
		if in.Addr.String() == addr {
			return in
		}
	}
	return nil
}

// Instance returns the instance named name, nil if none.
func (l *Lab) Instance(name string) *Instance {
	for _, in := range l.Instances {
		if in.Name == name {
			return in
		}
	}
	return nil
}

// Close kills every process the lab started (by PID), closes the backends, deletes the namespaces (and with
// them their veth pairs) and, if it made it, the directory. It may be
// called more than once, and on a partly built lab.
func (l *Lab) Close() {
	l.closeOnce.Do(func() {
		// Killed, not stopped: the lab is going away, there is nothing to
		// drain, and each lbctl would wait its withdraw_delay.
		for _, p := range l.processes() {
			p.Kill()
		}
		for _, f := range l.udp {
			f.conn.Close()
		}
		for _, b := range l.Backends {
			b.close()
		}
		for _, n := range l.made {
			netns("").ip("netns", "del", string(n))
		}
		if l.tmp {
			os.RemoveAll(l.opts.Dir)
		}
	})
}

// Process is a program the lab started (lbctl, bird), in a namespace
// through ip netns exec, which execs it: the PID is the program's.
type Process struct {
	cmd    *exec.Cmd
	out    syncBuffer
	exited chan struct{}
	err    error // Wait's, once exited is closed
	stop   sync.Once
}

// start runs bin ARGS, its output kept (and copied to logFile).
func start(logFile, bin string, args ...string) (*Process, error) {
	f, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	p := &Process{cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	w := io.MultiWriter(&p.out, f)
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	return p, nil
}

// PID is the process's ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Signal sends sig to the process (by PID).
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Running reports whether it has not exited.
func (p *Process) Running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Exited is closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Err is its exit status once it has exited: nil for 0.
func (p *Process) Err() error {
	select {
	case <-p.exited:
		return p.err
	default:
		return errors.New("still running")
	}
}

// Output is what it wrote so far.
func (p *Process) Output() string { return p.out.String() }

// Kill sends SIGKILL and returns once it has exited.
func (p *Process) Kill() {
	p.stop.Do(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
}

// processes are the processes the lab started.
func (l *Lab) processes() []*Process {
	var ps []*Process
	for _, in := range l.Instances {
		if in.Proc != nil {
			ps = append(ps, in.Proc)
		}
	}
	if l.Bird != nil {
		ps = append(ps, l.Bird)
	}
	return ps
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// until polls check every 10 ms until it is done or timeout has passed;
// then the error carries the state the last check described.
func until(timeout time.Duration, check func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	for {
		late := time.Now().After(deadline)
		done, state := check()
		if done {
			return nil
		}
		if late {
			return fmt.Errorf("not within %v: %s", timeout, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
