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
// active and total connections, bytes, UDP sessions and datagrams.
func (m *Metrics) ForgetBackend(listener, pool, backend string) {
	l := prometheus.Labels{"listener": listener, "pool": pool, "backend": backend}
	m.ConnectionsActive.Delete(l)
	m.ConnectionsTotal.Delete(l)
	m.Bytes.DeletePartialMatch(l)
	m.UDPSessionsActive.Delete(l)
	m.UDPDatagrams.DeletePartialMatch(l)
}

// ForgetPoolBackend deletes the series of one backend of a pool: connect
// errors and durations, health and health checks.
func (m *Metrics) ForgetPoolBackend(pool, backend string) {
	l := prometheus.Labels{"pool": pool, "backend": backend}
	m.ConnectErrors.Delete(l)
	m.ConnectDuration.Delete(l)
	m.BackendUp.Delete(l)
	m.HealthChecks.DeletePartialMatch(l)
}

// ForgetListener deletes the rejection counters of one listener.
func (m *Metrics) ForgetListener(listener string) {
	m.Rejected.DeletePartialMatch(prometheus.Labels{"listener": listener})
}
