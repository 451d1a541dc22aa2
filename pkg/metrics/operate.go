package metrics

import (
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The metrics an operator's dashboards and alerts need beside the traffic
// counters: which build runs, whether the last reload worked and whether
// the file on disk is still the configuration in force, each backend's
// admin state and weight in force, and how long connections live.
//
//	m.SetBuildInfo(version, commit)               // once, at start
//	m.ConfigLoaded(time.Now())                    // the first load
//	m.ReloadResult(err == nil, time.Now())        // after every reload
//	m.SetConfigFileCheck(func() bool { ... })     // asked at every scrape
//	m.SetBackendSettings("web", "10.0.0.1:80", "draining", 3)
//	d := m.ForDurations("web"); d.Observe(time.Since(start))

// AdminStates are the values of the state label of
// lbctl_backend_admin_state, in the order of balancer.AdminState.
var AdminStates = [3]string{"enabled", "draining", "disabled"}

// DurationBuckets span a connection's or session's life from a DNS
// exchange (1 ms) to a long-lived stream (4 h).
var DurationBuckets = []float64{
	0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400,
}

// operating holds the vectors of this file; it is embedded in Metrics.
type operating struct {
	BuildInfo             *prometheus.GaugeVec
	LastReloadSuccessful  prometheus.Gauge
	LastReloadSuccessTime prometheus.Gauge
	ConfigFileChanged     prometheus.GaugeFunc
	BackendAdminState     *prometheus.GaugeVec
	BackendWeight         *prometheus.GaugeVec
	ConnectionDuration    *prometheus.HistogramVec
	LoopMissedWakeups     prometheus.CounterFunc
	LoopPromoteFailures   prometheus.CounterFunc

	fileCheck atomic.Pointer[func() bool]
	// The event loops' counters (SetLoopCounters); nil reads 0.
	missedWakeups, promoteFailures atomic.Pointer[func() int64]
}

// newOperating creates the vectors of this file and registers them on reg.
func (m *Metrics) newOperating(reg prometheus.Registerer) {
	o := &m.operating
	o.BuildInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "lbctl_build_info",
		Help: "Always 1; the labels say which build of lbctl runs.",
	}, []string{"version", "commit", "goversion"})
	o.LastReloadSuccessful = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "lbctl_config_last_reload_successful",
		Help: "1 when the last configuration load (start or reload) succeeded, 0 when it was rejected.",
	})
	o.LastReloadSuccessTime = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "lbctl_config_last_reload_success_timestamp_seconds",
		Help: "Unix time of the last successful configuration load (start or reload).",
	})
	o.ConfigFileChanged = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "lbctl_config_file_changed",
		Help: "1 when the config file on disk differs from the configuration in force (edited and not reloaded, or unreadable), else 0.",
	}, func() float64 {
		if f := o.fileCheck.Load(); f != nil && (*f)() {
			return 1
		}
		return 0
	})
	o.BackendAdminState = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "lbctl_backend_admin_state",
		Help: "1 for the backend's admin state in force, 0 for the other two (enabled, draining, disabled).",
	}, []string{"pool", "backend", "state"})
	o.BackendWeight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "lbctl_backend_weight",
		Help: "The backend's weight in force (its source's, or the operator's override).",
	}, []string{"pool", "backend"})
	o.ConnectionDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "lbctl_connection_duration_seconds",
		Help:    "Life of proxied TCP connections (from accept to close) and UDP sessions, observed when they end.",
		Buckets: DurationBuckets,
	}, []string{"listener"})
	read := func(f *atomic.Pointer[func() int64]) func() float64 {
		return func() float64 {
			if g := f.Load(); g != nil {
				return float64((*g)())
			}
			return 0
		}
	}
	o.LoopMissedWakeups = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "lbctl_tcp_loop_missed_wakeups_total",
		Help: "Times a watchdog found a TCP event loop parked for a second with sockets ready, and woke it: 0 unless a wake-up was lost.",
	}, read(&o.missedWakeups))
	o.LoopPromoteFailures = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "lbctl_tcp_loop_promote_failures_total",
		Help: "Times a TCP connection could not leave its event loop for want of file descriptors: for a bulk transfer's splice or an upgrade's handover it stayed in the loop, or ended if the loop could not watch it; a client bound for the goroutine path was reset.",
	}, read(&o.promoteFailures))
	reg.MustRegister(o.BuildInfo, o.LastReloadSuccessful, o.LastReloadSuccessTime, o.ConfigFileChanged,
		o.BackendAdminState, o.BackendWeight, o.ConnectionDuration, o.LoopMissedWakeups, o.LoopPromoteFailures)
	m.SetBuildInfo("dev", "unknown")
}

