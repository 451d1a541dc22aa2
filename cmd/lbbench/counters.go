package main

// Per-request counters: how many syscalls, context switches and wake-ups a
// proxy spends on one request (one connection for the short measure, one
// datagram for UDP). They explain the CPU and latency figures: an event-loop
// proxy handles many ready sockets per epoll_wait on the thread that woke,
// while a proxy that hands every message from one thread to another pays a
// wake-up and a context switch for each hand-off.
//
// The counts come from a separate "count" step of each small-message
// measure, never from the timed step: perf stat itself costs a little per
// event, so the timed figures stay untouched. perf stat runs on the proxy's
// processes (every thread, inherited by new ones) with its events disabled,
// and lbbench enables them at the start of the counted part and disables
// them at its end through perf's control FIFO, so the counts cover exactly
// the requests the measure counted. /proc/PID/task/*/status gives the
// voluntary and involuntary context switches at the same two instants; it
// needs no perf, so those columns exist even where perf does not.
//
// What each figure is:
//   - syscalls: raw_syscalls:sys_enter, and syscalls:sys_enter_<name> for the
//     kinds in syscallKinds (the rest is "other");
//   - context switches: voluntary + involuntary switches of every thread;
//   - wake-ups (of the proxy): its voluntary switches, each of which is a
//     sleep that ended with a wake-up;
//   - wake-ups issued: sched:sched_wakeup fired while a proxy thread runs,
//     that is, the proxy woke someone: a client or backend reading its
//     reply, or one of its own threads;
//   - hand-offs: the wake-ups issued whose woken task is a proxy thread
//     (one of its threads woke another one).

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// countedMeasures are the small-message measures that get a count step.
var countedMeasures = []string{mShort, mSNI, mRR1, mRR32, mUDP}

// syscallKinds are the syscalls counted one by one (those a proxy uses on
// its data path, and the runtime's own); the tracepoints that the kernel
// lacks are left out at run time.
var syscallKinds = []string{
	"read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
	"recvmmsg", "sendmmsg", "splice", "pipe2", "epoll_wait", "epoll_pwait", "epoll_pwait2",
	"epoll_ctl", "accept", "accept4", "connect", "socket", "close", "shutdown",
	"setsockopt", "getsockopt", "getsockname", "getpeername", "fcntl", "ioctl",
	"futex", "nanosleep", "clock_nanosleep", "sched_yield", "tgkill", "getpid",
	"gettid", "rt_sigreturn", "rt_sigprocmask", "madvise", "mmap", "munmap", "brk",
	"io_uring_enter", "sendfile64", "poll", "ppoll", "select", "pselect6",
	// Clocks: a clock that the vDSO cannot read (a thread's CPU time,
	// which HAProxy reads every loop) is a real syscall.
	"clock_gettime", "gettimeofday", "getrusage", "timer_settime", "timerfd_settime", "setitimer",
}

// Counter names: keys of a counts map, and the suffixes of the metrics
// "<measure>.per_req.<name>" in results.json.
const (
	cSyscalls     = "syscalls"
	cCtxSwitches  = "ctx_switches"
	cWakeups      = "wakeups"        // voluntary switches of the proxy
	cInvoluntary  = "involuntary"    // involuntary switches
	cWakeupsIssue = "wakeups_issued" // sched_wakeup in the proxy's context
	cHandoffs     = "handoffs"       // ... whose woken task is a proxy thread
	cMigrations   = "cpu_migrations"
	sysPrefix     = "sys."
	sysOther      = "sys.other"
)

// ctxSwitches are the context-switch totals of a set of threads.
type ctxSwitches struct {
	Voluntary, Involuntary uint64
}

// parseCtxSwitches reads voluntary_ctxt_switches and
// nonvoluntary_ctxt_switches from /proc/PID/task/TID/status.
func parseCtxSwitches(b []byte) (ctxSwitches, error) {
	var c ctxSwitches
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch k {
		case "voluntary_ctxt_switches":
			dst = &c.Voluntary
		case "nonvoluntary_ctxt_switches":
			dst = &c.Involuntary
		default:
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return ctxSwitches{}, fmt.Errorf("parse %s: %w", k, err)
		}
		*dst = n
		found++
	}
	if found != 2 {
		return ctxSwitches{}, errors.New("no context switch lines")
	}
	return c, nil
}

