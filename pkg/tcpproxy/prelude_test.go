package tcpproxy_test

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/proxyheader"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestStartWithPrelude: the bytes a listener read first reach the backend
// first, after the PROXY v2 header that carries the server name as an
// AUTHORITY TLV, also when the first backend tried fails; they count as
// bytes in.
func TestStartWithPrelude(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	dead := lbtest.NewTCP(t, lbtest.Echo)
	dead.Close()
	m := metrics.New(prometheus.NewRegistry())
	bDead, bEcho := balancer.NewBackend(dead.Addr), balancer.NewBackend(echo.Addr)
	pool, err := balancer.New("round-robin", []balancer.Member{{Backend: bDead, Weight: 1}, {Backend: bEcho, Weight: 1}})
	if err != nil {
		t.Fatal(err)
	}
	p := tcpproxy.New(tcpproxy.Config{
		Listener: "l", PoolName: "p", Pool: pool, ConnectTimeout: time.Second, Retries: 1,
		Targets: map[*balancer.Backend]*tcpproxy.Target{
			bDead: {Addr: dead.Addr, Metrics: m.ForTCP("l", "p", dead.Addr)},
			bEcho: {Addr: echo.Addr, Metrics: m.ForTCP("l", "p", echo.Addr)},
		},
		Rejections: m.ForListener("tcp", "l"),
		HeaderFunc: func(client, local netip.AddrPort) []byte {
			return proxyheader.AppendV2(nil, client, local, false)
		},
		AuthorityTLV: true,
	})
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ended := make(chan tcpproxy.End, 2)
	for range 2 { // the first connection's pick is the dead backend, or the second one's is
		c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		pre := &tcpproxy.Prelude{Data: []byte("HELLO-BYTES"), SNI: "api.example.com"}
		p.StartWith(context.Background(), s, s.RemoteAddr().(*net.TCPAddr).AddrPort(), pre, func(e tcpproxy.End) { ended <- e })
		c.Write([]byte("+rest"))
		c.CloseWrite()
		got, err := lbtest.ReadAllTimeout(t, c, 10*time.Second)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(bytes.NewReader(got))
		h, err := proxyproto.Read(r)
		if err != nil {
			t.Fatalf("no PROXY header first: %v (%q)", err, got)
		}
		tlvs, _ := h.TLVs()
		if len(tlvs) != 1 || tlvs[0].Type != proxyproto.PP2_TYPE_AUTHORITY || string(tlvs[0].Value) != "api.example.com" {
			t.Fatalf("TLVs %+v", tlvs)
		}
		rest := make([]byte, r.Buffered())
		r.Read(rest)
		if string(rest) != "HELLO-BYTES+rest" {
			t.Fatalf("after the header: %q", rest)
		}
		if e := <-ended; e != tcpproxy.EndDone {
			t.Fatalf("end %v", e)
		}
	}
	in := testutil.ToFloat64(m.Bytes.WithLabelValues("l", "p", echo.Addr, "in"))
	if in != 2*float64(len("HELLO-BYTES+rest")) {
		t.Fatalf("bytes in = %v, want the prelude and the rest, twice", in)
	}
	if n := testutil.ToFloat64(m.ConnectErrors.WithLabelValues("p", dead.Addr)); n != 1 {
		t.Fatalf("connect errors to the dead backend = %v, want 1", n)
	}
}