// SetBuildInfo sets lbctl_build_info to the version and commit the binary
// was stamped with (Go's version is the running one's).
func (m *Metrics) SetBuildInfo(version, commit string) {
	m.BuildInfo.Reset()
	m.BuildInfo.WithLabelValues(version, commit, runtime.Version()).Set(1)
}

// SetLoopCounters makes lbctl_tcp_loop_missed_wakeups_total and
// lbctl_tcp_loop_promote_failures_total read missed and promoteFailures
// (tcpproxy's process-wide counters) at each scrape.
func (m *Metrics) SetLoopCounters(missed, promoteFailures func() int64) {
	m.missedWakeups.Store(&missed)
	m.promoteFailures.Store(&promoteFailures)
}

// ConfigLoaded records the configuration loaded at start at t: the last
// load succeeded. It counts no reload.
func (m *Metrics) ConfigLoaded(t time.Time) {
	m.LastReloadSuccessful.Set(1)
	m.LastReloadSuccessTime.Set(float64(t.UnixNano()) / 1e9)
}

// ReloadResult records a reload's outcome: lbctl_config_reloads_total, the
// last result, and on success its time t.
func (m *Metrics) ReloadResult(ok bool, t time.Time) {
	if ok {
		m.ConfigReloads.WithLabelValues("success").Inc()
		m.ConfigLoaded(t)
		return
	}
	m.ConfigReloads.WithLabelValues("failure").Inc()
	m.LastReloadSuccessful.Set(0)
}

// SetConfigFileCheck sets the function lbctl_config_file_changed asks at
// every scrape: whether the config file differs from the configuration in
// force. It must be cheap (a stat while nothing changed). nil = 0.
func (m *Metrics) SetConfigFileCheck(changed func() bool) {
	if changed == nil {
		m.fileCheck.Store(nil)
		return
	}
	m.fileCheck.Store(&changed)
}

// SetBackendSettings sets lbctl_backend_admin_state (admin is one of
// AdminStates) and lbctl_backend_weight of one backend of pool.
// ForgetPoolBackend deletes them.
func (m *Metrics) SetBackendSettings(pool, backend, admin string, weight int) {
	for _, s := range AdminStates {
		v := 0.0
		if s == admin {
			v = 1
		}
		m.BackendAdminState.WithLabelValues(pool, backend, s).Set(v)
	}
	m.BackendWeight.WithLabelValues(pool, backend).Set(float64(weight))
}

// forgetSettings deletes what SetBackendSettings set.
func (m *Metrics) forgetSettings(pool, backend string) {
	for _, s := range AdminStates {
		m.BackendAdminState.DeleteLabelValues(pool, backend, s)
	}
	m.BackendWeight.DeleteLabelValues(pool, backend)
}

// Durations observes the life of one listener's TCP connections or UDP
// sessions. Observe does nothing on a nil *Durations (or the zero one),
// and allocates nothing.
type Durations struct {
	h prometheus.Observer
}

// ForDurations resolves the lbctl_connection_duration_seconds series of
// listener. ForgetListener deletes it.
func (m *Metrics) ForDurations(listener string) *Durations {
	return &Durations{h: m.ConnectionDuration.WithLabelValues(listener)}
}

// Observe records one connection or session that lived d.
func (d *Durations) Observe(dur time.Duration) {
	if d != nil && d.h != nil {
		d.h.Observe(dur.Seconds())
	}
}
