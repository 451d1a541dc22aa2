package server

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// TestInheritedSocketSurvivesRemoval: a socket-activated listener removed
// by one reload and brought back by the next serves again on the socket
// the service manager passed.
func TestInheritedSocketSurvivesRemoval(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Named("be"))
	inh, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer inh.Close()
	bind := inh.Addr().String()
	withAct := `
[listeners.act]
bind = "` + bind + `"
pool = "p"
`
	other := listenerTOML("other", "p", "") + poolTOML("p", "", be.Addr) + noHealth
	parse := func(s string) *config.Config {
		cfg, err := config.Parse("t.toml", []byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	srv, err := New(parse(withAct+other), Options{
		Log: zap.NewNop(), Metrics: metrics.New(prometheus.NewRegistry()),
		Inherited: map[SocketKey]InheritedSocket{NewSocketKey("tcp", inh.Addr().(*net.TCPAddr).AddrPort()): inh},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	served := func() string {
		c, err := net.DialTimeout("tcp", bind, 2*time.Second)
		if err != nil {
			return err.Error()
		}
		defer c.Close()
		b, _ := lbtest.ReadAllTimeout(t, c, 5*time.Second)
		return string(b)
	}
	if got := served(); got != "be" {
		t.Fatalf("through the inherited socket: %q", got)
	}
	if err := srv.Reload(parse(other)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Reload(parse(withAct + other)); err != nil {
		t.Fatalf("re-adding the socket-activated listener: %v", err)
	}
	if got := served(); got != "be" {
		t.Fatalf("after removal and return: %q", got)
	}
}

// TestSocketKey: a socket seen through its IPv4-mapped form keys as the
// IPv4 bind a listener writes, and logs as "proto|ip:port".
func TestSocketKey(t *testing.T) {
	mapped := NewSocketKey("tcp", netip.MustParseAddrPort("[::ffff:127.0.0.1]:8080"))
	if want := NewSocketKey("tcp", netip.MustParseAddrPort("127.0.0.1:8080")); mapped != want {
		t.Errorf("%v != %v", mapped, want)
	}
	if got := mapped.String(); got != "tcp|127.0.0.1:8080" {
		t.Errorf("String() = %q", got)
	}
	if a, b := NewSocketKey("tcp", netip.MustParseAddrPort("[::]:53")), NewSocketKey("udp", netip.MustParseAddrPort("[::]:53")); a == b {
		t.Errorf("tcp and udp keys of one address are equal")
	}
}
