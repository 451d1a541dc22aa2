package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TCP records what one TCP listener moves through one backend:
// connections, bytes and connects. It holds no UDP series. Its methods do
// nothing on a nil *TCP (or the zero TCP), so they can be called
// unconditionally.
type TCP struct {
	active          prometheus.Gauge
	total           prometheus.Counter
	bytes           [2]prometheus.Counter // by Direction
	connectErrors   prometheus.Counter
	connectDuration prometheus.Observer
}

// ForTCP resolves the children a TCP listener's connections to one backend
// move. Call it when building the runtime, not per connection.
func (m *Metrics) ForTCP(listener, pool, backend string) *TCP {
	return &TCP{
		active: m.ConnectionsActive.WithLabelValues(listener, pool, backend),
		total:  m.ConnectionsTotal.WithLabelValues(listener, pool, backend),
		bytes: [2]prometheus.Counter{
			In:  m.Bytes.WithLabelValues(listener, pool, backend, In.String()),
			Out: m.Bytes.WithLabelValues(listener, pool, backend, Out.String()),
		},
		connectErrors:   m.ConnectErrors.WithLabelValues(pool, backend),
		connectDuration: m.ConnectDuration.WithLabelValues(pool, backend),
	}
}

// ConnectSucceeded observes the time a successful connect to the backend
// took.
func (t *TCP) ConnectSucceeded(d time.Duration) {
	if t != nil && t.connectDuration != nil {
		t.connectDuration.Observe(d.Seconds())
	}
}

// ConnectFailed counts one failed connect to the backend.
func (t *TCP) ConnectFailed() {
	if t != nil {
		inc(t.connectErrors)
	}
}

// ConnOpened counts a connection through the backend: one more active, one
// more in the total.
func (t *TCP) ConnOpened() {
	if t != nil {
		if t.active != nil {
			t.active.Inc()
		}
		inc(t.total)
	}
}

// ConnClosed takes a connection ConnOpened counted off the active ones.
func (t *TCP) ConnClosed() {
	if t != nil && t.active != nil {
		t.active.Dec()
	}
}

// AddBytes counts n payload bytes moved in direction d.
func (t *TCP) AddBytes(d Direction, n int) {
	if t != nil && int(d) < len(t.bytes) {
		add(t.bytes[d], n)
	}
}

func inc(c prometheus.Counter) {
	if c != nil {
		c.Inc()
	}
}

func add(c prometheus.Counter, n int) {
	if c != nil {
		c.Add(float64(n))
	}
}
