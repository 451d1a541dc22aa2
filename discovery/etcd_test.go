package discovery

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcdApply is the etcd source's promise: a change applies within 2s, and
// so does the set after a restarted etcd answers again.
const etcdApply = 2 * time.Second

// Keys under the prefix are the set and it follows puts and deletes within
// 2s; a malformed value is a failure until fixed; an empty prefix is an
// empty set; etcd stopped, errors and never a set; started again (after
// changes and a compaction the source could not see), the set follows
// again within 2s.
func TestEtcdSource(t *testing.T) {
	t.Parallel()
	e := lbtest.NewEtcd(t)
	e.Put("/lbctl/web/a", "127.0.0.1:8001",
		"/lbctl/web/b", `{"address": "127.0.0.2:8002", "weight": 3, "backup": true}`,
		"/lbctl/web2/x", "127.0.0.9:8009", // beside the prefix, not under it
	)
	r := run(t, NewEtcd(EtcdOptions{Endpoints: []string{e.Endpoint()}, Prefix: "/lbctl/web/"}))
	r.waitSet(t, 5*time.Second, "127.0.0.1:8001 w=1", "127.0.0.2:8002 w=3 backup")

	t.Run("put", func(t *testing.T) {
		e.Put("/lbctl/web/c", "[::1]:8003")
		d := r.waitSet(t, etcdApply, "127.0.0.1:8001 w=1", "127.0.0.2:8002 w=3 backup", "[::1]:8003 w=1")
		t.Logf("seen after %v", d)
	})
	t.Run("delete", func(t *testing.T) {
		e.Delete("/lbctl/web/a")
		d := r.waitSet(t, etcdApply, "127.0.0.2:8002 w=3 backup", "[::1]:8003 w=1")
		t.Logf("seen after %v", d)
	})
	t.Run("malformed value, then fixed", func(t *testing.T) {
		m := r.mark()
		e.Put("/lbctl/web/d", "web-4:8004")
		err, failed := r.waitErr(t, etcdApply, m, "key /lbctl/web/d: address")
		t.Logf("error: %v", err)
		r.errorsOnly(t, failed)
		e.Put("/lbctl/web/d", "127.0.0.4:8004")
		r.waitSet(t, etcdApply, "127.0.0.2:8002 w=3 backup", "127.0.0.4:8004 w=1", "[::1]:8003 w=1")
	})
	t.Run("empty prefix empties the source", func(t *testing.T) {
		e.Delete("/lbctl/web/b", "/lbctl/web/c", "/lbctl/web/d")
		r.waitSet(t, etcdApply)
		e.Put("/lbctl/web/e", "127.0.0.5:8005")
		r.waitSet(t, etcdApply, "127.0.0.5:8005 w=1")
	})
	t.Run("stopped, changed unseen, restarted", func(t *testing.T) {
		m := r.mark()
		e.Stop()
		err, failed := r.waitErr(t, 10*time.Second, m, "etcd "+e.Endpoint())
		t.Logf("error: %v", err)
		// While etcd is away from the source's endpoint, it changes and
		// compacts its history: only a fresh read can see that.
		other := lbtest.FreePort(t)
		e.Restart(other)
		e.Do(other, func(ctx context.Context, c *clientv3.Client) error {
			if _, err := c.Put(ctx, "/lbctl/web/f", "127.0.0.6:8006"); err != nil {
				return err
			}
			resp, err := c.Delete(ctx, "/lbctl/web/e")
			if err != nil {
				return err
			}
			_, err = c.Compact(ctx, resp.Header.Revision)
			return err
		})
		e.Stop()
		lbtest.Until(t, 10*time.Second, func() (bool, string) {
			n := len(r.since(failed))
			return n >= 3, fmt.Sprintf("%d failures reported since etcd went away, want one per attempt", n)
		})
		r.errorsOnly(t, failed)
		e.Restart(e.ClientPort())
		d := r.waitSet(t, etcdApply, "127.0.0.6:8006 w=1")
		t.Logf("followed again %v after etcd answered", d)
		e.Put("/lbctl/web/g", "127.0.0.7:8007")
		r.waitSet(t, etcdApply, "127.0.0.6:8006 w=1", "127.0.0.7:8007 w=1")
	})
}

// An etcd that is not there at start: a failure per attempt, never a set.
func TestEtcdSourceUnreachableAtStart(t *testing.T) {
	t.Parallel()
	port := lbtest.FreePort(t)
	r := run(t, NewEtcd(EtcdOptions{Endpoints: []string{fmt.Sprintf("http://127.0.0.1:%d", port)},
		Prefix: "/lbctl/web/", DialTimeout: 500 * time.Millisecond}))
	r.waitErr(t, 5*time.Second, 0, "context deadline exceeded")
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		n := len(r.since(0))
		return n >= 3, fmt.Sprintf("%d failures reported, want one per attempt", n)
	})
	r.errorsOnly(t, 0)
}

func TestEtcdSourceNeedsPrefix(t *testing.T) {
	r := run(t, NewEtcd(EtcdOptions{Endpoints: []string{"http://127.0.0.1:1"}}))
	r.waitErr(t, 5*time.Second, 0, "prefix is required")
}

// etcd goes away for less than the source's request timeout, so the source
// never reports a failure; meanwhile its history is changed and compacted.
// The client's watch resumes, is told its revision was compacted, and the
// source reads the prefix afresh.
func TestEtcdSourceWatchCompacted(t *testing.T) {
	t.Parallel()
	e := lbtest.NewEtcd(t)
	e.Put("/lbctl/web/a", "127.0.0.1:8001")
	r := run(t, NewEtcd(EtcdOptions{Endpoints: []string{e.Endpoint()}, Prefix: "/lbctl/web/", DialTimeout: time.Minute}))
	r.waitSet(t, 5*time.Second, "127.0.0.1:8001 w=1")
	m := r.mark()
	e.Stop()
	other := lbtest.FreePort(t)
	e.Restart(other)
	e.Do(other, func(ctx context.Context, c *clientv3.Client) error {
		if _, err := c.Put(ctx, "/lbctl/web/b", "127.0.0.2:8002"); err != nil {
			return err
		}
		resp, err := c.Put(ctx, "/lbctl/web/c", "127.0.0.3:8003")
		if err != nil {
			return err
		}
		// The put of b is gone from the history: a watch resumed at it
		// is compacted.
		_, err = c.Compact(ctx, resp.Header.Revision)
		return err
	})
	e.Stop()
	e.Restart(e.ClientPort())
	d := r.waitSet(t, etcdApply, "127.0.0.1:8001 w=1", "127.0.0.2:8002 w=1", "127.0.0.3:8003 w=1")
	t.Logf("followed again %v after etcd answered", d)
	for _, res := range r.since(m) {
		if res.err != nil {
			t.Logf("a failure was reported (etcd was away longer than expected): %v", res.err)
		}
	}
}
