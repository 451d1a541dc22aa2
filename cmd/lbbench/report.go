package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// results is everything one run produced; it is written as results.json.
type results struct {
	Started  time.Time                       `json:"started"`
	Wall     string                          `json:"wall_time"`
	Machine  machine                         `json:"machine"`
	Settings settings                        `json:"settings"`
	Pin      pinInfo                         `json:"pin"`
	Configs  map[string]string               `json:"configs"` // target -> path under the results folder
	Raw      map[string]map[string][]float64 `json:"raw"`     // target -> metric -> one value per round
	Idle     map[string][]idleResult         `json:"idle"`    // target -> one per round
	Summary  map[string]map[string]summary   `json:"summary"` // target -> metric -> median and spread
	Goals    []goal                          `json:"goals"`
	Notes    []string                        `json:"notes,omitempty"`
}

type summary struct {
	Median    float64 `json:"median"`
	SpreadPct float64 `json:"spread_pct"`
	Rounds    int     `json:"rounds"`
}

func (r *results) add(target, metric string, v float64) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return
	}
	if r.Raw[target] == nil {
		r.Raw[target] = map[string][]float64{}
	}
	r.Raw[target][metric] = append(r.Raw[target][metric], v)
}

// finish derives the added latency (per round, against direct in the same
// round), the medians and spreads, and the goals.
func (r *results) finish() {
	if d := r.Raw[tDirect]; d != nil {
		for t, ms := range r.Raw {
			if t == tDirect {
				continue
			}
			for _, m := range []string{mRR1, mRR32} {
				for _, q := range []string{"p50", "p99"} {
					tv, dv := ms[m+"."+q+"_us"], d[m+"."+q+"_us"]
					for i := 0; i < len(tv) && i < len(dv); i++ {
						r.add(t, m+".added_"+q+"_us", tv[i]-dv[i])
					}
				}
			}
		}
	}
	r.Summary = map[string]map[string]summary{}
	for t, ms := range r.Raw {
		r.Summary[t] = map[string]summary{}
		for m, xs := range ms {
			sp := spread(xs)
			if math.IsNaN(sp) {
				sp = 0
			}
			r.Summary[t][m] = summary{Median: median(xs), SpreadPct: sp, Rounds: len(xs)}
		}
	}
	r.Goals = evalGoals(r)
}

// med is the median of a metric, ok false when it was not measured.
func (r *results) med(target, metric string) (float64, bool) {
	s, ok := r.Summary[target][metric]
	return s.Median, ok
}

// metricDef is one row of the table.
type metricDef struct {
	Key    string
	Label  string
	Higher bool // higher is better
	Ratio  bool // show the ratio to direct
}

