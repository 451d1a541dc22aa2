package balancer

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestAdminStateRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		state AdminState
		name  string
	}{
		{Enabled, "enabled"},
		{Draining, "draining"},
		{Disabled, "disabled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.state.String(); got != tc.name {
				t.Errorf("String() = %q, want %q", got, tc.name)
			}
			got, err := ParseAdminState(tc.name)
			if err != nil || got != tc.state {
				t.Errorf("ParseAdminState(%q) = %v, %v; want %v, nil", tc.name, got, err, tc.state)
			}
			js, err := json.Marshal(map[string]AdminState{"admin": tc.state})
			if err != nil {
				t.Fatalf("json.Marshal: %v", err)
			}
			if want := `{"admin":"` + tc.name + `"}`; string(js) != want {
				t.Errorf("JSON = %s, want %s", js, want)
			}
			var back map[string]AdminState
			if err := json.Unmarshal(js, &back); err != nil || back["admin"] != tc.state {
				t.Errorf("json.Unmarshal(%s) = %v, %v; want %v", js, back, err, tc.state)
			}
		})
	}
}

func TestParseAdminStateRejects(t *testing.T) {
	for _, s := range []string{"", "Enabled", "drain", "up", "enabled "} {
		_, err := ParseAdminState(s)
		if !errors.Is(err, ErrUnknownAdminState) {
			t.Errorf("ParseAdminState(%q) error = %v, want ErrUnknownAdminState", s, err)
		}
	}
	if got := AdminState(7).String(); got != "AdminState(7)" {
		t.Errorf("AdminState(7).String() = %q", got)
	}
	if _, err := AdminState(7).MarshalText(); !errors.Is(err, ErrUnknownAdminState) {
		t.Errorf("AdminState(7).MarshalText() error = %v, want ErrUnknownAdminState", err)
	}
}

func TestNewBackendStartsUpEnabledAtFullScale(t *testing.T) {
	b := NewBackend("[::1]:8080")
	if b.Address() != "[::1]:8080" || b.String() != "[::1]:8080" {
		t.Errorf("got address %q, string %q", b.Address(), b)
	}
	if !b.Healthy() || b.Admin() != Enabled || b.WeightScale() != 1000 || !b.Eligible() {
		t.Errorf("got healthy %v admin %v scale %d eligible %v; want up, enabled, 1000, eligible",
			b.Healthy(), b.Admin(), b.WeightScale(), b.Eligible())
	}
	if b.Active() != 0 || b.Total() != 0 || b.Failures() != 0 {
		t.Errorf("got active %d total %d failures %d", b.Active(), b.Total(), b.Failures())
	}
}

func TestSetHealthyReportsTransitions(t *testing.T) {
	b := NewBackend("a:1")
	steps := []struct {
		up, changed bool
	}{
		{true, false}, // starts up
		{false, true},
		{false, false},
		{true, true},
		{true, false},
	}
	for i, s := range steps {
		if got := b.SetHealthy(s.up); got != s.changed {
			t.Errorf("step %d: SetHealthy(%v) = %v, want %v", i, s.up, got, s.changed)
		}
		if b.Healthy() != s.up {
			t.Errorf("step %d: Healthy() = %v, want %v", i, b.Healthy(), s.up)
		}
	}
}

func TestWeights(t *testing.T) {
	for _, tc := range []struct {
		name      string
		weight    uint32
		scale     int
		wantScale int
		wantPick  uint64
	}{
		{"full", 5, 1000, 1000, 5000},
		{"zero weight", 0, 1000, 1000, 0},
		{"zero weight ramping", 0, 100, 100, 0},
		{"half", 7, 500, 500, 3500},
		{"tenth of 10", 10, 100, 100, 1000},
		{"tenth of 1 keeps fine share", 1, 100, 100, 100},
		{"scale 0 still eligible", 4, 0, 0, 1},
		{"scale clamped high", 2, 5000, 1000, 2000},
		{"scale clamped low", 2, -5, 0, 1},
		{"max weight", MaxWeight, 1000, 1000, MaxWeight * 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBackend("a:1")
			b.SetWeightScale(tc.scale)
			if b.WeightScale() != tc.wantScale {
				t.Errorf("WeightScale() = %d, want %d", b.WeightScale(), tc.wantScale)
			}
			if got := b.pickWeight(tc.weight); got != tc.wantPick {
				t.Errorf("pickWeight(%d) = %d, want %d", tc.weight, got, tc.wantPick)
			}
		})
	}
}

func TestEligible(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(*Backend)
		allowed bool
	}{
		{"new", func(*Backend) {}, true},
		{"down", func(b *Backend) { b.SetHealthy(false) }, false},
		{"draining", func(b *Backend) { b.SetAdmin(Draining) }, false},
		{"disabled", func(b *Backend) { b.SetAdmin(Disabled) }, false},
		{"re-enabled", func(b *Backend) { b.SetAdmin(Disabled); b.SetAdmin(Enabled) }, true},
		{"slow start", func(b *Backend) { b.SetWeightScale(0) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBackend("a:1")
			tc.setup(b)
			if got := b.Eligible(); got != tc.allowed {
				t.Errorf("Eligible() = %v, want %v", got, tc.allowed)
			}
			if got := b.pickWeight(2) > 0; got != tc.allowed {
				t.Errorf("pickWeight(2) > 0 = %v, want %v", got, tc.allowed)
			}
		})
	}
}

func TestCounters(t *testing.T) {
	b := NewBackend("a:1")
	for range 5 {
		b.Acquire() // picked: active while connecting
	}
	for range 3 {
		b.Established()
	}
	b.AddFailure() // two connects failed...
	b.AddFailure()
	b.Release() // ...and were released
	b.Release()
	if b.Active() != 3 || b.Total() != 3 || b.Failures() != 2 {
		t.Errorf("active %d total %d failures %d; want 3 3 2", b.Active(), b.Total(), b.Failures())
	}
}
