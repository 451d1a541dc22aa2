package metrics

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/prometheus/client_golang/prometheus"
)

// The shipped dashboard and alert rules (examples/) are tested
// documentation: every PromQL expression in them parses (Prometheus's own
// promtool checks them), every metric they name is one lbctl registers, and
// each alert fires on the series it is written for (promtool test rules).

const (
	dashboardFile = "../../examples/grafana-dashboard.json"
	alertsFile    = "../../examples/prometheus-alerts.yml"
)

// recorder is a Registerer that keeps what is registered on it.
type recorder struct{ cs []prometheus.Collector }

func (r *recorder) Register(c prometheus.Collector) error { r.cs = append(r.cs, c); return nil }
func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	r.cs = append(r.cs, cs...)
}
func (r *recorder) Unregister(prometheus.Collector) bool { return false }

var descName = regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)

// registered returns every metric New registers (lbctl's, the Go and
// process collectors'), by name, with its variable labels; histograms by
// their family name. It reads the collectors' descriptions, so a vector
// without a series yet is listed too.
func registered(t testing.TB) map[string][]string {
	t.Helper()
	var r recorder
	New(&r)
	out := map[string][]string{}
	for _, c := range r.cs {
		ch := make(chan *prometheus.Desc, 256)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			m := descName.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot read the description %s", d)
			}
			var labels []string
			if m[2] != "" {
				labels = strings.Split(m[2], ",")
			}
			sort.Strings(labels)
			out[m[1]] = labels
		}
	}
	return out
}

// TestRegisteredNames: the helper sees lbctl's metrics, the Go and process
// collectors'.
func TestRegisteredNames(t *testing.T) {
	names := registered(t)
	for _, n := range []string{"lbctl_connections_total", "lbctl_build_info", "lbctl_connection_duration_seconds", "go_goroutines", "process_open_fds"} {
		if _, ok := names[n]; !ok {
			t.Errorf("%s not among the registered metrics", n)
		}
	}
	if got := strings.Join(names["lbctl_backend_admin_state"], " "); got != "backend pool state" {
		t.Errorf("lbctl_backend_admin_state labels %q", got)
	}
}

var metricName = regexp.MustCompile(`\b(lbctl_[a-z0-9_]+|process_[a-z0-9_]+|go_[a-z0-9_]+)`)

// unknownMetrics lists the metric names in expr that lbctl does not
// register (a histogram's _bucket, _sum and _count count as its family).
func unknownMetrics(names map[string][]string, expr string) []string {
	var out []string
	for _, n := range metricName.FindAllString(expr, -1) {
		if _, ok := names[n]; ok {
			continue
		}
		base := n
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			base = strings.TrimSuffix(base, suffix)
		}
		if _, ok := names[base]; ok && base != n {
			continue
		}
		out = append(out, n)
	}
	return out
}

// dashboardExprs returns every query of the dashboard: the panels'
// targets and the annotations ("expr"), and the template variables'
// queries ("query", label_values(...), not PromQL).
func dashboardExprs(t *testing.T) (exprs, varQueries []string) {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s is not JSON: %v", dashboardFile, err)
	}
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if s, ok := e.(string); ok && k == "expr" {
					exprs = append(exprs, s)
				}
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(d["panels"])
	walk(d["annotations"])
	for _, v := range d["templating"].(map[string]any)["list"].([]any) {
		q := v.(map[string]any)["query"]
		if m, ok := q.(map[string]any); ok {
			q = m["query"]
		}
		if s, ok := q.(string); ok && strings.Contains(s, "(") {
			varQueries = append(varQueries, s)
		}
	}
	sort.Strings(exprs)
	return exprs, varQueries
}

