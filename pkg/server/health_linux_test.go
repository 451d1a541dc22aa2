package server

import (
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// healthFDChildEnv names the backends of the child process of
// TestHealthOutOfDescriptors (this test binary, re-executed).
const healthFDChildEnv = "LBCTL_TEST_HEALTH_FD_CHILD"

// healthFDChild serves listener l in front of the comma-separated backends
// with active tcp checks (rise 3, fall 2), under a descriptor limit of 256,
// prints "listening ADDR" and obeys stdin:
//
//   - "state" prints "state UP SUCCESS FAILURE SKIPPED": backends up, the
//     sums of lbctl_health_checks_total by result, and the checks without a
//     verdict in the current shortage episode;
//   - "exhaust" takes every free descriptor, and keeps taking those that
//     come free, until "release" gives them all back;
//   - EOF exits.
func healthFDChild(backends string) {
	ChildLimitFDs(256)
	addrs := strings.Split(backends, ",")
	m := metrics.New(prometheus.NewRegistry())
	srv := ChildServer(listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 0", addrs...)+
		healthTOML(`check = "tcp"`, `interval = "200ms"`, `timeout = "1s"`, "rise = 3", "fall = 2"), ChildLogger(), m)
	fmt.Printf("listening %s\n", srv.Listeners()["l"])

	var (
		mu   sync.Mutex
		fill []*os.File
		stop chan struct{}
		done chan struct{}
	)
	// take opens descriptors until none is left.
	take := func() {
		mu.Lock()
		defer mu.Unlock()
		fill = append(fill, childFillFDs()...)
	}
	ChildObey(func(cmd string) {
		switch cmd {
		case "state":
			up := 0
			for _, p := range srv.Status().Pools {
				for _, b := range p.Backends {
					if b.Health == "up" {
						up++
					}
				}
			}
			var success, failure float64
			for _, a := range addrs {
				success += counter(m.HealthChecks.WithLabelValues("p", a, "success"))
				failure += counter(m.HealthChecks.WithLabelValues("p", a, "failure"))
			}
			srv.health.mu.Lock()
			skipped := 0
			if srv.health.noVerdict > 0 {
				skipped = srv.health.skipped
			}
			srv.health.mu.Unlock()
			fmt.Printf("state %d %v %v %d\n", up, success, failure, skipped)
		case "exhaust":
			take()
			// A check that held a socket meanwhile gives it back when it
			// ends: take that one too, until "release" (bounded by the
			// parent's deadline: it closes stdin).
			stop, done = make(chan struct{}), make(chan struct{})
			go func(stop, done chan struct{}) {
				defer close(done)
				tick := time.NewTicker(time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
						take()
					}
				}
			}(stop, done)
			fmt.Println("exhausted")
		case "release":
			close(stop)
			<-done
			mu.Lock()
			for _, f := range fill {
				f.Close()
			}
			fill = nil
			mu.Unlock()
			fmt.Println("released")
		}
	})
}

// TestHealthOutOfDescriptors (defect 3): while lbctl is out of file
// descriptors its health checks cannot dial; that is no verdict on the
// backends. They stay up, no failure is counted, the shortage is logged
// once, and once descriptors come back clients are served at once, with
// no wait for rise checks.
func TestHealthOutOfDescriptors(t *testing.T) {
	if be := os.Getenv(healthFDChildEnv); be != "" {
		healthFDChild(be)
		return
	}
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	b := lbtest.NewTCP(t, lbtest.Named("b"))
	child := StartChild(t, "^TestHealthOutOfDescriptors$", healthFDChildEnv+"="+a.Addr+","+b.Addr)
	addr := strings.TrimPrefix(child.WaitLine("listening "), "listening ")

	type state struct {
		up                int
		success, failures float64
		skipped           int
	}
	read := func() state {
		t.Helper()
		child.Send("state")
		var s state
		l := child.WaitLine("state ")
		if _, err := fmt.Sscanf(l, "state %d %v %v %d", &s.up, &s.success, &s.failures, &s.skipped); err != nil {
			t.Fatalf("child said %q: %v", l, err)
		}
		return s
	}
	var st state
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		st = read()
		return st.success >= 2, fmt.Sprintf("first checks not passed: %+v\n%s", st, child.Stderr())
	})
	if st.up != 2 || st.failures != 0 {
		t.Fatalf("before the shortage: %+v, want both up and no failure\n%s", st, child.Stderr())
	}

	child.Send("exhaust")
	child.WaitLine("exhausted")
	// Several intervals without descriptors: three checks of each backend
	// without a verdict (fall = 2 would have marked both down), or, before
	// the fix, backends marked down.
	lbtest.Until(t, 20*time.Second, func() (bool, string) {
		st = read()
		return st.skipped >= 6 || st.up < 2, fmt.Sprintf("no check ran while out of descriptors: %+v\n%s", st, child.Stderr())
	})
	if st.up != 2 || st.failures != 0 {
		t.Errorf("out of descriptors: %d backends up, %v failed checks counted; want 2 and 0\n%s", st.up, st.failures, child.Stderr())
	}

	child.Send("release")
	child.WaitLine("released")
	// Served at once: a backend marked down would need rise = 3 passing
	// checks (over 400ms) first.
	for i := range 2 {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		got, err := lbtest.ReadAllTimeout(t, c, 5*time.Second)
		c.Close()
		if err != nil || (string(got) != "a" && string(got) != "b") {
			t.Errorf("connection %d right after descriptors came back: %q %v, want served by a or b\n%s", i, got, err, child.Stderr())
		}
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		logs := child.Stderr()
		return strings.Contains(logs, "health checks give verdicts again"), "the end of the shortage was not logged:\n" + logs
	})
	logs := child.Stderr()
	if n := strings.Count(logs, "health checks give no verdict"); n != 1 {
		t.Errorf("the shortage was logged %d times, want once:\n%s", n, logs)
	}
	if !strings.Contains(logs, "too many open files") {
		t.Errorf("the shortage was logged without its error:\n%s", logs)
	}
	if strings.Contains(logs, "backend down") {
		t.Errorf("a backend was marked down:\n%s", logs)
	}
	if st = read(); st.up != 2 || st.failures != 0 {
		t.Errorf("after the shortage: %+v, want both up and no failure", st)
	}
}
