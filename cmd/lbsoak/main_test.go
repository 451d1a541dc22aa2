package main

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestConfigVariantsLoad: every configuration a reload may write is valid.
func TestConfigVariantsLoad(t *testing.T) {
	c := configFile{admin: "127.0.0.1:9900", tcpBind: "127.0.0.1:8080", udpBind: "127.0.0.1:8053",
		tcp: []string{"127.0.0.1:9001", "127.0.0.1:9002"}, udp: []string{"127.0.0.1:9101", "127.0.0.1:9102"}}
	for v := 0; v < 6; v++ {
		if _, err := config.Parse("soak.toml", []byte(c.render(v))); err != nil {
			t.Fatalf("variant %d: %v\n%s", v, err, c.render(v))
		}
	}
}

func TestSumMetric(t *testing.T) {
	text := `# HELP go_goroutines Number of goroutines.
go_goroutines 17
go_goroutines_total_bogus 99
lbctl_config_reloads_total{result="failure"} 0
lbctl_config_reloads_total{result="success"} 3
lbctl_connections_active{backend="a",listener="tcp",pool="tcp"} 2
lbctl_connections_active{backend="b",listener="tcp",pool="tcp"} 5
`
	for _, tc := range []struct {
		name, labels string
		want         float64
	}{
		{"go_goroutines", "", 17},
		{"lbctl_config_reloads_total", `result="success"`, 3},
		{"lbctl_connections_active", "", 7},
		{"lbctl_connections_active", `backend="b"`, 5},
		{"lbctl_connections_active", `backend="c"`, 0},
	} {
		if got := sumMetric(text, tc.name, tc.labels); got != tc.want {
			t.Errorf("sumMetric(%s, %s) = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}

// TestBackendsTagAndDie: streams through a backend verify and carry its
// tag; a kill resets them and marks the generation killed; a restart
// serves again on the same address under a new generation.
func TestBackendsTagAndDie(t *testing.T) {
	b, err := startTCPBackend(3)
	if err != nil {
		t.Fatal(err)
	}
	defer b.kill()
	r := stream(b.addr, 3<<20, 42, 10*time.Second)
	if r.err != nil || r.corrupt != "" || r.tag != (tag{3, 0}) {
		t.Fatalf("stream: %+v", r)
	}
	if b.killed(0) {
		t.Fatal("generation 0 reported killed while up")
	}
	b.kill()
	if !b.killed(0) || !b.isDown() {
		t.Fatal("kill not recorded")
	}
	if r := stream(b.addr, 10, 1, 2*time.Second); r.err == nil {
		t.Fatal("a killed backend served a stream")
	}
	if err := b.restart(); err != nil {
		t.Fatal(err)
	}
	if r := stream(b.addr, 1000, 2, 5*time.Second); r.err != nil || r.tag != (tag{3, 1}) || !b.killed(0) || b.killed(1) {
		t.Fatalf("after restart: %+v", r)
	}

	u, err := startUDPBackend(1)
	if err != nil {
		t.Fatal(err)
	}
	defer u.kill()
	c, err := net.Dial("udp", u.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	n, err := c.Read(buf)
	if err != nil || !bytes.Equal(buf[:n-tagLen], []byte("hello")) || parseTag(buf[n-tagLen:n]) != (tag{1, 0}) {
		t.Fatalf("udp reply %q, %v", buf[:n], err)
	}
}

func TestLedgerDownDuring(t *testing.T) {
	var l ledger
	t0 := time.Unix(1000, 0)
	k := l.killed(true, t0)
	if !l.downDuring(true, t0.Add(-time.Second), t0.Add(time.Second)) || l.downDuring(false, t0, t0.Add(time.Second)) {
		t.Fatal("a UDP kill must excuse UDP losses only")
	}
	l.restarted(k, t0.Add(5*time.Second))
	if l.downDuring(true, t0.Add(6*time.Second), t0.Add(7*time.Second)) {
		t.Fatal("a restarted backend still counts as down")
	}
	if !l.downDuring(true, t0.Add(4*time.Second), t0.Add(7*time.Second)) {
		t.Fatal("a window overlapping the outage must count")
	}
}
