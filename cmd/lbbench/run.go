package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// settings are the knobs of a run; the environment (BENCH_TIME,
// BENCH_ROUNDS, BENCH_TARGETS) overrides the defaults.
type settings struct {
	Time       time.Duration `json:"time"`   // counted time per measure, target and round
	Warmup     time.Duration `json:"warmup"` // uncounted lead-in of each timed measure
	Rounds     int           `json:"rounds"`
	Targets    []string      `json:"targets"`
	Backends   int           `json:"backends"`
	Streams    int           `json:"bulk_streams"`
	ShortConns int           `json:"short_workers"`
	RRConns    []int         `json:"rr_connections"`
	UDPWorkers int           `json:"udp_workers"`
	IdleConns  int           `json:"idle_connections"`
	NoFile     int           `json:"nofile_limit"`
	Threads    int           `json:"proxy_threads"`
	Measures   []string      `json:"measures"` // in measureOrder's order
	// Pin is this run's variant, pinNone or pinSplit (pin.go); Pins
	// are the variants BENCH_PIN asked for, run one after the other.
	Pin  string   `json:"pin"`
	Pins []string `json:"-"`
	// Counters adds a count step (counters.go) after each timed step of
	// the small-message measures, CountTime long.
	Counters  bool          `json:"counters"`
	CountTime time.Duration `json:"count_time"`
}

func defaultSettings() settings {
	return settings{
		Time:       4 * time.Second,
		Warmup:     500 * time.Millisecond,
		Rounds:     3,
		Targets:    append([]string(nil), allTargets...),
		Backends:   2,
		Streams:    4,
		ShortConns: 32,
		RRConns:    []int{1, 32},
		UDPWorkers: 16,
		IdleConns:  8000,
		NoFile:     20000,
		Threads:    runtime.NumCPU(),
		Measures:   append([]string(nil), measureOrder...),
		Pin:        pinNone,
		Pins:       []string{pinNone},
		Counters:   true,
		CountTime:  2 * time.Second,
	}
}

// applyEnv reads BENCH_TIME (a Go duration or a number of seconds),
// BENCH_ROUNDS, BENCH_TARGETS and BENCH_MEASURES (comma lists), BENCH_PIN
// (none, split or both) and BENCH_COUNTERS (on or off) through getenv.
func (s *settings) applyEnv(getenv func(string) string) error {
	switch v := strings.ToLower(strings.TrimSpace(getenv("BENCH_PIN"))); v {
	case "":
	case pinNone, pinSplit:
		s.Pins = []string{v}
	case pinBoth:
		s.Pins = []string{pinNone, pinSplit}
	default:
		return fmt.Errorf("BENCH_PIN=%q: want none, split or both", v)
	}
	s.Pin = s.Pins[0]
	switch v := strings.ToLower(strings.TrimSpace(getenv("BENCH_COUNTERS"))); v {
	case "":
	case "on", "1", "true", "yes":
		s.Counters = true
	case "off", "0", "false", "no":
		s.Counters = false
	default:
		return fmt.Errorf("BENCH_COUNTERS=%q: want on or off", v)
	}
	if v := getenv("BENCH_TIME"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			secs, ferr := strconv.ParseFloat(v, 64)
			if ferr != nil {
				return fmt.Errorf("BENCH_TIME=%q: want a duration such as 4s: %w", v, err)
			}
			d = time.Duration(secs * float64(time.Second))
		}
		if d < 100*time.Millisecond {
			return fmt.Errorf("BENCH_TIME=%q: at least 100ms", v)
		}
		s.Time = d
		if w := d / 8; w < s.Warmup {
			s.Warmup = max(w, 100*time.Millisecond)
		}
		s.CountTime = min(s.CountTime, d)
	}
	if v := getenv("BENCH_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return fmt.Errorf("BENCH_ROUNDS=%q: want a positive integer", v)
		}
		s.Rounds = n
	}
	if v := getenv("BENCH_MEASURES"); v != "" {
		ms, err := pickNames("BENCH_MEASURES", v, measureOrder)
		if err != nil {
			return err
		}
		s.Measures = ms
	}
	if v := getenv("BENCH_TARGETS"); v != "" {
		var ts []string
		for _, f := range strings.Split(v, ",") {
			f = strings.TrimSpace(strings.ToLower(f))
			if f == "" {
				continue
			}
			known := false
			for _, t := range allTargets {
				known = known || t == f
			}
			if !known {
				return fmt.Errorf("BENCH_TARGETS: unknown target %q (want %s)", f, strings.Join(allTargets, ","))
			}
			ts = append(ts, f)
		}
		if len(ts) == 0 {
			return fmt.Errorf("BENCH_TARGETS=%q: no target", v)
		}
		// Keep table order whatever the order given.
		s.Targets = s.Targets[:0]
		for _, t := range allTargets {
			for _, f := range ts {
				if f == t {
					s.Targets = append(s.Targets, t)
					break
				}
			}
		}
	}
	return nil
}

