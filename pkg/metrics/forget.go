package metrics

import "github.com/prometheus/client_golang/prometheus"

// Forgetting series. A reload that removes a listener, a backend or a pool
// deletes their series, so /metrics only shows what is configured and the
// number of series stays bounded however often backends come and go.
//
// A handle resolved before the deletion (held by a connection that is still
// open) keeps working, but what it counts is no longer exported; a backend
// added again later starts its series from zero, which Prometheus reads as a
// counter reset.

// ForgetBackend deletes the series of one (listener, pool, backend) triple:
// active and total connections, bytes, UDP sessions and datagrams. Each
// series is deleted by its full label set, so the cost does not grow with
// the number of series (a refresh of a large pool forgets its removed
// backends one by one).
func (m *Metrics) ForgetBackend(listener, pool, backend string) {
	m.ConnectionsActive.DeleteLabelValues(listener, pool, backend)
	m.ConnectionsTotal.DeleteLabelValues(listener, pool, backend)
	m.UDPSessionsActive.DeleteLabelValues(listener, pool, backend)
	for _, d := range []string{In.String(), Out.String()} {
		m.Bytes.DeleteLabelValues(listener, pool, backend, d)
		m.UDPDatagrams.DeleteLabelValues(listener, pool, backend, d)
	}
}

// ForgetPoolBackend deletes the series of one backend of a pool: connect
// errors and durations, health and health checks, admin state and
// weight.
func (m *Metrics) ForgetPoolBackend(pool, backend string) {
	m.ConnectErrors.DeleteLabelValues(pool, backend)
	m.ConnectDuration.DeleteLabelValues(pool, backend)
	m.BackendUp.DeleteLabelValues(pool, backend)
	m.HealthChecks.DeleteLabelValues(pool, backend, "success")
	m.HealthChecks.DeleteLabelValues(pool, backend, "failure")
	m.forgetSettings(pool, backend)
}

// ForgetListener deletes the rejection counters and the connection
// durations of one listener.
func (m *Metrics) ForgetListener(listener string) {
	m.Rejected.DeletePartialMatch(prometheus.Labels{"listener": listener})
	m.ConnectionDuration.DeleteLabelValues(listener)
}
