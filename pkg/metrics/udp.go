package metrics

import "github.com/prometheus/client_golang/prometheus"

// UDP records what one UDP listener moves through one backend: sessions,
// datagrams and their bytes, failed connects. It holds no TCP series (a
// session is not a connection, and no connect is timed). Its methods do
// nothing on a nil *UDP (or the zero UDP), so they can be called
// unconditionally.
type UDP struct {
	sessions      prometheus.Gauge
	datagrams     [2]prometheus.Counter // by Direction
	bytes         [2]prometheus.Counter // by Direction
	connectErrors prometheus.Counter
}

// ForUDP resolves the children a UDP listener's sessions with one backend
// move. Call it when building the runtime, not per session.
func (m *Metrics) ForUDP(listener, pool, backend string) *UDP {
	return &UDP{
		sessions: m.UDPSessionsActive.WithLabelValues(listener, pool, backend),
		datagrams: [2]prometheus.Counter{
			In:  m.UDPDatagrams.WithLabelValues(listener, pool, backend, In.String()),
			Out: m.UDPDatagrams.WithLabelValues(listener, pool, backend, Out.String()),
		},
		bytes: [2]prometheus.Counter{
			In:  m.Bytes.WithLabelValues(listener, pool, backend, In.String()),
			Out: m.Bytes.WithLabelValues(listener, pool, backend, Out.String()),
		},
		connectErrors: m.ConnectErrors.WithLabelValues(pool, backend),
	}
}

// SessionOpened counts one more active session.
func (u *UDP) SessionOpened() {
	if u != nil && u.sessions != nil {
		u.sessions.Inc()
	}
}

// SessionClosed takes a session SessionOpened counted off the active ones.
func (u *UDP) SessionClosed() {
	if u != nil && u.sessions != nil {
		u.sessions.Dec()
	}
}

// ConnectFailed counts one failed attempt to open the backend socket.
func (u *UDP) ConnectFailed() {
	if u != nil {
		inc(u.connectErrors)
	}
}

// Datagram counts one datagram of n payload bytes forwarded in direction d.
func (u *UDP) Datagram(d Direction, n int) {
	if u != nil && int(d) < len(u.datagrams) {
		inc(u.datagrams[d])
		add(u.bytes[d], n)
	}
}
