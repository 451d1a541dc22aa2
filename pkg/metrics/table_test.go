package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestPoolTableInfo: one series per maglev pool, for the digest in
// service; a new digest replaces the old one, and a pool that goes away
// (or stops being maglev) leaves none.
func TestPoolTableInfo(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.SetPoolTable("web", "00112233aabbccdd")
	m.SetPoolTable("dns", "0123456789abcdef")
	wantSeries(t, reg,
		"lbctl_pool_table_info{digest=00112233aabbccdd,pool=web} 1",
		"lbctl_pool_table_info{digest=0123456789abcdef,pool=dns} 1")
	m.SetPoolTable("web", "ffeeddccbbaa9988")
	wantSeries(t, reg,
		"lbctl_pool_table_info{digest=ffeeddccbbaa9988,pool=web} 1",
		"lbctl_pool_table_info{digest=0123456789abcdef,pool=dns} 1")
	m.SetPoolTable("web", "")
	m.ForgetPoolTable("dns")
	wantSeries(t, reg)
}
