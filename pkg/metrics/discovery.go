package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Discovery records the refreshes of one discovery source of one pool:
// lbctl_discovery_refreshes_total, lbctl_discovery_backends and
// lbctl_discovery_last_success_timestamp_seconds. Its methods do nothing
// on a nil *Discovery.
type Discovery struct {
	success, failure prometheus.Counter
	backends         prometheus.Gauge
	lastSuccess      prometheus.Gauge
}

// ForDiscovery resolves the series of source (as the status JSON names it:
// "dns:NAME", ...) of pool, each shown at zero from the start.
func (m *Metrics) ForDiscovery(pool, source string) *Discovery {
	return &Discovery{
		success:     m.DiscoveryRefreshes.WithLabelValues(pool, source, "success"),
		failure:     m.DiscoveryRefreshes.WithLabelValues(pool, source, "failure"),
		backends:    m.DiscoveryBackends.WithLabelValues(pool, source),
		lastSuccess: m.DiscoveryLastSuccess.WithLabelValues(pool, source),
	}
}

// Succeeded counts a refresh that gave a set of n backends at t.
func (d *Discovery) Succeeded(n int, t time.Time) {
	if d == nil {
		return
	}
	d.success.Inc()
	d.backends.Set(float64(n))
	d.lastSuccess.Set(float64(t.UnixNano()) / 1e9)
}

// Failed counts a refresh that failed (the pool keeps the last good set).
func (d *Discovery) Failed() {
	if d != nil {
		d.failure.Inc()
	}
}

// ForgetDiscovery deletes the series of a source that went away (a reload
// removed it, or its pool).
func (m *Metrics) ForgetDiscovery(pool, source string) {
	l := prometheus.Labels{"pool": pool, "source": source}
	m.DiscoveryRefreshes.DeletePartialMatch(l)
	m.DiscoveryBackends.Delete(l)
	m.DiscoveryLastSuccess.Delete(l)
}
