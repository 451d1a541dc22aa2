package main

import (
	"math"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseCtxSwitches(t *testing.T) {
	status := "Name:\tlbctl\nThreads:\t1\nvoluntary_ctxt_switches:\t1234\nnonvoluntary_ctxt_switches:\t56\n"
	c, err := parseCtxSwitches([]byte(status))
	if err != nil || c != (ctxSwitches{Voluntary: 1234, Involuntary: 56}) {
		t.Errorf("got %+v, %v", c, err)
	}
	if _, err := parseCtxSwitches([]byte("Name:\tx\nvoluntary_ctxt_switches:\t1\n")); err == nil {
		t.Error("no error with one line missing")
	}
	if _, err := parseCtxSwitches([]byte("voluntary_ctxt_switches:\tmany\nnonvoluntary_ctxt_switches:\t1\n")); err == nil {
		t.Error("no error for a bad number")
	}
}

// TestCountingProcOnly counts this very process without perf: sleeping
// goroutines park their threads, so voluntary switches (wake-ups) appear,
// and the figures are per request.
func TestCountingProcOnly(t *testing.T) {
	c := startCounting(os.Getpid(), t.TempDir(), false, nil)
	c.begin()
	for i := 0; i < 20; i++ {
		time.Sleep(time.Millisecond)
	}
	c.end()
	per, err := c.finish(10)
	if err != nil {
		t.Fatal(err)
	}
	if per[cWakeups] < 0.1 {
		t.Errorf("wake-ups per request %v after 20 sleeps over 10 requests", per[cWakeups])
	}
	if per[cCtxSwitches] < per[cWakeups] {
		t.Errorf("context switches %v < wake-ups %v", per[cCtxSwitches], per[cWakeups])
	}
	if _, ok := per[cSyscalls]; ok {
		t.Error("syscalls without perf")
	}
}

// perfSample is perf stat -x, output as perf 6.1 writes it with -D -1 and
// the control FIFO (the enable/disable lines come last).
const perfSample = `# started on Sun Dec  6 19:56:26 2026

200371,,raw_syscalls:sys_enter,300187193,100.00,,
3,,cpu-migrations,300187193,100.00,,
20,,sched:sched_wakeup,300187193,100.00,,
7,,sched:sched_wakeup,300187193,100.00,,
150000,,syscalls:sys_enter_write,300187193,100.00,,
50000,,syscalls:sys_enter_read,300187193,100.00,,
0,,syscalls:sys_enter_futex,300187193,100.00,,
Events disabled
Events enabled
Events disabled
`

func TestParsePerfCSV(t *testing.T) {
	evs := perfEvents([]int{11, 12}, []string{"write", "read", "futex"})
	got, err := parsePerfCSV([]byte(perfSample), evs)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		cSyscalls: 200371, cMigrations: 3, cWakeupsIssue: 20, cHandoffs: 7,
		"sys.write": 150000, "sys.read": 50000, "sys.futex": 0,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
	tests := []struct {
		name, in, wantErr string
	}{
		{"not counted", strings.Replace(perfSample, "50000,,syscalls:sys_enter_read", "<not counted>,,syscalls:sys_enter_read", 1), "not counted"},
		{"missing line", strings.Replace(perfSample, "0,,syscalls:sys_enter_futex,300187193,100.00,,\n", "", 1), "6 of 7"},
		{"other order", strings.Replace(perfSample, "sys_enter_write", "sys_enter_read", 1), "want event syscalls:sys_enter_write"},
		{"extra line", perfSample + "1,,syscalls:sys_enter_close,1,100.00,,\n", "more lines"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := parsePerfCSV([]byte(tt.in), evs); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestPerfEventsAndArgs(t *testing.T) {
	evs := perfEvents([]int{11, 12}, []string{"read"})
	args := perfArgs([]int{10, 20}, evs, "/r/ctl", "/r/ack", "/r/out.csv")
	want := []string{"stat", "-x", ",", "-D", "-1", "--control", "fifo:/r/ctl,/r/ack", "-o", "/r/out.csv", "-p", "10,20",
		"-e", "raw_syscalls:sys_enter", "-e", "cpu-migrations", "-e", "sched:sched_wakeup",
		"-e", "sched:sched_wakeup", "--filter", "pid == 11 || pid == 12", "-e", "syscalls:sys_enter_read"}
	if !reflect.DeepEqual(args, want) {
		t.Errorf("args\n%q\nwant\n%q", args, want)
	}
	// No thread known: no hand-off event (an empty filter would count
	// every wake-up).
	for _, e := range perfEvents(nil, nil) {
		if e.name == cHandoffs {
			t.Errorf("hand-off event without threads: %+v", e)
		}
	}
}

func TestPerRequest(t *testing.T) {
	counts := map[string]float64{
		cSyscalls: 1000, cWakeupsIssue: 300, cHandoffs: 100, cMigrations: 0,
		"sys.read": 400, "sys.write": 400, "sys.futex": 0,
	}
	got := perRequest(counts, ctxSwitches{Voluntary: 150, Involuntary: 50}, 100)
	want := map[string]float64{
		cSyscalls: 10, cWakeupsIssue: 3, cHandoffs: 1, cMigrations: 0,
		"sys.read": 4, "sys.write": 4, sysOther: 2, // futex: 0, left out
		cCtxSwitches: 2, cWakeups: 1.5, cInvoluntary: 0.5,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
	// Without perf: the /proc figures only.
	got = perRequest(map[string]float64{}, ctxSwitches{Voluntary: 3}, 3)
	if len(got) != 3 || got[cWakeups] != 1 || got[cCtxSwitches] != 1 {
		t.Errorf("without perf: %v", got)
	}
	// Kinds counted twice over (a runtime that retries) never make
	// "other" negative.
	got = perRequest(map[string]float64{cSyscalls: 10, "sys.read": 12}, ctxSwitches{}, 1)
	if got[sysOther] != 0 || math.Signbit(got[sysOther]) {
		t.Errorf("other = %v", got[sysOther])
	}
	if perRequest(counts, ctxSwitches{}, 0) != nil {
		t.Error("figures for zero requests")
	}
}

func TestRenderCounters(t *testing.T) {
	r, set := newResults(2)
	set(tLbctl, "rr32.per_req.syscalls", 6, 6)
	set(tLbctl, "rr32.per_req.ctx_switches", 1.5, 2.5)
	set(tLbctl, "rr32.per_req.wakeups", 1, 1)
	set(tLbctl, "rr32.per_req.sys.read", 2, 2)
	set(tLbctl, "rr32.per_req.sys.futex", 1.2, 1.2)
	set(tLbctl, "rr32.per_req.sys.getpid", 0.001, 0.001)
	set(tHAProxy, "rr32.per_req.syscalls", 4.2, 4.2)
	set(tHAProxy, "rr32.per_req.ctx_switches", 0.2, 0.2)
	set(tHAProxy, "rr32.per_req.sys.read", 2, 2)
	set(tNginx, "rr32.per_req.ctx_switches", 0.3, 0.3)
	r.finish()
	out := renderCounters(r)
	for _, want := range []string{
		"| per request ↓ | lbctl | haproxy | nginx |",
		"| req/resp, 32 conns: syscalls per request | 6.00 | 4.20 | — |",
		"| req/resp, 32 conns: context switches per request | 2.00 ±25% | 0.20 | 0.30 |",
		"| req/resp, 32 conns: wake-ups of the proxy per request | 1.00 | — | — |",
		"| syscalls per request ↓ | lbctl | haproxy | nginx |",
		"| req/resp, 32 conns: read | 2.00 | 2.00 | — |\n| req/resp, 32 conns: futex | 1.20 | — | — |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	if strings.Contains(out, "getpid") {
		t.Errorf("a kind below 0.01 per request is listed:\n%s", out)
	}
	if strings.Contains(out, "short conns") {
		t.Errorf("an uncounted measure is listed:\n%s", out)
	}
	if renderCounters(sampleResults()) != "" {
		t.Error("a counters table for a run without counters")
	}
}
