package tcpproxy_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

// The event loops (engine_linux.go) live as long as the process; they are
// made before any test counts descriptors.
func TestMain(m *testing.M) {
	if err := tcpproxy.StartEngines(); err != nil {
		panic(err)
	}
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/lbctl/lbctl/pkg/tcpproxy.(*engine).run"))
}

// frontend runs an accept loop that hands every connection to p, on
// network/addr, until the test ends.
func frontend(tb testing.TB, addr string, p *tcpproxy.Proxy) string {
	tb.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.(*net.TCPListener).AcceptTCP()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				serve(p, c)
			}()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// serve proxies c through p and returns how the connection ended.
func serve(p *tcpproxy.Proxy, c *net.TCPConn) tcpproxy.End {
	ended := make(chan tcpproxy.End, 1)
	p.Start(context.Background(), c, c.RemoteAddr().(*net.TCPAddr).AddrPort(), func(e tcpproxy.End) { ended <- e })
	return <-ended
}

// newProxy builds a round-robin Proxy over backend addresses.
func newProxy(tb testing.TB, idle time.Duration, addrs ...string) *tcpproxy.Proxy {
	tb.Helper()
	m := metrics.New(prometheus.NewRegistry())
	var members []balancer.Member
	targets := map[*balancer.Backend]*tcpproxy.Target{}
	for _, a := range addrs {
		b := balancer.NewBackend(a)
		members = append(members, balancer.Member{Backend: b, Weight: 1})
		targets[b] = &tcpproxy.Target{Addr: a, Metrics: m.ForTCP("l", "p", a)}
	}
	pool, err := balancer.New("round-robin", members)
	if err != nil {
		tb.Fatal(err)
	}
	return tcpproxy.New(tcpproxy.Config{
		Listener: "l", PoolName: "p", Pool: pool, Targets: targets,
		ConnectTimeout: time.Second, Retries: 1, IdleTimeout: idle,
		Rejections: m.ForListener("tcp", "l"),
	})
}

// TestIPv6 proxies between IPv6 loopback client, listener and backend.
func TestIPv6(t *testing.T) {
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skip("no IPv6 loopback:", err)
	} else {
		ln.Close()
	}
	be := lbtest.NewTCPAt(t, "[::1]:0", lbtest.Echo)
	addr := frontend(t, "[::1]:0", newProxy(t, 0, be.Addr))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("over v6"))
	c.(*net.TCPConn).CloseWrite()
	got, err := lbtest.ReadAllTimeout(t, c, 5*time.Second)
	if err != nil || string(got) != "over v6" {
		t.Fatalf("got %q, %v", got, err)
	}
	if ap := netip.MustParseAddrPort(c.LocalAddr().String()); !ap.Addr().Is6() {
		t.Fatalf("client is not IPv6: %v", ap)
	}
}

// TestEndReasons checks the End that Serve reports for each way a
// connection can finish.
func TestEndReasons(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	silent := lbtest.NewTCP(t, lbtest.Silent)
	for _, tc := range []struct {
		name    string
		backend string
		idle    time.Duration
		client  func(c *net.TCPConn)
		want    tcpproxy.End
	}{
		{"clean close both ways", echo.Addr, 0, func(c *net.TCPConn) {
			c.Write([]byte("x"))
			c.CloseWrite()
			io.Copy(io.Discard, c)
		}, tcpproxy.EndDone},
		{"idle timeout", silent.Addr, 100 * time.Millisecond, func(c *net.TCPConn) {
			io.Copy(io.Discard, c)
		}, tcpproxy.EndIdle},
		{"client reset", silent.Addr, 0, func(c *net.TCPConn) {
			c.Write([]byte("x"))
			c.SetLinger(0)
		}, tcpproxy.EndClientError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProxy(t, tc.idle, tc.backend)
			ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			ends := make(chan tcpproxy.End, 1)
			go func() {
				c, err := ln.AcceptTCP()
				if err != nil {
					ends <- 0
					return
				}
				ends <- serve(p, c)
			}()
			c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			tc.client(c)
			c.Close()
			select {
			case got := <-ends:
				if got != tc.want {
					t.Fatalf("end %q, want %q", got, tc.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Serve did not return")
			}
		})
	}
}

// BenchmarkThroughput moves b.N chunks of 1 MiB through the proxy to a
// sink: the bulk (splice) path.
func BenchmarkThroughput(b *testing.B) {
	for _, idle := range []time.Duration{0, 10 * time.Minute} {
		b.Run("idle_timeout="+idle.String(), func(b *testing.B) {
			sink := lbtest.NewTCP(b, func(c *net.TCPConn) { io.Copy(io.Discard, c) })
			addr := frontend(b, "127.0.0.1:0", newProxy(b, idle, sink.Addr))
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			chunk := make([]byte, 1<<20)
			b.SetBytes(int64(len(chunk)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRequestResponse is one 64-byte request and 64-byte reply per
// op on a persistent connection: the small-message path. allocs/op must
// stay 0 (nothing is allocated per read).
func BenchmarkRequestResponse(b *testing.B) {
	for _, idle := range []time.Duration{0, 10 * time.Minute} {
		b.Run("idle_timeout="+idle.String(), func(b *testing.B) {
			echo := lbtest.NewTCP(b, echo64)
			addr := frontend(b, "127.0.0.1:0", newProxy(b, idle, echo.Addr))
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := make([]byte, 64)
			reply := make([]byte, 64)
			// Warm up the pools.
			for i := 0; i < 100; i++ {
				c.Write(msg)
				io.ReadFull(c, reply)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, reply); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDirectRequestResponse is the same exchange without the proxy,
// the baseline for the added latency.
func BenchmarkDirectRequestResponse(b *testing.B) {
	echo := lbtest.NewTCP(b, echo64)
	c, err := net.Dial("tcp", echo.Addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg, reply := make([]byte, 64), make([]byte, 64)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.Write(msg)
		io.ReadFull(c, reply)
	}
}

// echo64 echoes 64-byte messages, one at a time, until the peer closes.
func echo64(c *net.TCPConn) {
	buf := make([]byte, 64)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}
