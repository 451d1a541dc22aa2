package lbtest

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Etcd is a real single-member etcd (Debian's etcd-server, 3.4) on loopback
// ports with a data directory of the test's, stopped in the test's cleanup.
//
//	e := lbtest.NewEtcd(t)
//	... endpoints = [e.Endpoint()] ...
//	e.Put("/lbctl/web/a", `{"address": "127.0.0.2:80"}`)
type Etcd struct {
	t          testing.TB
	bin        string
	dir        string
	clientPort int
	peerPort   int
	proc       *Process
}

// NewEtcd starts etcd and returns once it reports healthy. It skips the
// test without etcd (fails it under CI=true).
func NewEtcd(t testing.TB) *Etcd {
	t.Helper()
	e := &Etcd{t: t, bin: Binary(t, "etcd", "/usr/bin/etcd", "etcd-server"), dir: filepath.Join(t.TempDir(), "data")}
	for range 3 {
		e.clientPort, e.peerPort = FreePort(t), FreePort(t)
		if e.start(e.clientPort) {
			return e
		}
		// A port was taken between probing and etcd's bind: retry.
	}
	t.Fatalf("etcd did not start:\n%s", e.proc.Output())
	return nil
}

// Endpoint is the client URL, http://127.0.0.1:port.
func (e *Etcd) Endpoint() string { return fmt.Sprintf("http://127.0.0.1:%d", e.clientPort) }

// ClientPort is the port clients use.
func (e *Etcd) ClientPort() int { return e.clientPort }

// start runs etcd with clients on port and reports whether it is healthy.
func (e *Etcd) start(port int) bool {
	client := fmt.Sprintf("http://127.0.0.1:%d", port)
	peer := fmt.Sprintf("http://127.0.0.1:%d", e.peerPort)
	e.proc = Start(e.t, e.bin, "--name", "default", "--data-dir", e.dir,
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "default="+peer, "--log-level", "error")
	hc := &http.Client{Timeout: 500 * time.Millisecond}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && e.proc.Running() {
		if resp, err := hc.Get(client + "/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.proc.Stop()
	return false
}

// Stop stops etcd (by its PID) and returns once it has exited.
func (e *Etcd) Stop() { e.proc.Stop() }

// Restart starts a stopped etcd again with the same data directory and
// peer port, its clients on port (e.ClientPort() for the same one).
func (e *Etcd) Restart(port int) {
	e.t.Helper()
	e.proc.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for !e.start(port) {
		if time.Now().After(deadline) {
			e.t.Fatalf("etcd did not start again:\n%s", e.proc.Output())
		}
		time.Sleep(100 * time.Millisecond) // the old sockets may linger a moment
	}
}

// Do runs f with a client of the etcd listening for clients on port.
func (e *Etcd) Do(port int, f func(ctx context.Context, c *clientv3.Client) error) {
	e.t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{fmt.Sprintf("http://127.0.0.1:%d", port)},
		DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f(ctx, c); err != nil {
		e.t.Fatal(err)
	}
}

// Put writes the keys and values kv (key, value, key, value ...).
func (e *Etcd) Put(kv ...string) {
	e.t.Helper()
	e.Do(e.clientPort, func(ctx context.Context, c *clientv3.Client) error {
		for i := 0; i < len(kv); i += 2 {
			if _, err := c.Put(ctx, kv[i], kv[i+1]); err != nil {
				return err
			}
		}
		return nil
	})
}

// Delete deletes the keys.
func (e *Etcd) Delete(keys ...string) {
	e.t.Helper()
	e.Do(e.clientPort, func(ctx context.Context, c *clientv3.Client) error {
		for _, k := range keys {
			if _, err := c.Delete(ctx, k); err != nil {
				return err
			}
		}
		return nil
	})
}
