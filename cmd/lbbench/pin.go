package main

// CPU pinning (BENCH_PIN). Unpinned, the load generator, the backends and
// the proxy share every core, and the proxy's CPU per unit of work depends
// on how much of the machine the load generator leaves it. Pinned ("split"),
// lbbench itself (the load generator goroutines) and the backends run on one
// CPU and the proxy under test, every process and thread of it, alone on
// another, for every target alike. The proxies then get one thread each:
// HAProxy nbthread 1, nginx worker_processes 1, and lbctl GOMAXPROCS 1,
// which the Go runtime derives from the affinity mask it starts with (read
// back from the runtime's own schedtrace line of a probe, see
// probeGoMaxProcs).
//
// Affinity is set with taskset(1) (util-linux): "taskset -a -p" on lbbench's
// own threads, and "taskset -c" in front of the backends' and the proxies'
// command lines, so they start with the mask (threads and worker processes
// inherit it) and the Go runtime sees it at start-up.

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
)

// Pin variants.
const (
	pinNone  = "none"
	pinSplit = "split"
	pinBoth  = "both" // BENCH_PIN only: none, then split
)

// pinPlan is which CPUs each side gets in the split variant.
type pinPlan struct {
	Load  int `json:"load_cpu"`  // lbbench and the backends
	Proxy int `json:"proxy_cpu"` // the proxy under test
}

// parseCPUList reads a kernel CPU list such as "0-3,8,10-11".
func parseCPUList(s string) ([]int, error) {
	var cpus []int
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("empty CPU list")
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(strings.TrimSpace(lo))
		if err != nil {
			return nil, fmt.Errorf("CPU list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(strings.TrimSpace(hi)); err != nil {
				return nil, fmt.Errorf("CPU list %q: %w", s, err)
			}
		}
		if b < a || a < 0 {
			return nil, fmt.Errorf("CPU list %q: bad range %q", s, part)
		}
		for c := a; c <= b; c++ {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

// cpusAllowed is the Cpus_allowed_list of /proc/PID/task/TID/status.
func cpusAllowed(status []byte) (string, error) {
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			return strings.TrimSpace(rest), nil
		}
	}
	return "", fmt.Errorf("no Cpus_allowed_list line")
}

// choosePins takes the first two CPUs lbbench may run on.
func choosePins() (pinPlan, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return pinPlan{}, err
	}
	l, err := cpusAllowed(b)
	if err != nil {
		return pinPlan{}, err
	}
	cpus, err := parseCPUList(l)
	if err != nil {
		return pinPlan{}, err
	}
	if len(cpus) < 2 {
		return pinPlan{}, fmt.Errorf("BENCH_PIN=split needs 2 CPUs, lbbench may use %q", l)
	}
	return pinPlan{Load: cpus[0], Proxy: cpus[1]}, nil
}

// pinSelf sets the affinity of every thread of lbbench to cpus (a CPU list)
// and GOMAXPROCS to the number of CPUs in it. It returns a function that
// restores both.
func pinSelf(cpus string) (restore func() error, err error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, err
	}
	old, err := cpusAllowed(b)
	if err != nil {
		return nil, err
	}
	list, err := parseCPUList(cpus)
	if err != nil {
		return nil, err
	}
	set := func(mask string) error {
		// Twice: a thread created during the first pass was cloned
		// from one not yet pinned.
		for i := 0; i < 2; i++ {
			out, err := exec.Command("taskset", "-a", "-p", "-c", mask, strconv.Itoa(os.Getpid())).CombinedOutput()
			if err != nil {
				return fmt.Errorf("taskset -a -p -c %s: %v: %s", mask, err, strings.TrimSpace(string(out)))
			}
		}
		return nil
	}
	if err := set(cpus); err != nil {
		return nil, err
	}
	oldProcs := runtime.GOMAXPROCS(len(list))
	return func() error {
		runtime.GOMAXPROCS(oldProcs)
		return set(old)
	}, nil
}

// pinArgv puts "taskset -c cpus" in front of a command line.
func pinArgv(argv []string, cpus string) []string {
	return append([]string{"taskset", "-c", cpus}, argv...)
}

// treeAffinity describes the CPUs every thread of the process tree under
// pid may run on: "1 (9 threads)" when they agree, or each distinct list
// with its thread count.
func treeAffinity(pid int) string {
	counts := map[string]int{}
	eachThreadStatus(pid, func(status []byte) {
		if l, err := cpusAllowed(status); err == nil {
			counts[l]++
		}
	})
	return describeAffinity(counts)
}

// describeAffinity renders CPU list -> thread count.
func describeAffinity(counts map[string]int) string {
	if len(counts) == 0 {
		return "unknown"
	}
	var keys []string
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		unit := "threads"
		if counts[k] == 1 {
			unit = "thread"
		}
		parts = append(parts, fmt.Sprintf("CPU %s (%d %s)", k, counts[k], unit))
	}
	return strings.Join(parts, ", ")
}

// schedtraceRE matches the Go runtime's GODEBUG=schedtrace line.
var schedtraceRE = regexp.MustCompile(`SCHED \d+ms: gomaxprocs=(\d+)`)

// goMaxProcs finds the GOMAXPROCS a Go program started with in its output
// when run with GODEBUG=schedtrace set. 0 when not found.
func goMaxProcs(log []byte) int {
	m := schedtraceRE.FindSubmatch(log)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}
