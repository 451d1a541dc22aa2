package main

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestApplyEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		check   func(s settings) bool
		wantErr string
	}{
		{"defaults", nil, func(s settings) bool {
			return s.Time == 4*time.Second && s.Rounds == 3 && reflect.DeepEqual(s.Targets, allTargets)
		}, ""},
		{"duration", map[string]string{"BENCH_TIME": "1500ms"}, func(s settings) bool { return s.Time == 1500*time.Millisecond }, ""},
		{"seconds", map[string]string{"BENCH_TIME": "2"}, func(s settings) bool { return s.Time == 2*time.Second }, ""},
		{"short time shortens the warm-up", map[string]string{"BENCH_TIME": "800ms"}, func(s settings) bool {
			return s.Warmup == 100*time.Millisecond
		}, ""},
		{"rounds", map[string]string{"BENCH_ROUNDS": "5"}, func(s settings) bool { return s.Rounds == 5 }, ""},
		{"targets keep table order", map[string]string{"BENCH_TARGETS": "nginx, Direct"}, func(s settings) bool {
			return reflect.DeepEqual(s.Targets, []string{tDirect, tNginx})
		}, ""},
		{"measures keep run order", map[string]string{"BENCH_MEASURES": "sni,short"}, func(s settings) bool {
			// Each round: both measures on every target, and a count
			// step of each on each proxy.
			return reflect.DeepEqual(s.Measures, []string{mShort, mSNI}) && len(plan(s)) == 3*(2*len(allTargets)+2*(len(allTargets)-1))
		}, ""},
		{"all measures by default", nil, func(s settings) bool { return reflect.DeepEqual(s.Measures, measureOrder) }, ""},
		{"unknown measure", map[string]string{"BENCH_MEASURES": "tls"}, nil, `unknown name "tls"`},
		{"bad time", map[string]string{"BENCH_TIME": "soon"}, nil, "BENCH_TIME"},
		{"tiny time", map[string]string{"BENCH_TIME": "1ms"}, nil, "at least"},
		{"bad rounds", map[string]string{"BENCH_ROUNDS": "0"}, nil, "BENCH_ROUNDS"},
		{"unknown target", map[string]string{"BENCH_TARGETS": "envoy"}, nil, "envoy"},
		{"no target", map[string]string{"BENCH_TARGETS": ","}, nil, "no target"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := defaultSettings()
			err := s.applyEnv(func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(s) {
				t.Errorf("settings %+v", s)
			}
		})
	}
}

func TestPlanInterleavesAndRotates(t *testing.T) {
	s := defaultSettings()
	s.Rounds = 2
	s.Counters = false
	steps := plan(s)
	// 7 measures x 4 targets, minus HAProxy UDP and direct idle, plus the
	// extra slices of rr1, per round.
	if want := 2 * (7*4 - 2 + (rr1Slices-1)*4); len(steps) != want {
		t.Fatalf("%d steps, want %d", len(steps), want)
	}
	rr1 := map[string]int{}
	for _, st := range steps {
		if !applies(st.measure, st.target) {
			t.Errorf("planned %+v", st)
		}
		want := s.Time
		if st.measure == mRR1 {
			want = s.Time / rr1Slices
			if st.round == 0 {
				rr1[st.target]++
			}
		}
		if st.time != want {
			t.Errorf("%+v: time %v, want %v", st, st.time, want)
		}
	}
	for _, tg := range allTargets {
		if rr1[tg] != rr1Slices {
			t.Errorf("%s has %d rr1 slices in round 1, want %d", tg, rr1[tg], rr1Slices)
		}
	}
	if steps[0].target == steps[len(steps)/2].target {
		t.Errorf("round 2 starts with the same target as round 1: %s", steps[0].target)
	}
	// Within a round, every target runs a measure before the next measure.
	seen := map[string]bool{}
	for _, st := range steps[:len(steps)/2] {
		if st.measure == mShort {
			seen[st.target] = true
		}
		if st.measure == mRR1 && len(seen) != 4 {
			t.Fatalf("rr1 started before every target ran short: %v", seen)
		}
	}
}

func TestPortRangeAvoidsEphemeralPorts(t *testing.T) {
	tests := []struct {
		in     string
		lo, hi int
	}{
		{"32768\t60999\n", 10000, 32768},
		{"1024 60000", 60001, 65536},
		{"1024 65000", 1024, 65536},
		{"garbage", 10000, 32768},
	}
	for _, tt := range tests {
		if lo, hi := portRange(tt.in); lo != tt.lo || hi != tt.hi {
			t.Errorf("portRange(%q) = %d, %d; want %d, %d", tt.in, lo, hi, tt.lo, tt.hi)
		}
	}
	ps, err := freePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	lo, hi := portRange(readFileOr("/proc/sys/net/ipv4/ip_local_port_range", ""))
	for _, p := range ps {
		if p < lo || p >= hi {
			t.Errorf("port %d outside %d-%d", p, lo, hi)
		}
	}
}
