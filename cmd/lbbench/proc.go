package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// procTree returns pid and every live process whose parent is in the tree
// (nginx's workers under its master).
func procTree(pid int) []int {
	parents := map[int]int{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return []int{pid}
	}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(p)
		if err != nil {
			continue
		}
		parents[p] = st.ppid
	}
	tree := []int{pid}
	in := map[int]bool{pid: true}
	for grew := true; grew; {
		grew = false
		for p, pp := range parents {
			if in[pp] && !in[p] {
				in[p] = true
				tree = append(tree, p)
				grew = true
			}
		}
	}
	return tree
}

type procStat struct {
	ppid       int
	cpuSeconds float64 // utime + stime
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// parseStat reads /proc/PID/stat: the command in parentheses may contain
// spaces, so fields are counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("parse stat: no ')'")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("parse stat: %d fields", len(f))
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procStat{}, fmt.Errorf("parse stat ppid: %w", err)
	}
	ut, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse stat utime: %w", err)
	}
	st, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse stat stime: %w", err)
	}
	return procStat{ppid: ppid, cpuSeconds: float64(ut+st) / clockTicks}, nil
}

// treeCPU is the CPU time (user + system) of the process tree under pid.
func treeCPU(pid int) float64 {
	var sum float64
	for _, p := range procTree(pid) {
		if st, err := readStat(p); err == nil {
			sum += st.cpuSeconds
		}
	}
	return sum
}

// parseVmRSS extracts VmRSS (bytes) from /proc/PID/status.
func parseVmRSS(b []byte) (int64, error) {
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) < 1 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmRSS: %w", err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS line")
}

// treeMem is the resident memory (bytes) and open descriptors of the process
// tree under pid.
func treeMem(pid int) (rss int64, fds int, err error) {
	for _, p := range procTree(pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			return 0, 0, fmt.Errorf("read status of %d: %w", p, err)
		}
		r, err := parseVmRSS(b)
		if err != nil {
			return 0, 0, fmt.Errorf("pid %d: %w", p, err)
		}
		rss += r
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p))
		if err != nil {
			return 0, 0, fmt.Errorf("list fds of %d: %w", p, err)
		}
		fds += len(ents)
	}
	return rss, fds, nil
}
