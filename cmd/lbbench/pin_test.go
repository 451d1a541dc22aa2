package main

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestParseCPUList(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr bool
	}{
		{"0-1", []int{0, 1}, false},
		{"0-2,5,7-8\n", []int{0, 1, 2, 5, 7, 8}, false},
		{"3", []int{3}, false},
		{"", nil, true},
		{"2-1", nil, true},
		{"a-b", nil, true},
	}
	for _, tt := range tests {
		got, err := parseCPUList(tt.in)
		if (err != nil) != tt.wantErr || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseCPUList(%q) = %v, %v; want %v (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestCpusAllowedOfThisProcess(t *testing.T) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	l, err := cpusAllowed(b)
	if err != nil {
		t.Fatal(err)
	}
	if cpus, err := parseCPUList(l); err != nil || len(cpus) == 0 {
		t.Errorf("Cpus_allowed_list %q: %v, %v", l, cpus, err)
	}
	if _, err := cpusAllowed([]byte("Name:\tx\n")); err == nil {
		t.Error("no error without the line")
	}
	// Every thread of this process is seen, with its list.
	if a := treeAffinity(os.Getpid()); !strings.HasPrefix(a, "CPU "+l+" (") {
		t.Errorf("treeAffinity = %q, want CPU %s (...)", a, l)
	}
}

func TestDescribeAffinity(t *testing.T) {
	if got := describeAffinity(map[string]int{"1": 9}); got != "CPU 1 (9 threads)" {
		t.Errorf("got %q", got)
	}
	if got := describeAffinity(map[string]int{"1": 1, "0-1": 2}); got != "CPU 0-1 (2 threads), CPU 1 (1 thread)" {
		t.Errorf("got %q", got)
	}
	if got := describeAffinity(nil); got != "unknown" {
		t.Errorf("got %q", got)
	}
}

func TestGoMaxProcs(t *testing.T) {
	log := "SCHED 0ms: gomaxprocs=1 idleprocs=0 threads=3 spinningthreads=0 needspinning=1 idlethreads=0 runqueue=0 [ 2 ] schedticks=[ 0 ]\n{\"level\":\"warn\"}\n"
	if n := goMaxProcs([]byte(log)); n != 1 {
		t.Errorf("got %d, want 1", n)
	}
	if n := goMaxProcs([]byte("no trace")); n != 0 {
		t.Errorf("got %d, want 0", n)
	}
	if got := joinGODEBUG("", "schedtrace=1"); got != "schedtrace=1" {
		t.Errorf("got %q", got)
	}
	if got := joinGODEBUG("gctrace=1", "schedtrace=1"); got != "gctrace=1,schedtrace=1" {
		t.Errorf("got %q", got)
	}
}

func TestPinArgv(t *testing.T) {
	got := pinArgv([]string{"haproxy", "-f", "x.cfg"}, "1")
	if want := []string{"taskset", "-c", "1", "haproxy", "-f", "x.cfg"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %q", got)
	}
}

func TestApplyEnvPinAndCounters(t *testing.T) {
	tests := []struct {
		env     map[string]string
		pins    []string
		count   bool
		wantErr string
	}{
		{nil, []string{pinNone}, true, ""},
		{map[string]string{"BENCH_PIN": "split"}, []string{pinSplit}, true, ""},
		{map[string]string{"BENCH_PIN": "Both", "BENCH_COUNTERS": "off"}, []string{pinNone, pinSplit}, false, ""},
		{map[string]string{"BENCH_PIN": "half"}, nil, false, "BENCH_PIN"},
		{map[string]string{"BENCH_COUNTERS": "maybe"}, nil, false, "BENCH_COUNTERS"},
	}
	for _, tt := range tests {
		s := defaultSettings()
		err := s.applyEnv(func(k string) string { return tt.env[k] })
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%v: err = %v, want one mentioning %s", tt.env, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(s.Pins, tt.pins) || s.Pin != tt.pins[0] || s.Counters != tt.count {
			t.Errorf("%v: pins %v (pin %s), counters %v, err %v", tt.env, s.Pins, s.Pin, s.Counters, err)
		}
	}
	s := defaultSettings()
	if err := s.applyEnv(func(k string) string { return map[string]string{"BENCH_TIME": "1s"}[k] }); err != nil || s.CountTime != s.Time {
		t.Errorf("count time %v with BENCH_TIME=1s (%v)", s.CountTime, err)
	}
}

// TestPlanCountSteps: a count step of each small-message measure follows
// its timed steps, once per proxy and round, never for direct, never for
// HAProxy's missing UDP, and for none of bulk or idle.
func TestPlanCountSteps(t *testing.T) {
	s := defaultSettings()
	s.Rounds = 2
	steps := plan(s)
	counts := map[string]int{}
	for i, st := range steps {
		if !st.count {
			continue
		}
		counts[st.measure+"/"+st.target]++
		if st.target == tDirect || !applies(st.measure, st.target) || !contains(countedMeasures, st.measure) {
			t.Errorf("count step %+v", st)
		}
		if st.time != s.CountTime {
			t.Errorf("%+v: time %v, want %v", st, st.time, s.CountTime)
		}
		for _, later := range steps[i+1:] {
			if later.round == st.round && later.measure == st.measure && !later.count {
				t.Errorf("timed step %+v after count step %+v", later, st)
			}
		}
	}
	for _, m := range countedMeasures {
		for _, tg := range []string{tLbctl, tHAProxy, tNginx} {
			want := s.Rounds
			if !applies(m, tg) {
				want = 0
			}
			if counts[m+"/"+tg] != want {
				t.Errorf("%s/%s: %d count steps, want %d", m, tg, counts[m+"/"+tg], want)
			}
		}
	}
}
