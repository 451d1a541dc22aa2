package server

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) {
	// GoBGP's main loop never returns: one per BGP speaker remains (pkg/bgp).
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/osrg/gobgp/v3/pkg/server.(*BgpServer).Serve"),
		goleak.IgnoreAnyFunction("github.com/lbctl/lbctl/pkg/tcpproxy.(*engine).run")) // the TCP event loops live as long as the process
}

// harness is a running Server built from a TOML snippet.
type harness struct {
	t   testing.TB
	srv *Server
	m   *metrics.Metrics
	reg *prometheus.Registry
}

// cleanupDrain is the shutdown deadline of the harness's cleanup. Open UDP
// sessions hold a shutdown until they end or the deadline passes, and a
// test done with its connections need not wait for that; the tests of
// draining call Shutdown themselves, with the deadline they test.
const cleanupDrain = 100 * time.Millisecond

// startServer parses toml (listeners bind 127.0.0.1:0), starts a server,
// and shuts it down in t.Cleanup (cleanupDrain).
func startServer(t testing.TB, toml string) *harness {
	t.Helper()
	return startServerLog(t, toml, nil)
}

// startServerLog is startServer whose log entries also go to core when it
// is not nil (a zaptest/observer core, to assert on what is logged).
func startServerLog(t testing.TB, toml string, core zapcore.Core) *harness {
	t.Helper()
	return startWith(t, toml, core, Options{})
}

// startWith starts a server from toml with opts (Log and Metrics are the
// harness's), logging to the test when verbose and to core when not nil,
// and shuts it down at the end of the test.
func startWith(t testing.TB, toml string, core zapcore.Core, opts Options) *harness {
	t.Helper()
	cfg, err := config.Parse("test.toml", []byte(toml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	reg := prometheus.NewRegistry()
	h := &harness{t: t, m: metrics.New(reg), reg: reg}
	log := zap.NewNop()
	if tt, ok := t.(*testing.T); ok && testing.Verbose() {
		log = zaptest.NewLogger(tt, zaptest.Level(zap.InfoLevel))
	}
	if core != nil {
		log = zap.New(zapcore.NewTee(log.Core(), core))
	}
	opts.Log, opts.Metrics = log, h.m
	h.srv, err = New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Start(); err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupDrain)
		defer cancel()
		h.srv.Shutdown(ctx)
	})
	return h
}

// addr is the bound address of the named listener.
func (h *harness) addr(name string) string {
	h.t.Helper()
	a, ok := h.srv.Listeners()[name]
	if !ok {
		h.t.Fatalf("no listener %q", name)
	}
	return a.String()
}

func (h *harness) dial(name string) *net.TCPConn {
	h.t.Helper()
	c, err := net.DialTimeout("tcp", h.addr(name), 2*time.Second)
	if err != nil {
		h.t.Fatalf("dial %s: %v", name, err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// counter reads one child of a metric vector.
func counter(c prometheus.Collector) float64 {
	return testutil.ToFloat64(c)
}

// poolTOML renders a pool with the given backends (address or
// address:weight pairs) and extra pool keys.
func poolTOML(name string, extra string, backends ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[pools.%s]\n%s\n", name, extra)
	for _, be := range backends {
		addr, weight, _ := strings.Cut(be, "=")
		fmt.Fprintf(&b, "[[pools.%s.backends]]\naddress = %q\n", name, addr)
		if weight != "" {
			fmt.Fprintf(&b, "weight = %s\n", weight)
		}
	}
	return b.String()
}

// listenerTOML renders a TCP listener on an ephemeral loopback port.
func listenerTOML(name, pool, extra string) string {
	return fmt.Sprintf("[listeners.%s]\nbind = \"127.0.0.1:0\"\npool = %q\n%s\n", name, pool, extra)
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

func contextBackground() context.Context { return context.Background() }