// TestDashboard: the dashboard is an importable Grafana dashboard with a
// data source variable; each panel query uses it and only registered
// metrics; every area an operator looks at has a panel.
func TestDashboard(t *testing.T) {
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title      string `json:"title"`
		UID        string `json:"uid"`
		Templating struct {
			List []struct{ Name, Type string } `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title      string         `json:"title"`
			Type       string         `json:"type"`
			Datasource map[string]any `json:"datasource"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	if d.Title == "" || d.UID == "" {
		t.Error("the dashboard has no title or uid")
	}
	if len(d.Templating.List) == 0 || d.Templating.List[0].Name != "datasource" || d.Templating.List[0].Type != "datasource" {
		t.Error("the first template variable is not the data source (type datasource)")
	}
	var titles []string
	for _, p := range d.Panels {
		titles = append(titles, p.Title)
		if p.Type != "row" && p.Datasource["uid"] != "${datasource}" {
			t.Errorf("panel %q does not use the ${datasource} variable", p.Title)
		}
	}
	all := strings.ToLower(strings.Join(titles, "\n"))
	for _, want := range []string{"connections / s", "bytes / s", "rejections", "backends up", "backend state", "health checks", "reloads", "file descriptors"} {
		if !strings.Contains(all, want) {
			t.Errorf("no panel titled with %q", want)
		}
	}

	exprs, vars := dashboardExprs(t)
	if len(exprs) < 20 {
		t.Fatalf("%d queries found in the dashboard, want every panel's", len(exprs))
	}
	names := registered(t)
	for _, e := range append(exprs, vars...) {
		if u := unknownMetrics(names, e); len(u) > 0 {
			t.Errorf("dashboard query uses metrics lbctl does not register %v:\n  %s", u, e)
		}
	}
}

// grafanaVars replaces Grafana's variables by values PromQL accepts.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h",
	"${datasource}", "ds", "$instance", ".*", "$listener", ".*", "$pool", ".*",
)

// TestDashboardPromQL: each dashboard query, Grafana's variables filled
// in, parses: promtool checks it as a recording rule.
func TestDashboardPromQL(t *testing.T) {
	promtool := lbtest.Binary(t, "promtool", "/usr/bin/promtool", "prometheus")
	exprs, _ := dashboardExprs(t)
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		e = grafanaVars.Replace(e)
		if strings.Contains(e, "$") {
			t.Errorf("a Grafana variable the test does not know: %s", e)
		}
		q, _ := json.Marshal(e) // a JSON string is a YAML string
		fmt.Fprintf(&b, "      - record: dashboard:query_%d\n        expr: %s\n", i, q)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules on the dashboard's queries: %v\n%s", err, out)
	}
	if want := fmt.Sprintf("SUCCESS: %d rules found", len(exprs)); !strings.Contains(string(out), want) {
		t.Errorf("promtool: %s, want %q", out, want)
	}
}

// alertExpr reads the alert names and expressions of the rules file (the
// YAML written in examples/: "- alert: NAME" then "expr: ..." on one line
// or as a "|" block).
func alerts(t *testing.T) (names []string, exprs []string, text string) {
	t.Helper()
	data, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		if n, ok := strings.CutPrefix(l, "- alert: "); ok {
			names = append(names, n)
		}
		e, ok := strings.CutPrefix(l, "expr: ")
		if !ok {
			continue
		}
		if e == "|" {
			e = ""
			ind := len(lines[i]) - len(strings.TrimLeft(lines[i], " "))
			for i+1 < len(lines) && (strings.TrimSpace(lines[i+1]) == "" || len(lines[i+1])-len(strings.TrimLeft(lines[i+1], " ")) > ind) {
				i++
				e += lines[i] + "\n"
			}
		}
		exprs = append(exprs, e)
	}
	return names, exprs, string(data)
}