// threads lists the thread ids of the processes pids.
func threads(pids []int) []int {
	var tids []int
	for _, p := range pids {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		if err != nil {
			continue
		}
		for _, e := range ents {
			if t, err := strconv.Atoi(e.Name()); err == nil {
				tids = append(tids, t)
			}
		}
	}
	sort.Ints(tids)
	return tids
}

// treeCtxSwitches sums the context switches of every thread of the process
// tree under pid. Threads that ended before the call are not counted: the
// proxies under test keep their threads.
func treeCtxSwitches(pid int) ctxSwitches {
	var sum ctxSwitches
	eachThreadStatus(pid, func(status []byte) {
		if c, err := parseCtxSwitches(status); err == nil {
			sum.Voluntary += c.Voluntary
			sum.Involuntary += c.Involuntary
		}
	})
	return sum
}

// eachThreadStatus calls fn with the /proc status file of every thread of
// the process tree under pid, in turn. A thread or process that ends
// meanwhile is skipped.
func eachThreadStatus(pid int, fn func(status []byte)) {
	for _, p := range procTree(pid) {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		if err != nil {
			continue
		}
		for _, e := range ents {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", p, e.Name()))
			if err != nil {
				continue
			}
			fn(b)
		}
	}
}

// perfEvent is one event of the perf stat command line and the counter it
// feeds.
type perfEvent struct {
	event  string // -e argument
	filter string // --filter argument, "" for none
	name   string // counter name
}

// perfEvents is the event list for a proxy whose threads are tids; kinds are
// the syscall kinds whose tracepoint exists.
func perfEvents(tids []int, kinds []string) []perfEvent {
	evs := []perfEvent{
		{event: "raw_syscalls:sys_enter", name: cSyscalls},
		{event: "cpu-migrations", name: cMigrations},
		{event: "sched:sched_wakeup", name: cWakeupsIssue},
	}
	if len(tids) > 0 {
		var f []string
		for _, t := range tids {
			f = append(f, fmt.Sprintf("pid == %d", t))
		}
		evs = append(evs, perfEvent{event: "sched:sched_wakeup", filter: strings.Join(f, " || "), name: cHandoffs})
	}
	for _, k := range kinds {
		evs = append(evs, perfEvent{event: "syscalls:sys_enter_" + k, name: sysPrefix + k})
	}
	return evs
}

// perfArgs is the perf stat command line: events disabled at start (-D -1),
// enabled and disabled through the control FIFOs, CSV output to out.
func perfArgs(pids []int, evs []perfEvent, ctl, ack, out string) []string {
	ps := make([]string, len(pids))
	for i, p := range pids {
		ps[i] = strconv.Itoa(p)
	}
	args := []string{"stat", "-x", ",", "-D", "-1", "--control", "fifo:" + ctl + "," + ack,
		"-o", out, "-p", strings.Join(ps, ",")}
	for _, e := range evs {
		args = append(args, "-e", e.event)
		if e.filter != "" {
			args = append(args, "--filter", e.filter)
		}
	}
	return args
}

// parsePerfCSV reads perf stat -x, output: one line per event, in the order
// of evs, "value,unit,event,...". Comments and the "Events enabled" lines are
// skipped; a value perf could not count is an error.
func parsePerfCSV(b []byte, evs []perfEvent) (map[string]float64, error) {
	out := map[string]float64{}
	i := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || !strings.Contains(line, ",") {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) < 3 {
			continue
		}
		if i >= len(evs) {
			return nil, fmt.Errorf("perf stat: more lines than events: %q", line)
		}
		e := evs[i]
		i++
		if f[2] != e.event {
			return nil, fmt.Errorf("perf stat: line %q, want event %s", line, e.event)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("perf stat: %s not counted (%q)", e.event, f[0])
		}
		out[e.name] += v
	}
	if i != len(evs) {
		return nil, fmt.Errorf("perf stat: %d of %d events in its output", i, len(evs))
	}
	return out, nil
}

