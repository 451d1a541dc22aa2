package metrics

import (
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestBuildInfo: one series at 1, with the stamped version and commit and
// the running Go version; "dev" before SetBuildInfo.
func TestBuildInfo(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	if got := testutil.ToFloat64(m.BuildInfo.WithLabelValues("dev", "unknown", runtime.Version())); got != 1 {
		t.Errorf("build_info{dev} = %v, want 1", got)
	}
	m.SetBuildInfo("v1.2.3", "abc1234")
	if n := testutil.CollectAndCount(m.BuildInfo); n != 1 {
		t.Errorf("%d build_info series, want 1", n)
	}
	if got := testutil.ToFloat64(m.BuildInfo.WithLabelValues("v1.2.3", "abc1234", runtime.Version())); got != 1 {
		t.Errorf("build_info{v1.2.3} = %v, want 1", got)
	}
}

// TestReloadResult: the last result and the time of the last success
// follow the loads; the counter counts reloads, not the first load.
func TestReloadResult(t *testing.T) {
	m := New(prometheus.NewRegistry())
	t0 := time.Unix(1_700_000_000, 500_000_000)
	m.ConfigLoaded(t0)
	check := func(step string, ok, at, success, failure float64) {
		t.Helper()
		if got := testutil.ToFloat64(m.LastReloadSuccessful); got != ok {
			t.Errorf("%s: last_reload_successful = %v, want %v", step, got, ok)
		}
		if got := testutil.ToFloat64(m.LastReloadSuccessTime); got != at {
			t.Errorf("%s: last_reload_success_timestamp = %v, want %v", step, got, at)
		}
		if got := testutil.ToFloat64(m.ConfigReloads.WithLabelValues("success")); got != success {
			t.Errorf("%s: reloads success = %v, want %v", step, got, success)
		}
		if got := testutil.ToFloat64(m.ConfigReloads.WithLabelValues("failure")); got != failure {
			t.Errorf("%s: reloads failure = %v, want %v", step, got, failure)
		}
	}
	check("start", 1, 1_700_000_000.5, 0, 0)
	m.ReloadResult(false, t0.Add(time.Minute))
	check("failed reload", 0, 1_700_000_000.5, 0, 1)
	m.ReloadResult(true, t0.Add(time.Hour))
	check("good reload", 1, 1_700_003_600.5, 1, 1)
}

// TestConfigFileChanged: the gauge asks the check at every scrape.
func TestConfigFileChanged(t *testing.T) {
	m := New(prometheus.NewRegistry())
	if got := testutil.ToFloat64(m.ConfigFileChanged); got != 0 {
		t.Errorf("without a check: %v, want 0", got)
	}
	changed := false
	m.SetConfigFileCheck(func() bool { return changed })
	if got := testutil.ToFloat64(m.ConfigFileChanged); got != 0 {
		t.Errorf("unchanged: %v, want 0", got)
	}
	changed = true
	if got := testutil.ToFloat64(m.ConfigFileChanged); got != 1 {
		t.Errorf("changed: %v, want 1", got)
	}
	m.SetConfigFileCheck(nil)
	if got := testutil.ToFloat64(m.ConfigFileChanged); got != 0 {
		t.Errorf("check removed: %v, want 0", got)
	}
}

// TestBackendSettings: one admin_state series per state, 1 for the state
// in force; the weight; ForgetPoolBackend deletes them all.
func TestBackendSettings(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.SetBackendSettings("web", "10.0.0.1:80", "enabled", 3)
	m.SetBackendSettings("web", "10.0.0.1:80", "draining", 5)
	const a, w = "lbctl_backend_admin_state", "lbctl_backend_weight"
	wantSeries(t, reg,
		a+"{backend=10.0.0.1:80,pool=web,state=enabled} 0",
		a+"{backend=10.0.0.1:80,pool=web,state=draining} 1",
		a+"{backend=10.0.0.1:80,pool=web,state=disabled} 0",
		w+"{backend=10.0.0.1:80,pool=web} 5",
	)
	m.ForgetPoolBackend("web", "10.0.0.1:80")
	wantSeries(t, reg)
}

// TestDurations: Observe counts one sample in the listener's histogram,
// allocates nothing, is a no-op on nil; buckets run from 1ms to hours;
// ForgetListener deletes the series.
func TestDurations(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	d := m.ForDurations("web")
	d.Observe(1500 * time.Millisecond)
	d.Observe(2 * time.Hour)
	wantSeries(t, reg, "lbctl_connection_duration_seconds{listener=web} 2")
	if n := testing.AllocsPerRun(1000, func() { d.Observe(time.Second) }); n != 0 {
		t.Errorf("Observe: %v allocations, want 0", n)
	}
	for _, nd := range []*Durations{nil, {}} {
		nd.Observe(time.Second)
	}
	if b := DurationBuckets; b[0] > 0.001 || b[len(b)-1] < 3600 {
		t.Errorf("buckets %v..%v, want <= 1ms .. >= 1h", b[0], b[len(b)-1])
	}
	m.ForgetListener("web")
	wantSeries(t, reg)
}
