package metrics

import "github.com/prometheus/client_golang/prometheus"

// tables holds the series of pools' table digests.
type tables struct {
	// PoolTableInfo is lbctl_pool_table_info{pool, digest}, 1 for the
	// table digest of each pool in service (for maglev, of its lookup
	// table): instances that should agree show the same digest, so an
	// alert can compare them.
	PoolTableInfo *prometheus.GaugeVec
}

func (m *Metrics) newTables(reg prometheus.Registerer) {
	m.PoolTableInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "lbctl_pool_table_info",
		Help: "1 for the table digest of a pool in service (maglev: of its lookup table); equal on every instance with the same pool.",
	}, []string{"pool", "digest"})
	reg.MustRegister(m.PoolTableInfo)
}

// SetPoolTable shows digest as pool's table in service, deleting the
// series of the digest it had before; an empty digest only deletes.
func (m *Metrics) SetPoolTable(pool, digest string) {
	m.PoolTableInfo.DeletePartialMatch(prometheus.Labels{"pool": pool})
	if digest != "" {
		m.PoolTableInfo.WithLabelValues(pool, digest).Set(1)
	}
}

// ForgetPoolTable deletes the table series of a pool that went away.
func (m *Metrics) ForgetPoolTable(pool string) {
	m.PoolTableInfo.DeletePartialMatch(prometheus.Labels{"pool": pool})
}