// perRequest divides counts by the number of requests n and adds the
// derived figures: "other" syscalls (the total less the kinds counted one by
// one), and the context switches and wake-ups from the /proc deltas. Counts
// absent from the map (perf missing) stay absent. n == 0 gives nothing.
func perRequest(counts map[string]float64, sw ctxSwitches, n uint64) map[string]float64 {
	if n == 0 {
		return nil
	}
	out := map[string]float64{}
	per := func(v float64) float64 { return v / float64(n) }
	if total, ok := counts[cSyscalls]; ok {
		known := 0.0
		for k, v := range counts {
			if strings.HasPrefix(k, sysPrefix) {
				known += v
				if v > 0 {
					out[k] = per(v)
				}
			}
		}
		out[sysOther] = per(max(total-known, 0))
	}
	for _, k := range []string{cSyscalls, cWakeupsIssue, cHandoffs, cMigrations} {
		if v, ok := counts[k]; ok {
			out[k] = per(v)
		}
	}
	out[cCtxSwitches] = per(float64(sw.Voluntary + sw.Involuntary))
	out[cWakeups] = per(float64(sw.Voluntary))
	out[cInvoluntary] = per(float64(sw.Involuntary))
	return out
}

// tracepointRoots are where the kernel lists its tracepoints.
var tracepointRoots = []string{"/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"}

// availableKinds keeps the syscall kinds whose sys_enter tracepoint exists.
func availableKinds() []string {
	for _, root := range tracepointRoots {
		if _, err := os.Stat(filepath.Join(root, "syscalls")); err != nil {
			continue
		}
		var ks []string
		for _, k := range syscallKinds {
			if _, err := os.Stat(filepath.Join(root, "syscalls", "sys_enter_"+k)); err == nil {
				ks = append(ks, k)
			}
		}
		return ks
	}
	return nil
}

// perfCheck reports why perf stat cannot count the tracepoints lbbench
// needs, nil when it can.
func perfCheck() error {
	if _, err := exec.LookPath("perf"); err != nil {
		return errors.New("perf not found (Debian: apt-get install linux-perf)")
	}
	out, err := exec.Command("perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter,sched:sched_wakeup", "true").CombinedOutput()
	if err != nil {
		return fmt.Errorf("perf stat cannot count tracepoints: %v: %s", err, firstLine(strings.TrimSpace(string(out))))
	}
	if bytes.Contains(out, []byte("<not")) {
		return fmt.Errorf("perf stat cannot count tracepoints: %s", firstLine(strings.TrimSpace(string(out))))
	}
	return nil
}

// counting is one count step's collection: perf stat attached to the proxy
// (when perf works) and the /proc context switches.
type counting struct {
	pid     int
	cmd     *exec.Cmd
	ctl     *os.File // write "enable"/"disable"
	ack     *os.File // read "ack"
	evs     []perfEvent
	out     string
	sw0     ctxSwitches
	sw      ctxSwitches
	perfErr error
}

// startCounting prepares the counters of the proxy under pid in dir; with
// usePerf it starts perf stat with its events disabled. A perf that fails
// to start leaves the /proc counters working and says why in perfErr.
func startCounting(pid int, dir string, usePerf bool, kinds []string) *counting {
	c := &counting{pid: pid}
	if !usePerf {
		return c
	}
	if err := c.startPerf(dir, kinds); err != nil {
		c.perfErr = err
		c.stopPerf()
	}
	return c
}