func metricDefs(s settings) []metricDef {
	rr1, rr32 := s.RRConns[0], s.RRConns[len(s.RRConns)-1]
	return []metricDef{
		{"bulk.gbps", fmt.Sprintf("Bulk throughput, %d streams (Gbit/s)", s.Streams), true, true},
		{"short.cps", fmt.Sprintf("Short connections, %d workers (conn/s)", s.ShortConns), true, true},
		{"short.p50_us", "Short connection exchange p50 (µs)", false, true},
		{"short.p99_us", "Short connection exchange p99 (µs)", false, true},
		{"sni.cps", fmt.Sprintf("SNI-routed short connections, %d workers (conn/s)", s.ShortConns), true, true},
		{"sni.p50_us", "  SNI-routed exchange p50 (µs)", false, true},
		{"sni.p99_us", "  SNI-routed exchange p99 (µs)", false, true},
		{"rr1.rps", fmt.Sprintf("Request/response, %d connection (req/s)", rr1), true, true},
		{"rr1.p50_us", fmt.Sprintf("  %d conn p50 (µs)", rr1), false, true},
		{"rr1.p99_us", fmt.Sprintf("  %d conn p99 (µs)", rr1), false, true},
		{"rr1.p999_us", fmt.Sprintf("  %d conn p99.9 (µs)", rr1), false, true},
		{"rr1.added_p50_us", fmt.Sprintf("  %d conn p50 added over direct (µs)", rr1), false, false},
		{"rr1.added_p99_us", fmt.Sprintf("  %d conn p99 added over direct (µs)", rr1), false, false},
		{"rr32.rps", fmt.Sprintf("Request/response, %d connections (req/s)", rr32), true, true},
		{"rr32.p50_us", fmt.Sprintf("  %d conns p50 (µs)", rr32), false, true},
		{"rr32.p99_us", fmt.Sprintf("  %d conns p99 (µs)", rr32), false, true},
		{"rr32.p999_us", fmt.Sprintf("  %d conns p99.9 (µs)", rr32), false, true},
		{"rr32.added_p50_us", fmt.Sprintf("  %d conns p50 added over direct (µs)", rr32), false, false},
		{"rr32.added_p99_us", fmt.Sprintf("  %d conns p99 added over direct (µs)", rr32), false, false},
		{"idle.conns", fmt.Sprintf("Idle connections held (of %d, limit %d fds)", s.IdleConns, s.NoFile), true, false},
		{"idle.rss_kib_per_conn", "  proxy RSS per idle connection (KiB)", false, false},
		{"idle.fds_per_conn", "  proxy fds per idle connection", false, false},
		{"udp.dps", fmt.Sprintf("UDP request/response, %d sockets (datagrams/s)", s.UDPWorkers), true, true},
		{"udp.p50_us", "  UDP p50 (µs)", false, true},
		{"udp.p99_us", "  UDP p99 (µs)", false, true},
		{"udp.loss_pct", "  UDP lost or late >200ms (%)", false, false},
		{"bulk.cpu_s_per_gb", "Proxy CPU per GB moved (s)", false, false},
		{"short.cpu_s_per_kconn", "Proxy CPU per 1,000 connections (s)", false, false},
		{"sni.cpu_s_per_kconn", "Proxy CPU per 1,000 SNI-routed connections (s)", false, false},
		{"rr32.cpu_s_per_mreq", fmt.Sprintf("Proxy CPU per million requests, %d conns (s)", rr32), false, false},
		{"udp.cpu_s_per_mdgram", "Proxy CPU per million UDP datagrams (s)", false, false},
	}
}

// fmtNum prints a figure with about three significant digits.
func fmtNum(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 10000:
		s := fmt.Sprintf("%.0f", math.Round(v))
		neg := strings.HasPrefix(s, "-")
		s = strings.TrimPrefix(s, "-")
		var b strings.Builder
		for i, c := range s {
			if i > 0 && (len(s)-i)%3 == 0 {
				b.WriteByte(',')
			}
			b.WriteRune(c)
		}
		if neg {
			return "-" + b.String()
		}
		return b.String()
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 0.1 || a == 0:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func fmtRatio(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "—"
	}
	return fmt.Sprintf("%.2fx", v)
}