// pickNames parses a comma list of names out of known, in known's order.
func pickNames(env, v string, known []string) ([]string, error) {
	want := map[string]bool{}
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(strings.ToLower(f))
		if f == "" {
			continue
		}
		if !contains(known, f) {
			return nil, fmt.Errorf("%s: unknown name %q (want %s)", env, f, strings.Join(known, ","))
		}
		want[f] = true
	}
	var out []string
	for _, k := range known {
		if want[k] {
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s=%q: none given", env, v)
	}
	return out, nil
}

// Measure names, in the order they run within a round. idle runs last so
// that a proxy which runs out of descriptors disturbs nothing after it.
const (
	mBulk  = "bulk"
	mShort = "short"
	mSNI   = "sni"
	mRR1   = "rr1"
	mRR32  = "rr32"
	mUDP   = "udp"
	mIdle  = "idle"
)

var measureOrder = []string{mBulk, mShort, mSNI, mRR1, mRR32, mUDP, mIdle}

// applies reports whether measure m is run for target t.
func applies(m, t string) bool {
	switch {
	case m == mUDP && t == tHAProxy:
		return false // HAProxy has no UDP
	case m == mIdle && t == tDirect:
		return false // no proxy whose memory could be measured
	}
	return true
}

// step is one measure of one target in one round.
type step struct {
	round   int
	measure string
	target  string
	time    time.Duration // counted time of this step
	// count marks a count step: the measure runs again under the
	// per-request counters (counters.go), and only those are kept.
	count bool
}

// rr1Slices is how many slices the one-connection measure is cut into per
// round. Its latency swings with how deeply idle cores sleep, a state that
// changes every few seconds on a VM; short slices alternating between
// targets put every target through the same states, and pair each target's
// slice with the direct slice next to it for the "added" rows.
const rr1Slices = 4

// plan interleaves: each round runs every measure on every target, and the
// target order rotates from round to round so that no target always goes
// first after a change of measure.
func plan(s settings) []step {
	var steps []step
	for r := 0; r < s.Rounds; r++ {
		for _, m := range measureOrder {
			if !contains(s.Measures, m) {
				continue
			}
			slices, d := 1, s.Time
			if m == mRR1 {
				slices, d = rr1Slices, max(s.Time/rr1Slices, 100*time.Millisecond)
			}
			n := len(s.Targets)
			for k := 0; k < slices; k++ {
				for i := 0; i < n; i++ {
					t := s.Targets[(i+r)%n]
					if applies(m, t) {
						steps = append(steps, step{round: r, measure: m, target: t, time: d})
					}
				}
			}
			if !s.Counters || !contains(countedMeasures, m) {
				continue
			}
			for i := 0; i < n; i++ {
				t := s.Targets[(i+r)%n]
				if t != tDirect && applies(m, t) {
					steps = append(steps, step{round: r, measure: m, target: t, time: s.CountTime, count: true})
				}
			}
		}
	}
	return steps
}

// expected is the planned duration of one step, for the time-left estimate.
func (s settings) expected(st step) time.Duration {
	if st.measure == mIdle {
		return 3 * time.Second
	}
	return s.Warmup + st.time + 300*time.Millisecond
}

