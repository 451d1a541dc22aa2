package metrics

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// processWide are the lbctl_ families that exist once per process, not per
// listener or backend; scrape leaves them out.
var processWide = map[string]bool{
	"lbctl_config_reloads_total":                         true,
	"lbctl_build_info":                                   true,
	"lbctl_config_last_reload_successful":                true,
	"lbctl_config_last_reload_success_timestamp_seconds": true,
	"lbctl_config_file_changed":                          true,
	"lbctl_tcp_loop_missed_wakeups_total":                true,
	"lbctl_tcp_loop_promote_failures_total":              true,
}

// scrape lists the lbctl_ series of reg (the process-wide ones aside) as
// "name{label=value,...} value", sorted: what a scrape would show.
func scrape(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "lbctl_") || processWide[mf.GetName()] {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, lp.GetName()+"="+lp.GetValue())
			}
			var v float64
			switch {
			case m.Counter != nil:
				v = m.Counter.GetValue()
			case m.Gauge != nil:
				v = m.Gauge.GetValue()
			case m.Histogram != nil:
				v = float64(m.Histogram.GetSampleCount())
			}
			out = append(out, fmt.Sprintf("%s{%s} %g", mf.GetName(), strings.Join(labels, ","), v))
		}
	}
	slices.Sort(out)
	return out
}

func wantSeries(t *testing.T, reg *prometheus.Registry, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := scrape(t, reg); !slices.Equal(got, want) {
		t.Errorf("series:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestReasonLabels(t *testing.T) {
	for r, want := range map[Reason]string{
		0:                        "",
		ReasonMaxConnections:     "max_connections",
		ReasonACL:                "acl",
		ReasonNoBackend:          "no_backend",
		ReasonBackendUnavailable: "backend_unavailable",
		ReasonClientLimit:        "client_limit",
		ReasonRateLimit:          "rate_limit",
		ReasonProxyProtocol:      "proxy_protocol",
		ReasonTLSInspect:         "tls_inspect",
		ReasonNoRoute:            "no_route",
		numReasons:               "",
		255:                      "",
	} {
		if got := r.String(); got != want {
			t.Errorf("Reason(%d).String() = %q, want %q", r, got, want)
		}
	}
}

// TestRejectionsByProtocol: a listener shows every reason its protocol can
// produce at zero from the start, and no other; Inc moves exactly the
// reason's series.
func TestRejectionsByProtocol(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	tcp := m.ForListener("tcp", "web")
	udp := m.ForListener("udp", "dns")
	tcp.Inc(ReasonACL)
	tcp.Inc(ReasonProxyProtocol)
	tcp.Inc(ReasonProxyProtocol)
	udp.Inc(ReasonRateLimit)
	udp.Inc(ReasonProxyProtocol) // a UDP listener cannot produce it: not counted, not exported
	udp.Inc(0)                   // no rejection
	udp.Inc(numReasons)          // out of range
	udp.Inc(ReasonTLSInspect)    // TCP only, as proxy_protocol
	udp.Inc(ReasonNoRoute)       // TCP only
	tcp.Inc(ReasonNoRoute)
	const r = "lbctl_connections_rejected_total"
	wantSeries(t, reg,
		r+"{listener=web,reason=max_connections} 0",
		r+"{listener=web,reason=acl} 1",
		r+"{listener=web,reason=no_backend} 0",
		r+"{listener=web,reason=backend_unavailable} 0",
		r+"{listener=web,reason=client_limit} 0",
		r+"{listener=web,reason=rate_limit} 0",
		r+"{listener=web,reason=proxy_protocol} 2",
		r+"{listener=web,reason=tls_inspect} 0",
		r+"{listener=web,reason=no_route} 1",
		r+"{listener=dns,reason=max_connections} 0",
		r+"{listener=dns,reason=acl} 0",
		r+"{listener=dns,reason=no_backend} 0",
		r+"{listener=dns,reason=backend_unavailable} 0",
		r+"{listener=dns,reason=client_limit} 0",
		r+"{listener=dns,reason=rate_limit} 1",
	)
	m.ForgetListener("dns")
	if got := len(scrape(t, reg)); got != 9 {
		t.Errorf("%d series after forgetting dns, want web's 9", got)
	}
}

// TestRejectionsIncAllocs: counting a rejection allocates nothing (no label
// lookup on the hot path).
func TestRejectionsIncAllocs(t *testing.T) {
	rej := New(prometheus.NewRegistry()).ForListener("tcp", "web")
	if n := testing.AllocsPerRun(1000, func() { rej.Inc(ReasonClientLimit) }); n != 0 {
		t.Errorf("Inc: %v allocations, want 0", n)
	}
}

// TestHandlesHoldTheirProtocol: a TCP handle creates and moves only TCP
// series, a UDP handle only UDP series.
func TestHandlesHoldTheirProtocol(t *testing.T) {
	t.Run("tcp", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		h := New(reg).ForTCP("web", "p", "10.0.0.1:80")
		h.ConnectFailed()
		h.ConnectSucceeded(3 * time.Millisecond)
		h.ConnOpened()
		h.ConnOpened()
		h.ConnClosed()
		h.AddBytes(In, 5)
		h.AddBytes(Out, 7)
		h.AddBytes(Out, 1)
		const lpb = "backend=10.0.0.1:80,listener=web,pool=p"
		wantSeries(t, reg,
			"lbctl_connections_active{"+lpb+"} 1",
			"lbctl_connections_total{"+lpb+"} 2",
			"lbctl_bytes_total{backend=10.0.0.1:80,direction=in,listener=web,pool=p} 5",
			"lbctl_bytes_total{backend=10.0.0.1:80,direction=out,listener=web,pool=p} 8",
			"lbctl_backend_connect_errors_total{backend=10.0.0.1:80,pool=p} 1",
			"lbctl_backend_connect_duration_seconds{backend=10.0.0.1:80,pool=p} 1",
		)
	})
	t.Run("udp", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		h := New(reg).ForUDP("dns", "ns", "10.0.0.53:53")
		h.ConnectFailed()
		h.SessionOpened()
		h.SessionOpened()
		h.SessionClosed()
		h.Datagram(In, 30)
		h.Datagram(In, 31)
		h.Datagram(Out, 100)
		const lpb = "backend=10.0.0.53:53,listener=dns,pool=ns"
		wantSeries(t, reg,
			"lbctl_udp_sessions_active{"+lpb+"} 1",
			"lbctl_udp_datagrams_total{backend=10.0.0.53:53,direction=in,listener=dns,pool=ns} 2",
			"lbctl_udp_datagrams_total{backend=10.0.0.53:53,direction=out,listener=dns,pool=ns} 1",
			"lbctl_bytes_total{backend=10.0.0.53:53,direction=in,listener=dns,pool=ns} 61",
			"lbctl_bytes_total{backend=10.0.0.53:53,direction=out,listener=dns,pool=ns} 100",
			"lbctl_backend_connect_errors_total{backend=10.0.0.53:53,pool=ns} 1",
		)
	})
}