// renderTable is the markdown table: rows are measures, columns targets
// (median ±spread, and the ratio to direct), then lbctl's ratio to HAProxy
// and to nginx; then the goals.
func renderTable(r *results) string {
	var b strings.Builder
	ts := r.Settings.Targets
	hasL := contains(ts, tLbctl)
	b.WriteString(describePin(r) + "\n\n")
	b.WriteString("| measure |")
	for _, t := range ts {
		fmt.Fprintf(&b, " %s |", t)
	}
	var peers []string
	if hasL {
		for _, p := range []string{tHAProxy, tNginx} {
			if contains(ts, p) {
				peers = append(peers, p)
				fmt.Fprintf(&b, " lbctl / %s |", p)
			}
		}
	}
	b.WriteString("\n|---|")
	for range len(ts) + len(peers) {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, d := range metricDefs(r.Settings) {
		any := false
		for _, t := range ts {
			_, ok := r.med(t, d.Key)
			any = any || ok
		}
		if !any {
			continue
		}
		arrow := " ↓"
		if d.Higher {
			arrow = " ↑"
		}
		fmt.Fprintf(&b, "| %s%s |", strings.TrimSpace(d.Label), arrow)
		dv, dok := r.med(tDirect, d.Key)
		for _, t := range ts {
			s, ok := r.Summary[t][d.Key]
			if !ok {
				b.WriteString(" — |")
				continue
			}
			cell := fmtNum(s.Median)
			if s.Rounds > 1 && s.SpreadPct >= 0.5 {
				cell += fmt.Sprintf(" ±%.0f%%", s.SpreadPct)
			}
			if d.Ratio && dok && t != tDirect && dv != 0 {
				cell += " (" + fmtRatio(s.Median/dv) + ")"
			}
			fmt.Fprintf(&b, " %s |", cell)
		}
		lv, lok := r.med(tLbctl, d.Key)
		for _, p := range peers {
			pv, pok := r.med(p, d.Key)
			if !lok || !pok || pv == 0 || strings.Contains(d.Key, "added") {
				b.WriteString(" — |")
				continue
			}
			fmt.Fprintf(&b, " %s |", fmtRatio(lv/pv))
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\nMedian of %s, ±half the range across rounds (shown from 0.5%%), (×) ratio to direct; ↑ higher is better, ↓ lower is better. %s counted per measure, target and round.\n",
		rounds(r.Settings.Rounds), r.Settings.Time)
	fmt.Fprintf(&b, "The 1-connection measure runs as %d slices of %s per round, alternating targets; each slice is one sample and its \"added\" figure is against the direct slice next to it.\n",
		rr1Slices, max(r.Settings.Time/rr1Slices, 100*time.Millisecond))
	if m := r.Machine; m.Cores > 0 {
		fmt.Fprintf(&b, "\nMachine: %s, %d cores, Linux %s, %s; %s; %s; %s; run took %s.\n",
			orDash(m.CPU), m.Cores, orDash(m.Kernel), orDash(m.Go), orDash(m.HAProxy), orDash(m.Nginx), orDash(m.Lbctl), orDash(r.Wall))
	}
	if a := describeAffinities(r.Pin); a != "" {
		b.WriteString("\n" + a + "\n")
	}
	b.WriteString(renderCounters(r))
	if len(r.Goals) > 0 {
		b.WriteString("\n| lbctl goal | lbctl | reference | met |\n|---|---:|---:|:---:|\n")
		for _, g := range r.Goals {
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", g.Goal, g.Value, g.Reference, g.Met)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "\nNote: %s\n", n)
	}
	return b.String()
}

// goal is one of the issue's targets for lbctl, checked on the medians.
type goal struct {
	Goal      string `json:"goal"`
	Value     string `json:"lbctl"`
	Reference string `json:"reference"`
	Met       string `json:"met"` // "yes", "🔴 NO" or "—" (not measurable in this run)
}

func evalGoals(r *results) []goal {
	if _, ok := r.Raw[tLbctl]; !ok {
		return nil
	}
	var gs []goal
	cmp := func(name, metric string, higher bool, factor float64, refDesc string, refs ...string) {
		g := goal{Goal: name, Value: "—", Reference: "—", Met: "—"}
		lv, lok := r.med(tLbctl, metric)
		if lok {
			g.Value = fmtNum(lv)
		}
		best, bok := math.NaN(), false
		for _, ref := range refs {
			v, ok := r.med(ref, metric)
			if !ok {
				continue
			}
			if !bok || (higher && v > best) || (!higher && v < best) {
				best, bok = v, true
			}
		}
		if bok {
			g.Reference = fmt.Sprintf("%s (%s)", fmtNum(best*factor), refDesc)
			if lok {
				met := lv <= best*factor
				if higher {
					met = lv >= best*factor
				}
				g.Met = yesNo(met)
			}
		}
		gs = append(gs, g)
	}
	// Issue 14's targets (see docs/benchmarks.md), then the SNI row's.
	cmp("bulk throughput >= 1.8 x HAProxy (Gbit/s)", "bulk.gbps", true, 1.8, "1.8 x HAProxy", tHAProxy)
	cmp("CPU s per GB <= 0.5 x HAProxy", "bulk.cpu_s_per_gb", false, 0.5, "0.5 x HAProxy", tHAProxy)
	cmp("short conn/s >= 1.1 x HAProxy", "short.cps", true, 1.1, "1.1 x HAProxy", tHAProxy)
	cmp("CPU s per 1,000 conns <= HAProxy", "short.cpu_s_per_kconn", false, 1, "HAProxy", tHAProxy)
	// SNI routing must cost little on top of a plain connection: against
	// lbctl's own plain short connections of the same run.
	sg := goal{Goal: "SNI-routed conn/s >= 0.9 x plain TCP on lbctl", Value: "—", Reference: "—", Met: "—"}
	sv, sok := r.med(tLbctl, "sni.cps")
	pv, pok := r.med(tLbctl, "short.cps")
	if sok {
		sg.Value = fmtNum(sv)
	}
	if pok {
		sg.Reference = fmtNum(0.9*pv) + " (0.9 x lbctl short)"
		if sok {
			sg.Met = yesNo(sv >= 0.9*pv)
		}
	}
	gs = append(gs, sg)
	cmp("32-conn req/s >= 1.1 x HAProxy", "rr32.rps", true, 1.1, "1.1 x HAProxy", tHAProxy)
	cmp("CPU s per million requests <= HAProxy", "rr32.cpu_s_per_mreq", false, 1, "HAProxy", tHAProxy)
	cmp("1-conn p50 added (µs) <= best of HAProxy, nginx", "rr1.added_p50_us", false, 1, "best peer", tHAProxy, tNginx)
	cmp("1-conn p99 added (µs) <= best of HAProxy, nginx", "rr1.added_p99_us", false, 1, "best peer", tHAProxy, tNginx)
	cmp(fmt.Sprintf("holds %d idle connections", r.Settings.IdleConns), "idle.conns", true, 1, "wanted", "_wanted")
	// The wanted count is not a target: fill it in by hand.
	g := &gs[len(gs)-1]
	if lv, ok := r.med(tLbctl, "idle.conns"); ok {
		g.Reference = fmtNum(float64(r.Settings.IdleConns))
		g.Met = yesNo(lv >= float64(r.Settings.IdleConns))
	}
	g = &goal{Goal: "RSS per idle connection (KiB) <= 4", Value: "—", Reference: "4", Met: "—"}
	if lv, ok := r.med(tLbctl, "idle.rss_kib_per_conn"); ok {
		g.Value = fmtNum(lv)
		g.Met = yesNo(lv <= 4)
	}
	gs = append(gs, *g)
	g = &goal{Goal: "fds per idle connection <= 2", Value: "—", Reference: "2", Met: "—"}
	if lv, ok := r.med(tLbctl, "idle.fds_per_conn"); ok {
		g.Value = fmtNum(lv)
		g.Met = yesNo(lv <= 2.05)
	}
	gs = append(gs, *g)
	cmp("UDP datagrams/s >= 1.5 x nginx", "udp.dps", true, 1.5, "1.5 x nginx", tNginx)
	cmp("UDP p50 (µs) <= nginx", "udp.p50_us", false, 1, "nginx", tNginx)
	cmp("CPU s per million datagrams <= nginx", "udp.cpu_s_per_mdgram", false, 1, "nginx", tNginx)
	return gs
}

func rounds(n int) string {
	if n == 1 {
		return "1 round"
	}
	return fmt.Sprintf("%d rounds", n)
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// yesNo says whether a goal is met; a missed one is marked red (the red
// circle survives every Markdown renderer, colour styles do not).
func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "🔴 NO"
}

// chartRows are the measures drawn in the chart: the ones where the ratio to
// direct reads as "fraction of the machine's limit".
var chartRows = []string{"bulk.gbps", "short.cps", "rr1.rps", "rr32.rps", "udp.dps"}

var targetColor = map[string]string{
	tLbctl:   "#2b7bb9",
	tHAProxy: "#e07b39",
	tNginx:   "#3a9a5b",
}

// renderChart draws, as a self-contained SVG, one group of bars per measure:
// each proxy's median as a ratio to direct, with direct as a line at 1.0.
func renderChart(r *results) string {
	var proxies []string
	for _, t := range r.Settings.Targets {
		if t != tDirect {
			proxies = append(proxies, t)
		}
	}
	labels := map[string]string{
		"bulk.gbps": "Bulk throughput",
		"short.cps": "Short connections per second",
		"rr1.rps":   fmt.Sprintf("Requests/s, %d connection", r.Settings.RRConns[0]),
		"rr32.rps":  fmt.Sprintf("Requests/s, %d connections", r.Settings.RRConns[len(r.Settings.RRConns)-1]),
		"udp.dps":   "UDP datagrams per second",
	}
	const (
		left, top, barH, gap, width = 230, 40, 16, 14, 820
		plotW                       = width - left - 60
	)
	maxR := 1.2
	for _, m := range chartRows {
		dv, ok := r.med(tDirect, m)
		if !ok || dv == 0 {
			continue
		}
		for _, p := range proxies {
			if v, ok := r.med(p, m); ok {
				maxR = math.Max(maxR, v/dv*1.1)
			}
		}
	}
	x := func(ratio float64) float64 { return left + ratio/maxR*plotW }
	groupH := len(proxies)*barH + gap
	height := top + len(chartRows)*groupH + 50
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">
<rect width="100%%" height="100%%" fill="white"/>
<text x="%d" y="22" font-size="15" font-weight="bold">Throughput as a ratio to a direct connection (median of %s; higher is better)</text>
`, width, height, width, height, 10, rounds(r.Settings.Rounds))
	for i, m := range chartRows {
		y0 := top + i*groupH
		fmt.Fprintf(&b, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n", left-8, y0+len(proxies)*barH/2+4, xmlEscape(strings.TrimSpace(labels[m])))
		dv, dok := r.med(tDirect, m)
		for j, p := range proxies {
			y := y0 + j*barH
			v, ok := r.med(p, m)
			if !ok || !dok || dv == 0 {
				why := "not measured"
				if m == "udp.dps" && p == tHAProxy {
					why = "no UDP"
				}
				fmt.Fprintf(&b, "<text x=\"%d\" y=\"%d\" fill=\"#888\">%s: %s</text>\n", left+4, y+barH-4, p, why)
				continue
			}
			ratio := v / dv
			fmt.Fprintf(&b, "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\"/>\n", left, y+1, x(ratio)-left, barH-2, targetColor[p])
			fmt.Fprintf(&b, "<text x=\"%.1f\" y=\"%d\">%s %.2fx</text>\n", x(ratio)+4, y+barH-4, p, ratio)
		}
	}
	bottom := top + len(chartRows)*groupH
	fmt.Fprintf(&b, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"black\" stroke-dasharray=\"4 3\"/>\n", x(1), top-6, x(1), bottom)
	fmt.Fprintf(&b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">direct = 1.0</text>\n", x(1), bottom+16)
	fmt.Fprintf(&b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", left, top-6, left, bottom)
	lx := left
	for _, p := range proxies {
		fmt.Fprintf(&b, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\"/><text x=\"%d\" y=\"%d\">%s</text>\n", lx, bottom+26, targetColor[p], lx+16, bottom+37, p)
		lx += 100
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// writeResults writes results.json, table.md and chart.svg into dir, and
// copies the table and chart to docsDir as bench-table.md and
// bench-chart.svg.
func writeResults(r *results, table, dir, docsDir string, progress io.Writer) error {
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	chart := renderChart(r)
	files := map[string][]byte{
		filepath.Join(dir, "results.json"): js,
		filepath.Join(dir, "table.md"):     []byte(table),
		filepath.Join(dir, "chart.svg"):    []byte(chart),
	}
	if docsDir != "" {
		files[filepath.Join(docsDir, "bench-table.md")] = []byte(table)
		files[filepath.Join(docsDir, "bench-chart.svg")] = []byte(chart)
	}
	for p, data := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(p), err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	fmt.Fprintf(progress, "lbbench: results in %s (wall time %s)\n", dir, r.Wall)
	return nil
}

// counterRows are the rows of the per-request table, per measure.
var counterRows = []struct{ key, label string }{
	{cSyscalls, "syscalls"},
	{cCtxSwitches, "context switches"},
	{cWakeups, "wake-ups of the proxy"},
	{cWakeupsIssue, "wake-ups issued by the proxy"},
	{cHandoffs, "of which hand-offs between its threads"},
}

// counterUnit is what one "request" is in a measure.
func counterUnit(m string) string {
	switch m {
	case mShort, mSNI:
		return "connection"
	case mUDP:
		return "datagram"
	}
	return "request"
}

// counterLabel names a measure in the per-request tables.
func counterLabel(s settings, m string) string {
	switch m {
	case mShort:
		return fmt.Sprintf("short conns (%d workers)", s.ShortConns)
	case mSNI:
		return fmt.Sprintf("SNI-routed short conns (%d workers)", s.ShortConns)
	case mRR1:
		return fmt.Sprintf("req/resp, %d conn", s.RRConns[0])
	case mRR32:
		return fmt.Sprintf("req/resp, %d conns", s.RRConns[len(s.RRConns)-1])
	case mUDP:
		return fmt.Sprintf("UDP, %d sockets", s.UDPWorkers)
	}
	return m
}

// renderCounters is the per-request table (syscalls, context switches,
// wake-ups) and the syscalls by kind, "" when nothing was counted.
func renderCounters(r *results) string {
	var proxies []string
	for _, t := range r.Settings.Targets {
		if t != tDirect {
			proxies = append(proxies, t)
		}
	}
	var b strings.Builder
	header := func(first string) {
		fmt.Fprintf(&b, "| %s |", first)
		for _, t := range proxies {
			fmt.Fprintf(&b, " %s |", t)
		}
		b.WriteString("\n|---|")
		for range proxies {
			b.WriteString("---:|")
		}
		b.WriteString("\n")
	}
	row := func(label, key string) bool {
		cells, any := "", false
		for _, t := range proxies {
			s, ok := r.Summary[t][key]
			if !ok {
				cells += " — |"
				continue
			}
			any = true
			cells += " " + fmtNum(s.Median)
			if s.Rounds > 1 && s.SpreadPct >= 5 {
				cells += fmt.Sprintf(" ±%.0f%%", s.SpreadPct)
			}
			cells += " |"
		}
		if any {
			fmt.Fprintf(&b, "| %s |%s\n", label, cells)
		}
		return any
	}
	var measured []string
	for _, m := range countedMeasures {
		for _, t := range proxies {
			if _, ok := r.Summary[t][m+".per_req."+cCtxSwitches]; ok {
				measured = append(measured, m)
				break
			}
		}
	}
	if len(measured) == 0 {
		return ""
	}
	b.WriteString("\nPer request (per connection for short connections, per datagram for UDP), counted in separate steps under `perf stat` and /proc; the proxy's threads only:\n\n")
	header("per request ↓")
	for _, m := range measured {
		for _, c := range counterRows {
			row(fmt.Sprintf("%s: %s per %s", counterLabel(r.Settings, m), c.label, counterUnit(m)), m+".per_req."+c.key)
		}
	}
	// Syscalls by kind: every kind some proxy makes at least once per
	// 100 requests, most frequent first (by the largest of the proxies).
	var kindRows strings.Builder
	for _, m := range measured {
		type kv struct {
			kind string
			top  float64
		}
		var ks []kv
		seen := map[string]bool{}
		for _, t := range proxies {
			for key, s := range r.Summary[t] {
				k, ok := strings.CutPrefix(key, m+".per_req."+sysPrefix)
				if !ok || seen[k] {
					continue
				}
				seen[k] = true
				top := s.Median
				for _, u := range proxies {
					if v, ok := r.med(u, key); ok {
						top = math.Max(top, v)
					}
				}
				if top >= 0.01 {
					ks = append(ks, kv{k, top})
				}
			}
		}
		sort.Slice(ks, func(i, j int) bool {
			if ks[i].top != ks[j].top {
				return ks[i].top > ks[j].top
			}
			return ks[i].kind < ks[j].kind
		})
		for _, k := range ks {
			kindRows.WriteString(fmt.Sprintf("| %s: %s |", counterLabel(r.Settings, m), k.kind))
			for _, t := range proxies {
				if v, ok := r.med(t, m+".per_req."+sysPrefix+k.kind); ok {
					kindRows.WriteString(" " + fmtNum(v) + " |")
				} else {
					kindRows.WriteString(" — |")
				}
			}
			kindRows.WriteString("\n")
		}
	}
	if kindRows.Len() > 0 {
		b.WriteString("\nSyscalls per request by kind (\"other\": the kinds not counted one by one):\n\n")
		header("syscalls per request ↓")
		b.WriteString(kindRows.String())
	}
	return b.String()
}

// describePin is the line above the table that says how the run was
// pinned.
func describePin(r *results) string {
	p := r.Pin
	switch {
	case p.Variant == pinSplit && p.CPUs != nil:
		s := fmt.Sprintf("**BENCH_PIN=split**: lbbench (the load generator) and the backends on CPU %d; the proxy under test, every thread and process of it, alone on CPU %d, with one thread (HAProxy `nbthread 1`, nginx `worker_processes 1`, lbctl GOMAXPROCS %s, from its runtime).",
			p.CPUs.Load, p.CPUs.Proxy, gmpOrDash(p.LbctlGOMAXPROCS))
		return s
	case p.Variant == pinSplit:
		return "**BENCH_PIN=split**"
	default:
		return fmt.Sprintf("**BENCH_PIN=none**: load generator, backends and proxy share every CPU; %d threads or workers per proxy (lbctl GOMAXPROCS %s, from its runtime).",
			r.Settings.Threads, gmpOrDash(p.LbctlGOMAXPROCS))
	}
}

func gmpOrDash(n int) string {
	if n == 0 {
		return "—"
	}
	return fmt.Sprint(n)
}

// describeAffinities lists what each process tree was seen allowed to run
// on, in a fixed order.
func describeAffinities(p pinInfo) string {
	var parts []string
	for _, k := range []string{"lbbench", "backends", tLbctl, tHAProxy, tNginx} {
		if a, ok := p.Affinity[k]; ok {
			parts = append(parts, k+": "+a)
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "Affinity seen after start-up: " + strings.Join(parts, "; ") + "."
}
