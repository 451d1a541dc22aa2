package server

import (
	"slices"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestSeriesFollowProtocol: a TCP listener exports connection series and
// no lbctl_udp_* series; a UDP listener the other way round.
func TestSeriesFollowProtocol(t *testing.T) {
	tcpBE := lbtest.NewTCP(t, lbtest.Named("t"))
	udpBE := lbtest.NewUDP(t, "u", lbtest.UDPEcho)
	h := startServer(t, listenerTOML("l", "p", "")+poolTOML("p", "", tcpBE.Addr)+noHealth+
		udpListenerTOML("u", "q", "")+poolTOML("q", "", udpBE.Addr))
	c := h.dial("l")
	if b, _ := lbtest.ReadAllTimeout(t, c, 5*time.Second); string(b) != "t" {
		t.Fatalf("tcp: %q", b)
	}
	if got := udpExchange(udpClient(t), h.udpAddr("u"), []byte("x"), 3*time.Second); string(got) != "x" {
		t.Fatalf("udp: %q", got)
	}
	for name, c := range map[string]struct {
		n    int
		want int
	}{
		"lbctl_connections_total (tcp only)":        {testutil.CollectAndCount(h.m.ConnectionsTotal), 1},
		"lbctl_connections_active (tcp only)":       {testutil.CollectAndCount(h.m.ConnectionsActive), 1},
		"lbctl_udp_sessions_active (udp only)":      {testutil.CollectAndCount(h.m.UDPSessionsActive), 1},
		"lbctl_udp_datagrams_total (udp, in+out)":   {testutil.CollectAndCount(h.m.UDPDatagrams), 2},
		"lbctl_bytes_total (both, in+out)":          {testutil.CollectAndCount(h.m.Bytes), 4},
		"lbctl_backend_connect_duration (tcp only)": {testutil.CollectAndCount(h.m.ConnectDuration), 1},
	} {
		if c.n != c.want {
			t.Errorf("%s: %d series, want %d", name, c.n, c.want)
		}
	}
	// Rejection reasons: each listener shows those its protocol can produce,
	// at zero from the start; a UDP listener never reads a PROXY header.
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byListener := map[string][]string{}
	for _, mf := range mfs {
		if mf.GetName() != "lbctl_connections_rejected_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			byListener[l["listener"]] = append(byListener[l["listener"]], l["reason"])
		}
	}
	reasons := func(listener string) []string {
		slices.Sort(byListener[listener])
		return byListener[listener]
	}
	all := []string{"acl", "backend_unavailable", "client_limit", "max_connections", "no_backend", "no_route", "proxy_protocol", "rate_limit", "tls_inspect"}
	tcpOnly := []string{"no_route", "proxy_protocol", "tls_inspect"}
	if got := reasons("l"); !slices.Equal(got, all) {
		t.Errorf("tcp listener rejection reasons %v, want %v", got, all)
	}
	if got, want := reasons("u"), slices.DeleteFunc(slices.Clone(all), func(r string) bool { return slices.Contains(tcpOnly, r) }); !slices.Equal(got, want) {
		t.Errorf("udp listener rejection reasons %v, want %v", got, want)
	}
}
