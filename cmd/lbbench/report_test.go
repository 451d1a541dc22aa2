package main

import (
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sampleResults is a two-round run with every target, where lbctl beats
// HAProxy on connections but not nginx on memory.
func sampleResults() *results {
	r, set := newResults(2)
	set(tDirect, "bulk.gbps", 30, 34)
	set(tLbctl, "bulk.gbps", 26, 26)
	set(tHAProxy, "bulk.gbps", 16, 16)
	set(tNginx, "bulk.gbps", 10, 12)
	set(tDirect, "short.cps", 20000, 20000)
	set(tLbctl, "short.cps", 12000, 12000)
	set(tHAProxy, "short.cps", 10000, 10000)
	set(tNginx, "short.cps", 9000, 9000)
	set(tDirect, "rr1.p50_us", 60, 62)
	set(tLbctl, "rr1.p50_us", 70, 72)
	set(tHAProxy, "rr1.p50_us", 80, 84)
	set(tNginx, "rr1.p50_us", 75, 76)
	set(tLbctl, "idle.conns", 8000, 8000)
	set(tLbctl, "idle.rss_kib_per_conn", 12, 12)
	set(tNginx, "idle.rss_kib_per_conn", 9.5, 9.5)
	set(tLbctl, "idle.fds_per_conn", 2, 2)
	set(tLbctl, "udp.dps", 150000, 150000)
	set(tNginx, "udp.dps", 100000, 100000)
	set(tLbctl, "bulk.cpu_s_per_gb", 0.1, 0.1)
	r.add(tNginx, "bulk.gbps", nanFloat()) // ignored
	r.finish()
	return r
}

// newResults is an empty run of the default settings with rounds rounds,
// and set, which records a target's values of a measure (one a round).
// The caller calls finish once they are set.
func newResults(rounds int) (*results, func(target, measure string, vs ...float64)) {
	s := defaultSettings()
	s.Rounds = rounds
	r := &results{Settings: s, Raw: map[string]map[string][]float64{}}
	return r, func(target, measure string, vs ...float64) {
		for _, v := range vs {
			r.add(target, measure, v)
		}
	}
}

func nanFloat() float64 { z := 0.0; return z / z }

func TestFinishDerivesAddedLatencyPerRound(t *testing.T) {
	r := sampleResults()
	if got := r.Raw[tLbctl]["rr1.added_p50_us"]; len(got) != 2 || got[0] != 10 || got[1] != 10 {
		t.Errorf("lbctl added p50 per round = %v, want [10 10]", got)
	}
	if s := r.Summary[tDirect]["bulk.gbps"]; s.Median != 32 || s.SpreadPct != 6.25 || s.Rounds != 2 {
		t.Errorf("direct bulk summary = %+v", s)
	}
	if n := len(r.Raw[tNginx]["bulk.gbps"]); n != 2 {
		t.Errorf("NaN was recorded: %d values", n)
	}
}

func TestRenderTable(t *testing.T) {
	table := renderTable(sampleResults())
	lines := strings.Split(table, "\n")
	if !strings.HasPrefix(lines[0], "**BENCH_PIN=none**") || lines[1] != "" {
		t.Errorf("first lines %q, %q: want the pinning variant, then a blank line", lines[0], lines[1])
	}
	if want := "| measure | direct | lbctl | haproxy | nginx | lbctl / haproxy | lbctl / nginx |"; lines[2] != want {
		t.Errorf("header %q, want %q", lines[2], want)
	}
	for _, want := range []string{
		"| Bulk throughput, 4 streams (Gbit/s) ↑ | 32.0 ±6% | 26.0 (0.81x) | 16.0 (0.50x) | 11.0 ±9% (0.34x) | 1.62x | 2.36x |",
		"| Short connections, 32 workers (conn/s) ↑ | 20,000 | 12,000 (0.60x) | 10,000 (0.50x) | 9000 (0.45x) | 1.20x | 1.33x |",
		"| 1 conn p50 added over direct (µs) ↓ | — | 10.0 | 21.0 ±5% | 14.5 ±3% | — | — |",
		"| bulk throughput >= 1.8 x HAProxy (Gbit/s) | 26.0 | 28.8 (1.8 x HAProxy) | 🔴 NO |",
		"| RSS per idle connection (KiB) <= 4 | 12.0 | 4 | 🔴 NO |",
		"| 1-conn p50 added (µs) <= best of HAProxy, nginx | 10.0 | 14.5 (best peer) | yes |",
		"| holds 8000 idle connections | 8000 | 8000 | yes |",
		"| fds per idle connection <= 2 | 2.00 | 2 | yes |",
		"| UDP datagrams/s >= 1.5 x nginx | 150,000 | 150,000 (1.5 x nginx) | yes |",
		"| CPU s per 1,000 conns <= HAProxy | — | — | — |",
	} {
		if !strings.Contains(table, want+"\n") {
			t.Errorf("table lacks line\n%s\n---\n%s", want, table)
		}
	}
	if strings.Contains(table, "32 conns p50") {
		t.Error("table has a row for a measure nobody ran")
	}
}

func TestRenderTableWithoutLbctl(t *testing.T) {
	r := sampleResults()
	delete(r.Raw, tLbctl)
	r.Settings.Targets = []string{tDirect, tHAProxy, tNginx}
	r.Notes = []string{"lbctl not run: no binary"}
	r.finish()
	table := renderTable(r)
	if strings.Contains(table, "lbctl /") || strings.Contains(table, "lbctl goal") {
		t.Errorf("lbctl columns or goals without lbctl:\n%s", table)
	}
	if !strings.Contains(table, "Note: lbctl not run: no binary") {
		t.Errorf("note missing:\n%s", table)
	}
}

func TestChartIsWellFormedSVG(t *testing.T) {
	svg := renderChart(sampleResults())
	d := xml.NewDecoder(strings.NewReader(svg))
	rects := 0
	for {
		tok, err := d.Token()
		if err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("chart is not XML: %v\n%s", err, svg)
			}
			break
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "rect" {
			rects++
		}
	}
	// Background, 3 bulk bars, 3 short bars, 3 legend boxes; no UDP bars
	// without a direct figure to divide by.
	if rects != 1+3+3+3 {
		t.Errorf("%d rects", rects)
	}
	for _, want := range []string{"lbctl 0.81x", "haproxy 0.50x", "direct = 1.0", "nginx: not measured"} {
		if !strings.Contains(svg, want) {
			t.Errorf("chart lacks %q", want)
		}
	}
}

func TestWriteResults(t *testing.T) {
	r := sampleResults()
	dir, docs := t.TempDir(), t.TempDir()
	if err := writeResults(r, "TABLE\n", dir, docs, new(strings.Builder)); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back results
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("results.json: %v", err)
	}
	if back.Summary[tLbctl]["udp.dps"].Median != 150000 {
		t.Errorf("summary did not round-trip: %+v", back.Summary[tLbctl])
	}
	for _, p := range []string{filepath.Join(dir, "table.md"), filepath.Join(dir, "chart.svg"), filepath.Join(docs, "bench-chart.svg"), filepath.Join(docs, "bench-table.md")} {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
}

func TestFmtNum(t *testing.T) {
	tests := map[float64]string{0: "0.00", 0.0362: "0.036", 3.254: "3.25", 17.25: "17.2", 289.4: "289", 9999: "9999", 238831.2: "238,831", -12345: "-12,345"}
	for in, want := range tests {
		if got := fmtNum(in); got != want {
			t.Errorf("fmtNum(%v) = %q, want %q", in, got, want)
		}
	}
}
