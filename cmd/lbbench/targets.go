package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Target names, in table order.
const (
	tDirect  = "direct"
	tLbctl   = "lbctl"
	tHAProxy = "haproxy"
	tNginx   = "nginx"
)

var allTargets = []string{tDirect, tLbctl, tHAProxy, tNginx}

// target is one column of the table: a running proxy process (none for
// direct) and the addresses that reach it.
type target struct {
	name   string
	fe     frontends
	argv   []string
	cmd    *exec.Cmd
	config string // path of the generated configuration
	log    string // path of the proxy's stdout/stderr
	exited chan struct{}
	// ready, when set, replaces the probes of the bench's listeners
	// (lbbench splithello has one listener of its own).
	ready func() error
	// pinCPUs are the CPUs the proxy is started on (taskset -c), ""
	// for no pinning (BENCH_PIN, pin.go).
	pinCPUs string
}

// pid is the proxy's process id, 0 for direct.
func (t *target) pid() int {
	if t.cmd == nil {
		return 0
	}
	return t.cmd.Process.Pid
}

// alive reports whether the proxy still runs (always true for direct).
func (t *target) alive() bool {
	if t.cmd == nil {
		return true
	}
	select {
	case <-t.exited:
		return false
	default:
		return true
	}
}

// freePorts finds n ports on loopback that are free for both TCP and UDP,
// outside the kernel's ephemeral range: a port in that range can be taken
// by an outgoing connection between the check and the proxy's bind.
func freePorts(n int) ([]int, error) {
	lo, hi := portRange(readFileOr("/proc/sys/net/ipv4/ip_local_port_range", "32768 60999"))
	var ps []int
	span := hi - lo
	start := rand.IntN(span)
	for i := 0; i < span && len(ps) < n; i++ {
		port := lo + (start+i)%span
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		ps = append(ps, port)
	}
	if len(ps) < n {
		return nil, fmt.Errorf("found %d free ports in %d-%d, want %d", len(ps), lo, hi, n)
	}
	return ps, nil
}

// portRange picks where to look for listening ports given the ephemeral
// range "low high": below it when there is room, else above it.
func portRange(ephemeral string) (lo, hi int) {
	var elo, ehi int
	if _, err := fmt.Sscan(ephemeral, &elo, &ehi); err != nil || elo <= 0 || ehi < elo {
		elo, ehi = 32768, 60999
	}
	if elo-10000 >= 2000 {
		return 10000, elo
	}
	if 65535-ehi >= 2000 {
		return ehi + 1, 65536
	}
	return 1024, 65536 // no room outside: take the risk
}

func readFileOr(path, def string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return def
	}
	return string(b)
}

// startTarget writes the target's configuration under dir/configs, starts
// the proxy with its output in dir/logs, and waits until every listener
// answers.
//
// pinCPUs, when not "", is the CPU list the proxy runs on.
func startTarget(ctx context.Context, name, dir, lbctlBin string, b backendAddrs, threads, nofile int, noUDP bool, pinCPUs string) (*target, error) {
	if name == tDirect {
		return &target{name: name, fe: directFrontends(b)}, nil
	}
	pp, err := freePorts(6)
	if err != nil {
		return nil, err
	}
	runDir := filepath.Join(dir, "run", name)
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", runDir, err)
	}
	p := confParams{
		Ports:    ports{Bulk: pp[0], Short: pp[1], RR: pp[2], Idle: pp[3], UDP: pp[4], SNI: pp[5]},
		Backends: b,
		Threads:  threads,
		Dir:      runDir,
		NoFile:   nofile,
		NoUDP:    noUDP,
	}
	var (
		text string
		ext  string
		argv []string
	)
	cfgDir := filepath.Join(dir, "configs")
	switch name {
	case tHAProxy:
		text, ext = haproxyConfig(p), "cfg"
		argv = []string{"haproxy", "-f", "", "-db"}
	case tNginx:
		text, ext = nginxConfig(p), "conf"
		argv = []string{"nginx", "-p", runDir, "-e", filepath.Join(runDir, "nginx-error.log"), "-c", "", "-g", "daemon off;"}
	case tLbctl:
		text, ext = lbctlConfig(p), "toml"
		argv = []string{lbctlBin, "serve", "--config", ""}
	default:
		return nil, fmt.Errorf("unknown target %q", name)
	}
	if err := os.MkdirAll(cfgDir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", cfgDir, err)
	}
	cfg, err := filepath.Abs(filepath.Join(cfgDir, name+"."+ext))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("write config: %w", err)
	}
	for i, a := range argv {
		if a == "" {
			argv[i] = cfg
		}
	}
	logPath := filepath.Join(dir, "logs", name+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	t := &target{name: name, fe: proxyFrontends(p.Ports), argv: argv, config: cfg, log: logPath, pinCPUs: pinCPUs}
	if noUDP || name == tHAProxy {
		t.fe.UDP = nil // HAProxy has no UDP
	}
	if err := t.start(ctx); err != nil {
		return nil, err
	}
	return t, nil
}