// machine describes where the numbers come from.
type machine struct {
	CPU      string `json:"cpu"`
	Cores    int    `json:"cores"`
	Kernel   string `json:"kernel"`
	Go       string `json:"go"`
	HAProxy  string `json:"haproxy,omitempty"`
	Nginx    string `json:"nginx,omitempty"`
	Lbctl    string `json:"lbctl,omitempty"`
	MemTotal string `json:"mem_total,omitempty"`
}

func describeMachine(lbctlBin string) machine {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		l, _, _ := strings.Cut(string(b), "\n")
		m.MemTotal = strings.TrimSpace(strings.TrimPrefix(l, "MemTotal:"))
	}
	first := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil && len(out) == 0 {
			return ""
		}
		l, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return l
	}
	m.HAProxy = first("haproxy", "-v")
	m.Nginx = first("nginx", "-v")
	if lbctlBin != "" {
		m.Lbctl = first(lbctlBin, "version")
	}
	return m
}

// raiseNoFile sets this process's descriptor limit to want (or the hard
// limit if lower). Children inherit it, so every proxy runs under the same
// limit.
func raiseNoFile(want int) (int, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	cur := uint64(want)
	if r.Max < cur {
		cur = r.Max
	}
	r.Cur = cur
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, fmt.Errorf("setrlimit nofile %d: %w", cur, err)
	}
	return int(cur), nil
}

// backendProc is the "lbbench backends" child.
type backendProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addrs backendAddrs
}

// startBackendProc starts the backends child, on the CPU list pinCPUs when
// not "".
func startBackendProc(n int, pinCPUs string) (*backendProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own binary: %w", err)
	}
	argv := []string{self, "backends", "-n", strconv.Itoa(n)}
	if pinCPUs != "" {
		argv = pinArgv(argv, pinCPUs)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start backends: %w", err)
	}
	bp := &backendProc{cmd: cmd, stdin: in}
	line, err := bufio.NewReader(out).ReadBytes('\n')
	if err != nil {
		bp.stop()
		return nil, fmt.Errorf("read backend addresses: %w", err)
	}
	if err := json.Unmarshal(line, &bp.addrs); err != nil {
		bp.stop()
		return nil, fmt.Errorf("parse backend addresses %q: %w", line, err)
	}
	return bp, nil
}

// stop closes the child's stdin, which ends it, and waits.
func (b *backendProc) stop() {
	b.stdin.Close()
	done := make(chan struct{})
	go func() { _ = b.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = b.cmd.Process.Kill()
		<-done
	}
}

// runOptions are the command-line flags of "lbbench run".
type runOptions struct {
	LbctlBin string
	OutDir   string // results/<timestamp> is created under it
	DocsDir  string // latest table and chart are copied here ("" = no copy)
}

