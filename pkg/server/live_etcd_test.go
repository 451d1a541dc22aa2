package server

import (
	"fmt"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// TestEtcdSourceLive: a pool fed by a real etcd prefix. A put serves within
// 2s, a delete takes no new connection within 2s; etcd stopped, the pool is
// unchanged and the failure metric moves; etcd restarted on its ports with
// its data, a put made after the restart serves within 2s.
func TestEtcdSourceLive(t *testing.T) {
	t.Parallel()
	const apply = 2 * time.Second // the etcd source's promise
	a := lbtest.NewTCP(t, namedEcho("a"))
	b := lbtest.NewTCP(t, namedEcho("b"))
	c := lbtest.NewTCP(t, namedEcho("c"))
	e := lbtest.NewEtcd(t)
	e.Put("/lbctl/web/a", a.Addr)
	h := startServer(t, listenerTOML("l", "p", "")+fmt.Sprintf(`[pools.p]
[[pools.p.discover]]
type = "etcd"
endpoints = [%q]
prefix = "/lbctl/web/"
`, e.Endpoint())+noHealth)
	source := "etcd:/lbctl/web/"
	d := waitServed(t, h, "l", "a", time.Now(), 5*time.Second)
	t.Logf("a (at start) served after %v", d)

	e.Put("/lbctl/web/b", fmt.Sprintf(`{"address": %q, "weight": 2}`, b.Addr))
	d = waitServed(t, h, "l", "b", time.Now(), apply)
	t.Logf("put b served after %v (promise %v)", d, apply)
	if st, ok := backendOf(h, "p", b.Addr); !ok || st.Source != source || st.Weight != 2 {
		t.Fatalf("b in status: %+v %v", st, ok)
	}

	e.Delete("/lbctl/web/a")
	deleted := time.Now()
	lbtest.Until(t, apply+liveMargin, func() (bool, string) {
		st, ok := backendOf(h, "p", a.Addr)
		return !ok || st.Removing, fmt.Sprintf("a: %+v %v", st, ok)
	})
	t.Logf("deleted a out of service after %v (promise %v)", time.Since(deleted), apply)
	acceptedA := a.Accepted()
	onlyServedBy(t, h, "l", "b", 10)
	if n := a.Accepted(); n != acceptedA {
		t.Fatalf("a accepted %d connections after its delete", n-acceptedA)
	}

	// etcd stopped: the pool is unchanged, the failure metric moves.
	failures := h.m.DiscoveryRefreshes.WithLabelValues("p", source, "failure")
	before := counter(failures)
	e.Stop()
	lbtest.Until(t, 15*time.Second, func() (bool, string) {
		n := counter(failures)
		return n > before, fmt.Sprintf("failures %v, was %v", n, before)
	})
	lbtest.Eventually(t, 5*time.Second, func() bool {
		_, ok := backendOf(h, "p", a.Addr)
		return !ok
	}, "a still in status after its drain")
	if st := poolStatus(h, "p"); len(st.Backends) != 1 || st.Backends[0].Address != b.Addr || st.Backends[0].Removing {
		t.Fatalf("pool while etcd is down: %+v", st.Backends)
	}
	onlyServedBy(t, h, "l", "b", 5)

	// etcd back on its ports with its data: the source follows again.
	e.Restart(e.ClientPort())
	e.Put("/lbctl/web/c", c.Addr)
	d = waitServed(t, h, "l", "c", time.Now(), apply)
	t.Logf("put c after etcd's restart served after %v (promise %v)", d, apply)
	if st := poolStatus(h, "p"); len(st.Backends) != 2 {
		t.Fatalf("pool after etcd's restart: %+v, want b and c", st.Backends)
	}
}
