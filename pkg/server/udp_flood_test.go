package server_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/admin"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/server"
	"github.com/lbctl/lbctl/pkg/udpproxy"
	"github.com/prometheus/client_golang/prometheus"
)

// The flood test runs lbctl (server and admin API) in a child process,
// this test binary re-executed, whose RLIMIT_NOFILE is low, and floods its
// UDP listener from many source ports while checking that its TCP
// listener, admin API and health checks keep working.
const (
	floodChildEnv  = "LBCTL_TEST_UDP_FLOOD_CHILD" // "tcp-backend udp-backend"
	floodLimit     = 256                          // the child's RLIMIT_NOFILE
	floodSources   = 400                          // more than the limit
	floodUnreplied = 2 * time.Second
)

// floodChild serves a TCP listener (with health checks) and a UDP listener
// whose backend never answers, and the admin API; it prints their
// addresses and runs until stdin closes.
func floodChild(tcpBackend, udpBackend string) {
	server.ChildLimitFDs(floodLimit)
	log := server.ChildLogger()
	reg := prometheus.NewRegistry()
	srv := server.ChildServer(fmt.Sprintf(`
[listeners.t]
bind = "127.0.0.1:0"
pool = "t"

[listeners.u]
protocol = "udp"
bind = "127.0.0.1:0"
pool = "u"
unreplied_timeout = %q

[pools.t]
[pools.t.health]
interval = "200ms"
timeout = "2s"
[[pools.t.backends]]
address = %q

[pools.u]
[[pools.u.backends]]
address = %q
`, floodUnreplied, tcpBackend, udpBackend), log, metrics.New(reg))
	api, err := admin.New(admin.Options{Bind: "127.0.0.1:0", Registry: reg, Server: srv, Log: log})
	if err != nil {
		server.ChildFatal(err)
	}
	go api.Serve()
	ls := srv.Listeners()
	fmt.Printf("ready %s %s %s\n", ls["t"], ls["u"], api.Addr())
	server.ChildObey(nil)
}