// TestAlertRules: promtool accepts the rules file; its expressions use
// only registered metrics; each alert fires on the series it is meant
// for, and not on healthy ones.
func TestAlertRules(t *testing.T) {
	promtool := lbtest.Binary(t, "promtool", "/usr/bin/promtool", "prometheus")
	names, exprs, text := alerts(t)
	reg := registered(t)
	for _, e := range exprs {
		if u := unknownMetrics(reg, e); len(u) > 0 {
			t.Errorf("alert expression uses metrics lbctl does not register %v:\n  %s", u, e)
		}
	}
	out, err := exec.Command(promtool, "check", "rules", alertsFile).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules %s: %v\n%s", alertsFile, err, out)
	}
	if want := fmt.Sprintf("SUCCESS: %d rules found", len(names)); !strings.Contains(string(out), want) {
		t.Errorf("promtool: %s, want %q", out, want)
	}

	// promtool test rules compares annotations too: test a copy without
	// them (their templates were checked above).
	dir := t.TempDir()
	rules := filepath.Join(dir, "alerts.yml")
	if err := os.WriteFile(rules, []byte(dropAnnotations(text)), 0o644); err != nil {
		t.Fatal(err)
	}
	tested := alertTests(rules)
	var covered []string
	for _, m := range regexp.MustCompile(`alertname: (\w+)`).FindAllStringSubmatch(tested, -1) {
		if !slices.Contains(covered, m[1]) {
			covered = append(covered, m[1])
		}
	}
	slices.Sort(covered)
	slices.Sort(names)
	if !slices.Equal(covered, names) {
		t.Errorf("alerts %v, tested %v: every alert needs a case below", names, covered)
	}
	tf := filepath.Join(dir, "alerts_test.yml")
	if err := os.WriteFile(tf, []byte(tested), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "test", "rules", tf).CombinedOutput(); err != nil {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}
}