// TestNilRecorders: every recorder method is a no-op on a nil handle and
// on the zero handle, so a caller without metrics passes nil.
func TestNilRecorders(t *testing.T) {
	for _, tcp := range []*TCP{nil, {}} {
		tcp.ConnectFailed()
		tcp.ConnectSucceeded(time.Millisecond)
		tcp.ConnOpened()
		tcp.ConnClosed()
		tcp.AddBytes(In, 1)
		tcp.AddBytes(Out, 1)
		tcp.AddBytes(Direction(9), 1)
	}
	for _, udp := range []*UDP{nil, {}} {
		udp.ConnectFailed()
		udp.SessionOpened()
		udp.SessionClosed()
		udp.Datagram(In, 1)
		udp.Datagram(Out, 1)
		udp.Datagram(Direction(9), 1)
	}
	for _, rej := range []*Rejections{nil, {}} {
		for r := range Reason(255) {
			rej.Inc(r)
		}
	}
}

// TestHotPathAllocs: the per-read and per-datagram recorders allocate
// nothing.
func TestHotPathAllocs(t *testing.T) {
	m := New(prometheus.NewRegistry())
	tcp, udp := m.ForTCP("l", "p", "b"), m.ForUDP("u", "p", "b")
	if n := testing.AllocsPerRun(1000, func() { tcp.AddBytes(In, 1500) }); n != 0 {
		t.Errorf("TCP.AddBytes: %v allocations, want 0", n)
	}
	if n := testing.AllocsPerRun(1000, func() { udp.Datagram(Out, 512) }); n != 0 {
		t.Errorf("UDP.Datagram: %v allocations, want 0", n)
	}
}

// TestLoopCounters: the event loops' counters read 0 until the server
// hands their functions over, then what those return at each scrape.
func TestLoopCounters(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	if got := testutil.ToFloat64(m.LoopMissedWakeups) + testutil.ToFloat64(m.LoopPromoteFailures); got != 0 {
		t.Fatalf("before SetLoopCounters: %v, want 0", got)
	}
	var missed, failed int64 = 3, 5
	m.SetLoopCounters(func() int64 { return missed }, func() int64 { return failed })
	failed++
	if a, b := testutil.ToFloat64(m.LoopMissedWakeups), testutil.ToFloat64(m.LoopPromoteFailures); a != 3 || b != 6 {
		t.Fatalf("missed wake-ups %v, promote failures %v; want 3, 6", a, b)
	}
}

// TestSchedLatencies: beside the Go collector's defaults, the runtime's
// scheduling latencies are exported, as a histogram whose count grows as
// goroutines are made runnable (the runtime samples them).
func TestSchedLatencies(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg)
	gather := func() (*dto.Histogram, []*dto.MetricFamily) {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "go_sched_latencies_seconds" {
				return mf.GetMetric()[0].GetHistogram(), mfs
			}
		}
		t.Fatal("go_sched_latencies_seconds is not exported")
		return nil, nil
	}
	before, _ := gather()
	done := make(chan struct{})
	for range 1000 {
		go func() { done <- struct{}{} }()
		<-done
	}
	after, mfs := gather()
	if after.GetSampleCount() <= before.GetSampleCount() || len(after.GetBucket()) < 5 {
		t.Fatalf("go_sched_latencies_seconds: %d samples before, %d after 1,000 goroutines, %d buckets",
			before.GetSampleCount(), after.GetSampleCount(), len(after.GetBucket()))
	}
	for _, want := range []string{"go_goroutines", "go_memstats_alloc_bytes"} {
		if !slices.ContainsFunc(mfs, func(m *dto.MetricFamily) bool { return m.GetName() == want }) {
			t.Errorf("%s is gone: the Go collector's defaults must stay", want)
		}
	}
}