// TestUDPFloodLeavesDescriptors (issue 11, defect 2): a flood of datagrams
// from more source ports than the process has descriptors, toward a UDP
// listener whose backend never answers, takes only the UDP sessions' share
// (udpproxy.SessionDescriptors): the TCP listener keeps accepting and
// proxying, the admin API answers, health checks pass. The sessions end
// after unreplied_timeout, and new ones are accepted again.
func TestUDPFloodLeavesDescriptors(t *testing.T) {
	if env := os.Getenv(floodChildEnv); env != "" {
		tcpBackend, udpBackend, _ := strings.Cut(env, " ")
		floodChild(tcpBackend, udpBackend)
		return
	}
	if runtime.GOOS != "linux" {
		t.Skip("needs Linux descriptor semantics")
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < 2*floodSources {
		t.Skipf("this process needs %d descriptors for the flood's sockets (limit %d, %v)", 2*floodSources, lim.Cur, err)
	}
	tcpBe := lbtest.NewTCP(t, lbtest.Echo)
	silent := lbtest.NewUDP(t, "silent", lbtest.UDPSilent)

	child := server.StartChild(t, "^TestUDPFloodLeavesDescriptors$", floodChildEnv+"="+tcpBe.Addr+" "+silent.Addr)
	f := strings.Fields(child.WaitLine("ready "))
	tcpAddr, udpAddr, adminAddr := f[1], netip.MustParseAddrPort(f[2]), f[3]
	httpc := &http.Client{Timeout: 5 * time.Second}
	metric := func(name string, labels ...string) float64 {
		v, err := scrape(httpc, adminAddr, name, labels...)
		if err != nil {
			t.Fatalf("admin API: %v\n%s", err, child.Stderr())
		}
		return v
	}
	const share = floodLimit - udpproxy.MinDescriptorReserve // SessionDescriptors(256)
	if share != udpproxy.SessionDescriptors(floodLimit) {
		t.Fatalf("the rule changed: SessionDescriptors(%d) = %d", floodLimit, udpproxy.SessionDescriptors(floodLimit))
	}

	// The flood: one byte from each of floodSources source ports, all
	// built before it starts.
	sources := make([]*net.UDPConn, floodSources)
	for i := range sources {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sources[i] = c
	}
	one := []byte{'x'}
	for _, c := range sources {
		if _, err := c.WriteToUDPAddrPort(one, udpAddr); err != nil {
			t.Fatal(err)
		}
	}
	flooded := time.Now()
	sessions := func() float64 { return metric("lbctl_udp_sessions_active", `listener="u"`) }
	refused := func() float64 {
		return metric("lbctl_connections_rejected_total", `listener="u"`, `reason="max_connections"`)
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		s, r := sessions(), refused()
		return s+r == floodSources, fmt.Sprintf("%v sessions, %v refused, want %d in all", s, r, floodSources)
	})
	if s := sessions(); s != share {
		t.Errorf("%v sessions open, want the sessions' share of descriptors, %d", s, share)
	}

	// While the flood holds its sessions: TCP proxies, the admin API
	// answers, the health checks pass.
	for i := range 5 {
		msg := fmt.Sprintf("hello %d", i)
		if got, err := tcpEcho(tcpAddr, msg); err != nil || got != msg {
			t.Fatalf("TCP connection %d while flooded: %q, %v\n%s", i, got, err, child.Stderr())
		}
	}
	resp, err := httpc.Get("http://" + adminAddr + "/healthz")
	if err != nil {
		t.Fatalf("/healthz while flooded: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %s", resp.Status)
	}
	checked := metric("lbctl_health_checks_total", `pool="t"`, `result="success"`)
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		n := metric("lbctl_health_checks_total", `pool="t"`, `result="success"`)
		return n >= checked+3, fmt.Sprintf("%v successful checks, want %v", n, checked+3)
	})
	if n := metric("lbctl_health_checks_total", `pool="t"`, `result="failure"`); n != 0 {
		t.Errorf("%v failed health checks while flooded", n)
	}
	if up := metric("lbctl_backend_up", `pool="t"`); up != 1 {
		t.Errorf("TCP backend up = %v while flooded", up)
	}

	// The backend never answered: every session ends after
	// unreplied_timeout, and new sessions are accepted again.
	lbtest.Until(t, floodUnreplied+5*time.Second, func() (bool, string) {
		s := sessions()
		return s == 0, fmt.Sprintf("%v sessions still open %v after the flood", s, time.Since(flooded).Round(time.Millisecond))
	})
	if d := time.Since(flooded); d < floodUnreplied {
		t.Errorf("sessions ended %v after the flood, before unreplied_timeout %v", d, floodUnreplied)
	}
	received := silent.Received()
	if _, err := sources[0].WriteToUDPAddrPort(one, udpAddr); err != nil {
		t.Fatal(err)
	}
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		return silent.Received() == received+1 && sessions() == 1,
			fmt.Sprintf("backend received %d (want %d), %v sessions open", silent.Received(), received+1, sessions())
	})
	log := child.Stderr()
	if n := strings.Count(log, "new sessions are refused"); n != 1 {
		t.Errorf("the refusals were logged %d times, want once per episode:\n%s", n, log)
	}
	if !strings.Contains(log, "new sessions accepted again") {
		t.Errorf("the recovery was not logged:\n%s", log)
	}
	if strings.Contains(log, "accept failed") {
		t.Errorf("the TCP listener failed to accept:\n%s", log)
	}
}

// tcpEcho sends msg through the listener at addr to an echo backend and
// returns what came back.
func tcpEcho(addr, msg string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	b := make([]byte, len(msg))
	_, err = io.ReadFull(c, b)
	return string(b), err
}

// scrape reads one sample from the admin API's /metrics: the sum of the
// samples of name whose labels include every one given.
func scrape(c *http.Client, adminAddr, name string, labels ...string) (float64, error) {
	resp, err := c.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	lines := bufio.NewScanner(resp.Body)
	lines.Buffer(make([]byte, 64<<10), 1<<20)
	for lines.Scan() {
		l := lines.Text()
		if !strings.HasPrefix(l, name+"{") {
			continue
		}
		labelSet, value, ok := strings.Cut(l[len(name):], " ")
		if !ok {
			continue
		}
		match := true
		for _, want := range labels {
			match = match && strings.Contains(labelSet, want)
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", l, err)
		}
		sum += v
	}
	return sum, lines.Err()
}
