// Package metrics defines every Prometheus metric lbctl exports, with the
// names and labels fixed by the SPEC, registered on a registry the caller
// injects (never the global one, so tests and reloads never collide).
//
// The data path never looks a metric up by label: the runtime resolves the
// children it needs once per backend with ForBackend and keeps the handles,
// so counting a connection or a chunk of bytes is one atomic add.
//
//	reg := prometheus.NewRegistry()
//	m := metrics.New(reg)
//	h := m.ForBackend("web", "web", "10.0.0.11:80")
//	h.ConnectionsTotal.Inc()
//
// It does not serve HTTP; pkg/admin exposes the registry.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Rejection reasons, the values of the reason label of
// lbctl_connections_rejected_total.
const (
	ReasonMaxConnections     = "max_connections"
	ReasonACL                = "acl"
	ReasonNoBackend          = "no_backend"
	ReasonBackendUnavailable = "backend_unavailable"
	ReasonClientLimit        = "client_limit"
	ReasonRateLimit          = "rate_limit"
	ReasonProxyProtocol      = "proxy_protocol"
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
}

// ConnectBuckets fit both LAN connects (tens of microseconds) and WAN or
// overloaded ones (seconds), up to the largest sensible connect_timeout.
var ConnectBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
	0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

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
	}
	reg.MustRegister(
		m.ConnectionsActive, m.ConnectionsTotal, m.Rejected, m.ConnectErrors,
		m.Bytes, m.BackendUp, m.HealthChecks, m.ConnectDuration,
		m.UDPSessionsActive, m.UDPDatagrams, m.ConfigReloads,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// Show the reload counters at zero from the start, so a dashboard can
	// tell "never reloaded" from "not scraped".
	m.ConfigReloads.WithLabelValues("success")
	m.ConfigReloads.WithLabelValues("failure")
	return m
}

// Backend holds the children of one (listener, pool, backend) triple.
type Backend struct {
	ConnectionsActive prometheus.Gauge
	ConnectionsTotal  prometheus.Counter
	BytesIn           prometheus.Counter
	BytesOut          prometheus.Counter
	ConnectErrors     prometheus.Counter
	ConnectDuration   prometheus.Observer
	UDPSessionsActive prometheus.Gauge
	DatagramsIn       prometheus.Counter
	DatagramsOut      prometheus.Counter
}

// ForBackend resolves the children for one backend as seen from one
// listener. Call it when building the runtime, not per connection.
func (m *Metrics) ForBackend(listener, pool, backend string) *Backend {
	return &Backend{
		ConnectionsActive: m.ConnectionsActive.WithLabelValues(listener, pool, backend),
		ConnectionsTotal:  m.ConnectionsTotal.WithLabelValues(listener, pool, backend),
		BytesIn:           m.Bytes.WithLabelValues(listener, pool, backend, "in"),
		BytesOut:          m.Bytes.WithLabelValues(listener, pool, backend, "out"),
		ConnectErrors:     m.ConnectErrors.WithLabelValues(pool, backend),
		ConnectDuration:   m.ConnectDuration.WithLabelValues(pool, backend),
		UDPSessionsActive: m.UDPSessionsActive.WithLabelValues(listener, pool, backend),
		DatagramsIn:       m.UDPDatagrams.WithLabelValues(listener, pool, backend, "in"),
		DatagramsOut:      m.UDPDatagrams.WithLabelValues(listener, pool, backend, "out"),
	}
}

// ForTCP resolves the children a TCP listener moves. The UDP ones are
// placeholders outside the registry, so a TCP listener exports no
// lbctl_udp_* series.
func (m *Metrics) ForTCP(listener, pool, backend string) *Backend {
	return &Backend{
		ConnectionsActive: m.ConnectionsActive.WithLabelValues(listener, pool, backend),
		ConnectionsTotal:  m.ConnectionsTotal.WithLabelValues(listener, pool, backend),
		BytesIn:           m.Bytes.WithLabelValues(listener, pool, backend, "in"),
		BytesOut:          m.Bytes.WithLabelValues(listener, pool, backend, "out"),
		ConnectErrors:     m.ConnectErrors.WithLabelValues(pool, backend),
		ConnectDuration:   m.ConnectDuration.WithLabelValues(pool, backend),
		UDPSessionsActive: unregisteredGauge(),
		DatagramsIn:       unregisteredCounter(),
		DatagramsOut:      unregisteredCounter(),
	}
}

// ForUDP resolves the children a UDP listener moves. The TCP connection
// ones are placeholders outside the registry (a UDP session is not a
// connection, and no connect is timed).
func (m *Metrics) ForUDP(listener, pool, backend string) *Backend {
	return &Backend{
		ConnectionsActive: unregisteredGauge(),
		ConnectionsTotal:  unregisteredCounter(),
		BytesIn:           m.Bytes.WithLabelValues(listener, pool, backend, "in"),
		BytesOut:          m.Bytes.WithLabelValues(listener, pool, backend, "out"),
		ConnectErrors:     m.ConnectErrors.WithLabelValues(pool, backend),
		ConnectDuration:   prometheus.NewHistogram(prometheus.HistogramOpts{Name: "unregistered"}),
		UDPSessionsActive: m.UDPSessionsActive.WithLabelValues(listener, pool, backend),
		DatagramsIn:       m.UDPDatagrams.WithLabelValues(listener, pool, backend, "in"),
		DatagramsOut:      m.UDPDatagrams.WithLabelValues(listener, pool, backend, "out"),
	}
}

func unregisteredCounter() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: "unregistered"})
}

func unregisteredGauge() prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Name: "unregistered"})
}

// Rejections holds the rejected-connection counters of one listener, one
// per reason.
type Rejections struct {
	MaxConnections, ACL, NoBackend, BackendUnavailable,
	ClientLimit, RateLimit, ProxyProtocol prometheus.Counter
}

// ForListener resolves the rejection counters of one listener. Every reason
// is created, so each shows at zero before the first rejection.
func (m *Metrics) ForListener(listener string) *Rejections {
	c := func(reason string) prometheus.Counter { return m.Rejected.WithLabelValues(listener, reason) }
	return &Rejections{
		MaxConnections:     c(ReasonMaxConnections),
		ACL:                c(ReasonACL),
		NoBackend:          c(ReasonNoBackend),
		BackendUnavailable: c(ReasonBackendUnavailable),
		ClientLimit:        c(ReasonClientLimit),
		RateLimit:          c(ReasonRateLimit),
		ProxyProtocol:      c(ReasonProxyProtocol),
	}
}