// dropAnnotations removes every "annotations:" block of a rules file.
func dropAnnotations(text string) string {
	var out []string
	skip := -1
	for _, l := range strings.Split(text, "\n") {
		ind := len(l) - len(strings.TrimLeft(l, " "))
		if skip >= 0 && (strings.TrimSpace(l) == "" || ind > skip) {
			continue
		}
		skip = -1
		if strings.TrimSpace(l) == "annotations:" {
			skip = ind
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// alertTests is a promtool unit test of the rules file: instance a has a
// backend down, a pool with nothing eligible, a rejected reload, an edited
// file, descriptors at 90%, rejections and connect errors at 2/s and 1/s,
// a BGP session down and a maglev table that differs from ok's; instance
// ok has healthy values of the same series and fires nothing.
func alertTests(rules string) string {
	return `rule_files: [` + rules + `]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # pool web: b1 enabled and down (alerts), b2 up but drained; b3 down
      # and disabled (no alert of its own). Nothing in web is eligible.
      - {series: 'lbctl_backend_up{job="lb",instance="a",pool="web",backend="b1"}', values: '0x30'}
      - {series: 'lbctl_backend_admin_state{job="lb",instance="a",pool="web",backend="b1",state="enabled"}', values: '1x30'}
      - {series: 'lbctl_backend_up{job="lb",instance="a",pool="web",backend="b2"}', values: '1x30'}
      - {series: 'lbctl_backend_admin_state{job="lb",instance="a",pool="web",backend="b2",state="enabled"}', values: '0x30'}
      - {series: 'lbctl_backend_up{job="lb",instance="a",pool="web",backend="b3"}', values: '0x30'}
      - {series: 'lbctl_backend_admin_state{job="lb",instance="a",pool="web",backend="b3",state="enabled"}', values: '0x30'}
      # pool api: one backend up and enabled.
      - {series: 'lbctl_backend_up{job="lb",instance="a",pool="api",backend="c1"}', values: '1x30'}
      - {series: 'lbctl_backend_admin_state{job="lb",instance="a",pool="api",backend="c1",state="enabled"}', values: '1x30'}
      - {series: 'lbctl_config_last_reload_successful{job="lb",instance="a"}', values: '0x30'}
      - {series: 'lbctl_config_last_reload_successful{job="lb",instance="ok"}', values: '1x30'}
      - {series: 'lbctl_config_file_changed{job="lb",instance="a"}', values: '1x30'}
      - {series: 'lbctl_config_file_changed{job="lb",instance="ok"}', values: '0x30'}
      - {series: 'lbctl_build_info{job="lb",instance="a",version="v1",commit="c",goversion="go"}', values: '1x30'}
      - {series: 'lbctl_build_info{job="lb",instance="ok",version="v1",commit="c",goversion="go"}', values: '1x30'}
      - {series: 'process_open_fds{job="lb",instance="a"}', values: '900x30'}
      - {series: 'process_max_fds{job="lb",instance="a"}', values: '1000x30'}
      - {series: 'process_open_fds{job="lb",instance="ok"}', values: '100x30'}
      - {series: 'process_max_fds{job="lb",instance="ok"}', values: '1000x30'}
      - {series: 'process_open_fds{job="other",instance="x"}', values: '999x30'}
      - {series: 'process_max_fds{job="other",instance="x"}', values: '1000x30'}
      - {series: 'lbctl_connections_rejected_total{job="lb",instance="a",listener="web",reason="no_backend"}', values: '0+120x30'}
      - {series: 'lbctl_connections_rejected_total{job="lb",instance="ok",listener="web",reason="acl"}', values: '0+6x30'}
      - {series: 'lbctl_backend_connect_errors_total{job="lb",instance="a",pool="web",backend="b1"}', values: '0+60x30'}
      - {series: 'lbctl_backend_connect_errors_total{job="lb",instance="ok",pool="web",backend="b1"}', values: '0+1x30'}
      - {series: 'lbctl_bgp_peer_up{job="lb",instance="a",peer="10.0.0.1"}', values: '0x30'}
      - {series: 'lbctl_bgp_peer_up{job="lb",instance="ok",peer="10.0.0.1"}', values: '1x30'}
      # pool web's table differs between a and ok; pool api's is the same.
      - {series: 'lbctl_pool_table_info{job="lb",instance="a",pool="web",digest="d1"}', values: '1x30'}
      - {series: 'lbctl_pool_table_info{job="lb",instance="ok",pool="web",digest="d2"}', values: '1x30'}
      - {series: 'lbctl_pool_table_info{job="lb",instance="a",pool="api",digest="d3"}', values: '1x30'}
      - {series: 'lbctl_pool_table_info{job="lb",instance="ok",pool="api",digest="d3"}', values: '1x30'}
    alert_rule_test:
      - eval_time: 20m
        alertname: LbctlBackendDown
        exp_alerts:
          - exp_labels: {severity: warning, job: lb, instance: a, pool: web, backend: b1}
      - eval_time: 20m
        alertname: LbctlPoolNoEligibleBackend
        exp_alerts:
          - exp_labels: {severity: critical, job: lb, instance: a, pool: web}
      - eval_time: 20m
        alertname: LbctlConfigReloadFailed
        exp_alerts:
          - exp_labels: {severity: warning, job: lb, instance: a}
      - eval_time: 10m
        alertname: LbctlConfigNotInForce
        exp_alerts: []
      - eval_time: 20m
        alertname: LbctlConfigNotInForce
        exp_alerts:
          - exp_labels: {severity: warning, job: lb, instance: a}
      - eval_time: 20m
        alertname: LbctlDescriptorsNearLimit
        exp_alerts:
          - exp_labels: {severity: warning, job: lb, instance: a}
      - eval_time: 20m
        alertname: LbctlRejectionsRising
        exp_alerts:
          - exp_labels: {severity: warning, job: lb, instance: a, listener: web, reason: no_backend}
      - eval_time: 20m
        alertname: LbctlBGPPeerDown
        exp_alerts:
          - exp_labels: {severity: warning, job: lb, instance: a, peer: 10.0.0.1}
      - eval_time: 20m
        alertname: LbctlMaglevTablesDiffer
        exp_alerts:
          - exp_labels: {severity: warning, pool: web}
      - eval_time: 20m
        alertname: LbctlBackendConnectErrors
        exp_alerts:
          - exp_labels: {severity: warning, job: lb, instance: a, pool: web, backend: b1}
`
}
