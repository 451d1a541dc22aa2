package server

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/lbtest"
)

// TestSRVSourceLive: a pool fed by 200 SRV targets of a real dnsmasq, 100
// at priority 10 (weights 1 to 4) and 100 at priority 20. While a primary
// is eligible only primaries serve, each its weight's share within 5% over
// 20,000 real connections; all primaries disabled, the backups serve.
// Every target is 127.0.0.1 at its own port (SRV carries the port).
func TestSRVSourceLive(t *testing.T) {
	t.Parallel()
	const n, conns = 200, 20000
	closeAtOnce := func(*net.TCPConn) {}
	backends := make([]*lbtest.Backend, n)
	weights := make(map[string]int, n) // primaries' weights by address
	var srv []string
	for i := range n {
		backends[i] = lbtest.NewTCP(t, closeAtOnce)
		prio, weight := 10, i%4+1
		if i >= n/2 {
			prio, weight = 20, 1
		} else {
			weights[backends[i].Addr] = weight
		}
		srv = append(srv, fmt.Sprintf("_web._tcp.lbctl.test,t.lbctl.test,%d,%d,%d", backends[i].Port(), prio, weight))
	}
	ns := lbtest.NewDnsmasq(t, "127.0.0.1 t.lbctl.test", srv...)
	h := startServer(t, listenerTOML("l", "p", "")+fmt.Sprintf(`[pools.p]
[[pools.p.discover]]
type = "srv"
name = "_web._tcp.lbctl.test"
resolver = %q
interval = "1s"
`, ns.Addr())+noHealth)
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		got := len(poolStatus(h, "p").Backends)
		return got == n, fmt.Sprintf("%d backends in the pool, want %d", got, n)
	})
	for _, st := range poolStatus(h, "p").Backends {
		w, primary := weights[st.Address]
		if st.Backup == primary || (primary && st.Weight != w) || st.Source != "srv:_web._tcp.lbctl.test" {
			t.Fatalf("backend %+v: want primary %v weight %d", st, primary, w)
		}
	}

	start := time.Now()
	if failed := connectMany(t, h.addr("l"), conns, 8); failed > 0 {
		t.Fatalf("%d of %d connections failed", failed, conns)
	}
	t.Logf("%d real connections in %v", conns, time.Since(start))
	totalWeight := 0
	for _, w := range weights {
		totalWeight += w
	}
	worst := 0.0
	for _, st := range poolStatus(h, "p").Backends {
		w, primary := weights[st.Address]
		if !primary {
			if st.Total != 0 {
				t.Errorf("backup %s served %d connections while primaries were eligible", st.Address, st.Total)
			}
			continue
		}
		want := float64(conns) * float64(w) / float64(totalWeight)
		dev := (float64(st.Total) - want) / want
		worst = max(worst, dev, -dev)
		if dev > 0.05 || dev < -0.05 {
			t.Errorf("primary %s weight %d served %d connections, want %.0f ± 5%%", st.Address, w, st.Total, want)
		}
	}
	t.Logf("worst deviation of a primary from its weight's share: %.2f%%", worst*100)

	// Every primary disabled: the backups serve, the primaries take nothing.
	before := map[string]uint64{}
	for _, st := range poolStatus(h, "p").Backends {
		before[st.Address] = st.Total
	}
	for addr := range weights {
		if _, err := h.srv.SetBackendAdmin("p", addr, balancer.Disabled); err != nil {
			t.Fatal(err)
		}
	}
	const backupConns = 400
	if failed := connectMany(t, h.addr("l"), backupConns, 8); failed > 0 {
		t.Fatalf("%d of %d connections failed with the primaries disabled", failed, backupConns)
	}
	for _, st := range poolStatus(h, "p").Backends {
		got := st.Total - before[st.Address]
		if _, primary := weights[st.Address]; primary && got != 0 {
			t.Errorf("disabled primary %s served %d connections", st.Address, got)
		} else if !primary && got != backupConns/(n/2) {
			t.Errorf("backup %s served %d of %d connections over %d equal backups, want %d", st.Address, got, backupConns, n/2, backupConns/(n/2))
		}
	}
}

// connectMany opens total connections to addr, workers at a time, each
// read to its end (the backend closes at once), and returns how many
// failed: refused, reset, or closed before the backend's end.
func connectMany(t *testing.T, addr string, total, workers int) int {
	t.Helper()
	var next, failed atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			buf := make([]byte, 16)
			for next.Add(1) <= int64(total) {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err == nil {
					c.SetDeadline(time.Now().Add(10 * time.Second))
					var n int
					n, err = c.Read(buf)
					if errors.Is(err, io.EOF) && n == 0 {
						err = nil
					}
					c.Close()
				}
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		t.Logf("first failure: %v", firstErr)
	}
	return int(failed.Load())
}
