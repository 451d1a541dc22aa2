package server

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// TestStartBindFailureLeavesNothingBound: when one listener cannot bind,
// Start fails promptly and the listeners it had already bound are closed.
func TestStartBindFailureLeavesNothingBound(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free := lbtest.ClosedPort(t)
	cfg, err := config.Parse("t.toml", []byte(`
[listeners.a]
bind = "`+free+`"
pool = "p"
[listeners.b]
bind = "`+taken.Addr().String()+`"
pool = "p"
[pools.p]
[[pools.p.backends]]
address = "127.0.0.1:9"
[pools.p.health]
check = "none"
`))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(cfg, Options{Log: zap.NewNop(), Metrics: metrics.New(prometheus.NewRegistry())})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Start() }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "listener b") {
			t.Fatalf("Start: %v, want an error naming listener b", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Start hung after a bind failure")
	}
	ln, err := net.Listen("tcp", free)
	if err != nil {
		t.Fatalf("listener a's address still bound after the failed start: %v", err)
	}
	ln.Close()
	srv.Shutdown(contextBackground())
}