// run is "lbbench run": the whole benchmark, once per variant of BENCH_PIN
// (s.Pins). Each variant writes its own results folder; the docs get every
// variant's table, one after the other, and the first variant's chart.
func run(ctx context.Context, opt runOptions, s settings, progress io.Writer, stdout io.Writer) error {
	var tables []string
	var chart string
	for i, pin := range s.Pins {
		v := s
		v.Pin = pin
		v.Targets = append([]string(nil), s.Targets...)
		if len(s.Pins) > 1 {
			fmt.Fprintf(progress, "lbbench: variant %d of %d: BENCH_PIN=%s\n", i+1, len(s.Pins), pin)
		}
		res, table, err := runVariant(ctx, opt, v, progress)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, table)
		tables = append(tables, table)
		if chart == "" {
			chart = renderChart(res)
		}
	}
	if opt.DocsDir == "" {
		return nil
	}
	files := map[string]string{
		"bench-table.md":  strings.Join(tables, "\n"),
		"bench-chart.svg": chart,
	}
	for name, data := range files {
		p := filepath.Join(opt.DocsDir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(p), err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	return nil
}

// runVariant runs every step of the plan with one pinning variant (s.Pin)
// and writes its results folder.
func runVariant(ctx context.Context, opt runOptions, s settings, progress io.Writer) (*results, string, error) {
	started := time.Now()
	nofile, err := raiseNoFile(s.NoFile)
	if err != nil {
		return nil, "", err
	}
	s.NoFile = nofile
	// Absolute: nginx resolves relative paths against its -p prefix.
	out, err := filepath.Abs(opt.OutDir)
	if err != nil {
		return nil, "", fmt.Errorf("results dir: %w", err)
	}
	stamp := started.UTC().Format("20060102-150405")
	if s.Pin != pinNone {
		stamp += "-pin-" + s.Pin
	}
	dir := filepath.Join(out, stamp)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", fmt.Errorf("create results dir: %w", err)
	}

	var notes []string
	pins := pinInfo{Variant: s.Pin, Affinity: map[string]string{}}
	var loadCPUs, proxyCPUs string
	if s.Pin == pinSplit {
		pp, err := choosePins()
		if err != nil {
			return nil, "", err
		}
		loadCPUs, proxyCPUs = strconv.Itoa(pp.Load), strconv.Itoa(pp.Proxy)
		pins.CPUs = &pp
		restore, err := pinSelf(loadCPUs)
		if err != nil {
			return nil, "", fmt.Errorf("pin lbbench: %w", err)
		}
		defer func() {
			if err := restore(); err != nil {
				fmt.Fprintf(progress, "lbbench: unpin: %v\n", err)
			}
		}()
		// One CPU for the proxy: one thread or worker for each.
		s.Threads = 1
	}
	pins.Affinity["lbbench"] = treeAffinity(os.Getpid())

	usePerf := false
	var kinds []string
	if s.Counters {
		if err := perfCheck(); err != nil {
			notes = append(notes, fmt.Sprintf("per-request counters without perf (context switches from /proc only): %v", err))
		} else {
			usePerf = true
			kinds = availableKinds()
		}
	}

	// Drop lbctl from the run when there is no binary, and say so.
	if contains(s.Targets, tLbctl) {
		if _, err := os.Stat(opt.LbctlBin); err != nil {
			notes = append(notes, fmt.Sprintf("lbctl not run: %v", err))
			s.Targets = without(s.Targets, tLbctl)
		}
	}
	lbctlBin, _ := filepath.Abs(opt.LbctlBin)
	mach := describeMachine("")
	if contains(s.Targets, tLbctl) {
		mach = describeMachine(lbctlBin)
	}

	hellos, err := sniHellos()
	if err != nil {
		return nil, "", err
	}
	bp, err := startBackendProc(s.Backends, loadCPUs)
	if err != nil {
		return nil, "", err
	}
	defer bp.stop()
	pins.Affinity["backends"] = treeAffinity(bp.cmd.Process.Pid)

	targets := map[string]*target{}
	defer func() {
		for _, t := range targets {
			t.stop()
		}
	}()
	for _, name := range s.Targets {
		t, err := startTarget(ctx, name, dir, lbctlBin, bp.addrs, s.Threads, s.NoFile, false, proxyCPUs)
		if err != nil && name == tLbctl {
			// An lbctl that cannot serve UDP yet still gets its TCP columns.
			fmt.Fprintf(progress, "lbbench: %v\nlbbench: retrying lbctl without its UDP listener\n", err)
			var err2 error
			if t, err2 = startTarget(ctx, name, dir, lbctlBin, bp.addrs, s.Threads, s.NoFile, true, proxyCPUs); err2 == nil {
				notes = append(notes, fmt.Sprintf("lbctl ran without UDP: %s", lastLine(err.Error())))
				err = nil
			}
		}
		if err != nil {
			notes = append(notes, fmt.Sprintf("%s not run: %v", name, firstLine(err.Error())))
			fmt.Fprintf(progress, "lbbench: %v\n", err)
			continue
		}
		targets[name] = t
		if t.cmd != nil {
			pins.Affinity[name] = treeAffinity(t.pid())
		}
		if name == tLbctl {
			n, err := probeGoMaxProcs(lbctlBin, t.config, proxyCPUs)
			if err != nil {
				notes = append(notes, fmt.Sprintf("lbctl GOMAXPROCS not seen: %v", err))
			}
			pins.LbctlGOMAXPROCS = n
		}
	}
	var running []string
	for _, name := range s.Targets {
		if targets[name] != nil {
			running = append(running, name)
		}
	}
	s.Targets = running
	for _, n := range notes {
		fmt.Fprintf(progress, "lbbench: %s\n", n)
	}

	res := &results{
		Started:  started.UTC(),
		Machine:  mach,
		Settings: s,
		Pin:      pins,
		Raw:      map[string]map[string][]float64{},
		Idle:     map[string][]idleResult{},
		Notes:    notes,
		Configs:  map[string]string{},
	}
	for name, t := range targets {
		if t.config != "" {
			res.Configs[name] = filepath.Join("configs", filepath.Base(t.config))
		}
	}

	steps := plan(s)
	spent := map[string]time.Duration{}
	runs := map[string]int{}
	gone := map[string]bool{}     // targets that died and would not restart
	countErr := map[string]bool{} // targets whose counters failed once (noted once)
	kind := func(st step) string {
		if st.count {
			return st.measure + "/count"
		}
		return st.measure
	}
	for i, st := range steps {
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		left := time.Duration(0)
		for _, rest := range steps[i:] {
			if runs[kind(rest)] > 0 {
				left += spent[kind(rest)] / time.Duration(runs[kind(rest)])
			} else {
				left += s.expected(rest)
			}
		}
		label := st.measure
		if st.count {
			label += " (counters)"
		}
		fmt.Fprintf(progress, "[%3d/%d] round %d/%d  %-16s  %-7s  about %s left\n",
			i+1, len(steps), st.round+1, s.Rounds, label, st.target, left.Round(time.Second))
		t0 := time.Now()
		t := targets[st.target]
		if st.measure == mUDP && len(t.fe.UDP) == 0 {
			continue
		}
		if gone[st.target] {
			continue
		}
		if !t.alive() {
			// A crash is a finding: say so in the table, then carry on with
			// a fresh process.
			res.Notes = append(res.Notes, fmt.Sprintf("round %d, before %s: %s had exited (see logs/%s.log); restarted", st.round+1, st.measure, st.target, st.target))
			fmt.Fprintf(progress, "lbbench: %s has exited, restarting it\n", st.target)
			if err := t.start(ctx); err != nil {
				fmt.Fprintf(progress, "lbbench: %v\n", err)
				res.Notes = append(res.Notes, fmt.Sprintf("%s could not be restarted: %s", st.target, firstLine(err.Error())))
				gone[st.target] = true
				continue
			}
		}
		if st.measure == mIdle {
			if err := t.restart(ctx); err != nil {
				res.Notes = append(res.Notes, fmt.Sprintf("round %d: restarting %s failed: %s", st.round+1, st.target, firstLine(err.Error())))
				fmt.Fprintf(progress, "lbbench: %v\n", err)
				continue
			}
		}
		var vals map[string]float64
		if st.count {
			var err error
			vals, err = countStep(ctx, s, st, t, filepath.Join(dir, "run", "count", st.target), usePerf, kinds, hellos)
			if err != nil && !countErr[st.target] {
				countErr[st.target] = true
				res.Notes = append(res.Notes, fmt.Sprintf("round %d, %s counters of %s: %v", st.round+1, st.measure, st.target, err))
				fmt.Fprintf(progress, "lbbench: counters of %s: %v\n", st.target, err)
			}
		} else {
			vals = runStep(ctx, s, st, t, res, hellos)
		}
		for k, v := range vals {
			res.add(st.target, k, v)
		}
		spent[kind(st)] += time.Since(t0)
		runs[kind(st)]++
	}
	res.Wall = time.Since(started).Round(time.Second).String()
	res.finish()
	table := renderTable(res)
	return res, table, writeResults(res, table, dir, "", progress)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

func without(xs []string, x string) []string {
	var out []string
	for _, y := range xs {
		if y != x {
			out = append(out, y)
		}
	}
	return out
}

// cpuWindow samples the proxy's CPU time at w.warm and w.end, so its figure
// covers exactly the counted part of the measure.
func cpuWindow(pid int, w window) <-chan float64 {
	ch := make(chan float64, 1)
	if pid == 0 {
		ch <- -1
		return ch
	}
	pids := procTree(pid)
	sample := func() float64 {
		var sum float64
		for _, p := range pids {
			if st, err := readStat(p); err == nil {
				sum += st.cpuSeconds
			}
		}
		return sum
	}
	go func() {
		time.Sleep(time.Until(w.warm))
		c0 := sample()
		time.Sleep(time.Until(w.end))
		ch <- sample() - c0
	}()
	return ch
}

// runStep runs one measure against one target and returns its figures.
func runStep(ctx context.Context, s settings, st step, t *target, res *results, hellos [][]byte) map[string]float64 {
	v := map[string]float64{}
	m := st.measure
	if m == mIdle {
		return idleStep(ctx, s, t, res)
	}
	w := newWindow(time.Now(), s.Warmup, st.time)
	cpu := cpuWindow(t.pid(), w)
	switch m {
	case mBulk:
		r := measureBulk(t.fe.Bulk, s.Streams, w)
		v["bulk.gbps"] = r.Gbps()
		v["bulk.errors"] = float64(r.Errors)
		if c := <-cpu; c >= 0 && r.Bytes > 0 {
			v["bulk.cpu_s_per_gb"] = c / (float64(r.Bytes) / 1e9)
		}
	case mShort:
		r := measureShort(t.fe.Short, s.ShortConns, w)
		v["short.cps"] = r.Rate()
		v["short.p50_us"] = r.us(0.50)
		v["short.p99_us"] = r.us(0.99)
		v["short.errors"] = float64(r.Errors)
		if c := <-cpu; c >= 0 && r.Count > 0 {
			v["short.cpu_s_per_kconn"] = c / (float64(r.Count) / 1e3)
		}
	case mSNI:
		r := measureSNI(t.fe.SNI, hellos, s.ShortConns, w)
		v["sni.cps"] = r.Rate()
		v["sni.p50_us"] = r.us(0.50)
		v["sni.p99_us"] = r.us(0.99)
		v["sni.errors"] = float64(r.Errors)
		if c := <-cpu; c >= 0 && r.Count > 0 {
			v["sni.cpu_s_per_kconn"] = c / (float64(r.Count) / 1e3)
		}
	case mRR1, mRR32:
		n := s.RRConns[0]
		if m == mRR32 {
			n = s.RRConns[len(s.RRConns)-1]
		}
		r := measureRR(t.fe.RR, n, w)
		v[m+".rps"] = r.Rate()
		v[m+".p50_us"] = r.us(0.50)
		v[m+".p99_us"] = r.us(0.99)
		v[m+".p999_us"] = r.us(0.999)
		v[m+".errors"] = float64(r.Errors)
		if c := <-cpu; c >= 0 && r.Count > 0 {
			v[m+".cpu_s_per_mreq"] = c / (float64(r.Count) / 1e6)
		}
	case mUDP:
		r, lost := measureUDP(t.fe.UDP, s.UDPWorkers, w)
		v["udp.dps"] = r.Rate()
		v["udp.p50_us"] = r.us(0.50)
		v["udp.p99_us"] = r.us(0.99)
		if total := float64(r.Count + lost); total > 0 {
			v["udp.loss_pct"] = float64(lost) / total * 100
		}
		if c := <-cpu; c >= 0 && r.Count > 0 {
			v["udp.cpu_s_per_mdgram"] = c / (float64(r.Count) / 1e6)
		}
	}
	// Let the proxy finish closing before the next step.
	pause(ctx, 200*time.Millisecond)
	return v
}

func pause(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func idleStep(ctx context.Context, s settings, t *target, res *results) map[string]float64 {
	v := map[string]float64{}
	snap := func() (int64, int, error) { return treeMem(t.pid()) }
	r := measureIdle(t.fe.Idle[0], s.IdleConns, 30*time.Second, snap)
	res.Idle[t.name] = append(res.Idle[t.name], r)
	v["idle.conns"] = float64(r.Established)
	if r.Established > 0 {
		v["idle.rss_kib_per_conn"] = r.RSSPerConnKiB()
		v["idle.fds_per_conn"] = r.FDsPerConn()
	}
	// Wait (bounded) for the proxy to close its side before going on.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		_, fds, err := snap()
		if err != nil || fds <= r.FDsBefore+64 {
			break
		}
		pause(ctx, 50*time.Millisecond)
	}
	return v
}

// runLoad is "lbbench load": one measure, printed as JSON.
func runLoad(measure string, addrs []string, n int, d time.Duration, out io.Writer) error {
	s := defaultSettings()
	w := newWindow(time.Now(), s.Warmup, d)
	pick := func(def int) int {
		if n > 0 {
			return n
		}
		return def
	}
	var v any
	switch measure {
	case mBulk:
		r := measureBulk(addrs, pick(s.Streams), w)
		v = map[string]any{"gbps": r.Gbps(), "errors": r.Errors}
	case mShort, "rr", mUDP:
		var r latencyResult
		var lost uint64
		switch measure {
		case mShort:
			r = measureShort(addrs, pick(s.ShortConns), w)
		case "rr":
			r = measureRR(addrs, pick(1), w)
		default:
			r, lost = measureUDP(addrs, pick(s.UDPWorkers), w)
		}
		v = map[string]any{"per_second": r.Rate(), "p50_us": r.us(0.5), "p99_us": r.us(0.99),
			"p999_us": r.us(0.999), "errors": r.Errors, "lost": lost}
	case mIdle:
		// The second snapshot is taken with every connection open: hold
		// them there for d, so the proxy can be inspected.
		snaps := 0
		r := measureIdle(addrs[0], pick(s.IdleConns), 30*time.Second, func() (int64, int, error) {
			if snaps++; snaps == 2 {
				fmt.Fprintf(out, "holding the connections for %s\n", d)
				time.Sleep(d)
			}
			return 0, 0, nil
		})
		v = r
	default:
		return fmt.Errorf("unknown measure %q (want bulk, short, rr, udp or idle)", measure)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, string(b))
	return err
}

// countStep runs a small-message measure again under the per-request
// counters of counters.go and returns "<measure>.per_req.<counter>"
// figures; its rates and latencies are not kept (perf costs a little per
// event). The error says why some counters are missing.
func countStep(ctx context.Context, s settings, st step, t *target, dir string, usePerf bool, kinds []string, hellos [][]byte) (map[string]float64, error) {
	if t.pid() == 0 {
		return nil, nil
	}
	// perf is set up before the window opens: its start-up is not counted.
	c := startCounting(t.pid(), dir, usePerf, kinds)
	w := newWindow(time.Now(), s.Warmup, st.time)
	edges := make(chan struct{})
	go func() {
		defer close(edges)
		time.Sleep(time.Until(w.warm))
		c.begin()
		time.Sleep(time.Until(w.end))
		c.end()
	}()
	var n uint64
	switch st.measure {
	case mShort:
		n = measureShort(t.fe.Short, s.ShortConns, w).Count
	case mSNI:
		n = measureSNI(t.fe.SNI, hellos, s.ShortConns, w).Count
	case mRR1, mRR32:
		conns := s.RRConns[0]
		if st.measure == mRR32 {
			conns = s.RRConns[len(s.RRConns)-1]
		}
		n = measureRR(t.fe.RR, conns, w).Count
	case mUDP:
		r, _ := measureUDP(t.fe.UDP, s.UDPWorkers, w)
		n = r.Count
	}
	<-edges
	per, err := c.finish(n)
	v := map[string]float64{}
	for k, x := range per {
		v[st.measure+".per_req."+k] = x
	}
	pause(ctx, 200*time.Millisecond)
	return v, err
}

// pinInfo is how a run was pinned, and what each process's threads were
// seen to be allowed (pin.go).
type pinInfo struct {
	Variant string   `json:"variant"` // pinNone or pinSplit
	CPUs    *pinPlan `json:"cpus,omitempty"`
	// Affinity is, per process tree (lbbench, backends, each proxy),
	// the CPU lists its threads may run on, read after start-up.
	Affinity map[string]string `json:"affinity"`
	// LbctlGOMAXPROCS is what lbctl's Go runtime chose (0: not seen).
	LbctlGOMAXPROCS int `json:"lbctl_gomaxprocs,omitempty"`
}
