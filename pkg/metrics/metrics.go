// Package metrics defines every Prometheus metric lbctl exports, with the
// names and labels fixed by the SPEC, registered on a registry the caller
// injects (never the global one, so tests and reloads never collide).
//
// The data path never looks a metric up by label: the runtime resolves the
// children it needs once per listener and backend and keeps the handles, so
// counting a connection, a datagram or a chunk of bytes is one atomic add.
// A TCP listener's handle (ForTCP) holds only TCP series and a UDP
// listener's (ForUDP) only UDP series, so neither exports the other's; the
// rejection counters of a listener (ForListener) hold the reasons its
// protocol can produce, each shown at zero from the start.
//
//	reg := prometheus.NewRegistry()
//	m := metrics.New(reg)
//	h := m.ForTCP("web", "web", "10.0.0.11:80")
//	h.ConnOpened()
//	h.AddBytes(metrics.In, n)
//	rej := m.ForListener("tcp", "web")
//	rej.Inc(metrics.ReasonACL)
//
// Every handle is a nil-safe recorder: its methods do nothing on a nil
// handle, so a caller without metrics (a unit test, a tool) passes nil
// rather than placeholder collectors.
//
// It does not serve HTTP; pkg/admin exposes the registry.
package metrics

import (
	"regexp"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics holds the metric vectors. Create it once per process with New.
type Metrics struct {
	ConnectionsActive *prometheus.GaugeVec
	ConnectionsTotal  *prometheus.CounterVec
	Rejected          *prometheus.CounterVec
	ConnectErrors     *prometheus.CounterVec
	Bytes             *prometheus.CounterVec
	BackendUp         *prometheus.GaugeVec
	HealthChecks      *prometheus.CounterVec
	ConnectDuration   *prometheus.HistogramVec
	UDPSessionsActive *prometheus.GaugeVec
	UDPDatagrams      *prometheus.CounterVec
	ConfigReloads     *prometheus.CounterVec
	// Discovery sources (see discovery.go).
	DiscoveryRefreshes   *prometheus.CounterVec
	DiscoveryBackends    *prometheus.GaugeVec
	DiscoveryLastSuccess *prometheus.GaugeVec
	// Build, configuration, backend settings, connection life (operate.go).
	operating
	// Maglev pools' lookup tables (table.go).
	tables
	// BGP peers and announcements (bgp.go).
	bgpSeries
}

// ConnectBuckets fit both LAN connects (tens of microseconds) and WAN or
// overloaded ones (seconds), up to the largest sensible connect_timeout.
var ConnectBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
	0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// schedLatencies adds to the Go collector's defaults the runtime's
// histogram of how long goroutines waited to run once runnable
// (go_sched_latencies_seconds): a proxy short of CPU shows there first,
// as an event loop that waits for a thread.
var schedLatencies = collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/sched/latencies:seconds$`)}

// New creates the lbctl metrics and registers them, with the Go and process
// collectors, on reg.
func New(reg prometheus.Registerer) *Metrics {
	lpb := []string{"listener", "pool", "backend"}
	m := &Metrics{
		ConnectionsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lbctl_connections_active",
			Help: "TCP connections open through a backend now.",
		}, lpb),
		ConnectionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lbctl_connections_total",
			Help: "TCP connections established to a backend.",
		}, lpb),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lbctl_connections_rejected_total",
			Help: "Client connections (or UDP datagrams) refused, by reason.",
		}, []string{"listener", "reason"}),
		ConnectErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lbctl_backend_connect_errors_total",
			Help: "Failed attempts to connect to a backend.",
		}, []string{"pool", "backend"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lbctl_bytes_total",
			Help: "Payload bytes moved; direction in = client to backend, out = backend to client.",
		}, []string{"listener", "pool", "backend", "direction"}),
		BackendUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lbctl_backend_up",
			Help: "1 when the backend's health is up, else 0.",
		}, []string{"pool", "backend"}),
		HealthChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lbctl_health_checks_total",
			Help: "Active health checks run, by result.",
		}, []string{"pool", "backend", "result"}),
		ConnectDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lbctl_backend_connect_duration_seconds",
			Help:    "Time to establish a backend connection (successful connects only).",
			Buckets: ConnectBuckets,
		}, []string{"pool", "backend"}),
		UDPSessionsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lbctl_udp_sessions_active",
			Help: "UDP sessions open now.",
		}, lpb),
		UDPDatagrams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lbctl_udp_datagrams_total",
			Help: "UDP datagrams forwarded; direction in = client to backend, out = backend to client.",
		}, []string{"listener", "pool", "backend", "direction"}),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lbctl_config_reloads_total",
			Help: "Configuration reloads, by result.",
		}, []string{"result"}),
		DiscoveryRefreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lbctl_discovery_refreshes_total",
			Help: "Refreshes of a pool's discovery source, by result (a failure keeps the last good set).",
		}, []string{"pool", "source", "result"}),
		DiscoveryBackends: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lbctl_discovery_backends",
			Help: "Backends in the last good set of a pool's discovery source.",
		}, []string{"pool", "source"}),
		DiscoveryLastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lbctl_discovery_last_success_timestamp_seconds",
			Help: "Unix time of the last successful refresh of a pool's discovery source; 0 = none yet.",
		}, []string{"pool", "source"}),
	}
	reg.MustRegister(
		m.ConnectionsActive, m.ConnectionsTotal, m.Rejected, m.ConnectErrors,
		m.Bytes, m.BackendUp, m.HealthChecks, m.ConnectDuration,
		m.UDPSessionsActive, m.UDPDatagrams, m.ConfigReloads,
		m.DiscoveryRefreshes, m.DiscoveryBackends, m.DiscoveryLastSuccess,
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(schedLatencies)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m.newOperating(reg)
	m.newTables(reg)
	m.newBGP(reg)
	// Show the reload counters at zero from the start, so a dashboard can
	// tell "never reloaded" from "not scraped".
	m.ConfigReloads.WithLabelValues("success")
	m.ConfigReloads.WithLabelValues("failure")
	return m
}