// start runs the proxy process and waits until it serves. Its output is
// appended to the target's log.
func (t *target) start(ctx context.Context) error {
	logf, err := os.OpenFile(t.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	argv := t.argv
	if t.pinCPUs != "" {
		argv = pinArgv(argv, t.pinCPUs)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a Ctrl-C reaches lbbench, which stops the proxy
	// itself, in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", t.name, err)
	}
	t.cmd, t.exited = cmd, make(chan struct{})
	exited := t.exited
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
	}()
	if err := t.waitReady(ctx, 10*time.Second); err != nil {
		t.stop()
		out, _ := os.ReadFile(t.log)
		return fmt.Errorf("%s not ready: %w\n%s", t.name, err, tail(string(out), 2000))
	}
	return nil
}

// restart stops the proxy and starts it again with the same configuration
// and ports, so that memory held over from earlier measures (allocator
// pools, Go heap) does not hide what idle connections cost.
func (t *target) restart(ctx context.Context) error {
	if t.cmd == nil {
		return nil
	}
	t.stop()
	return t.start(ctx)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// waitReady polls every listener until it echoes (TCP echo listeners, UDP)
// or accepts (bulk), within limit.
func (t *target) waitReady(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var probes []func() error
	if t.ready != nil {
		probes = []func() error{t.ready}
	}
	hello, err := clientHello(sniNames[0])
	if err != nil {
		return err
	}
	if probes == nil {
		probes = []func() error{
			func() error { return probeTCP(t.fe.Bulk[0], false) },
			func() error { return probeTCP(t.fe.Short[0], true) },
			func() error { return probeTCP(t.fe.RR[0], true) },
			func() error { return probeTCP(t.fe.Idle[0], true) },
			func() error { return probeSNI(t.fe.SNI[0], hello) },
		}
	}
	if t.ready == nil && len(t.fe.UDP) > 0 {
		probes = append(probes, func() error { return probeUDP(t.fe.UDP[0]) })
	}
	for _, probe := range probes {
		for {
			err := probe()
			if err == nil {
				break
			}
			if !t.alive() {
				return errors.New("process exited")
			}
			if time.Now().After(deadline) {
				return err
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

func probeTCP(addr string, echo bool) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if !echo {
		return nil
	}
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("p")); err != nil {
		return err
	}
	b := make([]byte, 1)
	_, err = c.Read(b)
	return err
}

func probeUDP(addr string) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Write([]byte("probe")); err != nil {
		return err
	}
	b := make([]byte, 64)
	_, err = c.Read(b)
	return err
}

// stop sends SIGTERM, and SIGKILL if the proxy is still there after 5s.
func (t *target) stop() {
	if t.cmd == nil {
		return
	}
	_ = t.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-t.exited:
	case <-time.After(5 * time.Second):
		_ = t.cmd.Process.Kill()
		<-t.exited
	}
}

// probeGoMaxProcs reports the GOMAXPROCS that lbctl's Go runtime chooses
// on the CPU list cpus ("" for no pinning): it runs "lbctl validate" on the
// configuration of the lbctl under test, pinned the same way, with
// GODEBUG=schedtrace=1, and reads the runtime's first schedtrace line. The
// runtime decides GOMAXPROCS at start-up from the affinity mask (and cgroup
// limits) before any lbctl code runs, so the probe sees what the served
// process got. The served process itself runs without schedtrace: with it,
// the runtime's sysmon never parks, which would change what is measured.
func probeGoMaxProcs(bin, config, cpus string) (int, error) {
	argv := []string{bin, "validate", "--config", config}
	if cpus != "" {
		argv = pinArgv(argv, cpus)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "GODEBUG="+joinGODEBUG(os.Getenv("GODEBUG"), "schedtrace=1"))
	out, err := cmd.CombinedOutput()
	if n := goMaxProcs(out); n > 0 {
		return n, nil
	}
	if err != nil {
		return 0, fmt.Errorf("lbctl validate: %v: %s", err, firstLine(strings.TrimSpace(string(out))))
	}
	return 0, errors.New("no schedtrace line in lbctl validate's output")
}

// joinGODEBUG adds setting to a GODEBUG value.
func joinGODEBUG(old, setting string) string {
	if old == "" {
		return setting
	}
	return old + "," + setting
}