func (c *counting) startPerf(dir string, kinds []string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ctl, ack := filepath.Join(dir, "perf-ctl"), filepath.Join(dir, "perf-ack")
	for _, f := range []string{ctl, ack} {
		_ = os.Remove(f)
		if err := syscall.Mkfifo(f, 0o600); err != nil {
			return fmt.Errorf("mkfifo %s: %w", f, err)
		}
	}
	pids := procTree(c.pid)
	c.evs = perfEvents(threads(pids), kinds)
	c.out = filepath.Join(dir, "perf-stat.csv")
	c.cmd = exec.Command("perf", perfArgs(pids, c.evs, ctl, ack, c.out)...)
	var stderr bytes.Buffer
	c.cmd.Stderr = &stderr
	if err := c.cmd.Start(); err != nil {
		return fmt.Errorf("start perf: %w", err)
	}
	// Opening a FIFO blocks until the other side opens it: perf opens
	// both once its counters are set up. Bound the wait.
	type opened struct {
		f   *os.File
		err error
	}
	ch := make(chan opened, 2)
	go func() {
		f, err := os.OpenFile(ctl, os.O_WRONLY, 0)
		ch <- opened{f, err}
		g, err := os.OpenFile(ack, os.O_RDONLY, 0)
		ch <- opened{g, err}
	}()
	for i := 0; i < 2; i++ {
		select {
		case o := <-ch:
			if o.err != nil {
				return fmt.Errorf("open perf control: %w", o.err)
			}
			if i == 0 {
				c.ctl = o.f
			} else {
				c.ack = o.f
			}
		case <-time.After(10 * time.Second):
			// Unblock the opener so that its goroutine ends.
			_ = c.cmd.Process.Kill()
			go func() {
				for o := range ch {
					if o.f != nil {
						o.f.Close()
					}
				}
			}()
			return fmt.Errorf("perf stat did not open its control FIFO in 10s: %s", firstLine(stderr.String()))
		}
	}
	return nil
}

// command sends one control command to perf and waits for its ack.
func (c *counting) command(cmd string) error {
	if c.ctl == nil {
		return errors.New("perf not running")
	}
	if _, err := c.ctl.WriteString(cmd + "\n"); err != nil {
		return fmt.Errorf("perf %s: %w", cmd, err)
	}
	_ = c.ack.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	n, err := c.ack.Read(buf)
	if err != nil {
		return fmt.Errorf("perf %s: no ack: %w", cmd, err)
	}
	if !bytes.Contains(buf[:n], []byte("ack")) {
		return fmt.Errorf("perf %s: answered %q", cmd, buf[:n])
	}
	return nil
}

// begin opens the counted part: enable perf's events, sample /proc.
func (c *counting) begin() {
	if c.perfErr == nil && c.cmd != nil {
		c.perfErr = c.command("enable")
	}
	c.sw0 = treeCtxSwitches(c.pid)
}

// end closes the counted part.
func (c *counting) end() {
	sw := treeCtxSwitches(c.pid)
	c.sw = ctxSwitches{Voluntary: sw.Voluntary - min(sw.Voluntary, c.sw0.Voluntary), Involuntary: sw.Involuntary - min(sw.Involuntary, c.sw0.Involuntary)}
	if c.perfErr == nil && c.cmd != nil {
		c.perfErr = c.command("disable")
	}
}

// stopPerf ends perf (SIGINT makes it print its counts) and closes the
// FIFOs.
func (c *counting) stopPerf() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
	if c.ctl != nil {
		c.ctl.Close()
	}
	if c.ack != nil {
		c.ack.Close()
	}
	c.cmd = nil
}

// finish stops perf and returns the per-request figures for n requests.
// Without perf (or when it failed) only the /proc figures are there, and
// the error says why.
func (c *counting) finish(n uint64) (map[string]float64, error) {
	started := c.cmd != nil
	c.stopPerf()
	counts := map[string]float64{}
	err := c.perfErr
	if err == nil && started {
		b, rerr := os.ReadFile(c.out)
		if rerr != nil {
			err = rerr
		} else if m, perr := parsePerfCSV(b, c.evs); perr != nil {
			err = perr
		} else {
			counts = m
		}
	}
	return perRequest(counts, c.sw, n), err
}
