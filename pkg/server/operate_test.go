package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// startFile starts a server from toml written to a file (so that
// lbctl_config_file_changed has a file to look at), logging to core when
// not nil. It returns the harness and the file's path.
func startFile(t *testing.T, toml string, core zapcore.Core) (*harness, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "lbctl.toml")
	if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	h := &harness{t: t, m: metrics.New(reg), reg: reg}
	log := zap.NewNop()
	if core != nil {
		log = zap.New(core)
	}
	if h.srv, err = New(cfg, Options{Log: log, Metrics: h.m}); err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupDrain)
		defer cancel()
		h.srv.Shutdown(ctx)
	})
	return h, path
}

// reloadFile writes toml to path and reloads the server from it.
func (h *harness) reloadFile(path, toml string) error {
	h.t.Helper()
	if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
		h.t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.srv.Reload(cfg)
}

// TestOperatingMetrics: build info, the last reload's result and time,
// whether the file is the configuration in force, each backend's admin
// state and weight, all with their values, and the series of a removed
// backend gone.
func TestOperatingMetrics(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Echo)
	b := lbtest.NewTCP(t, lbtest.Echo)
	conf := listenerTOML("l", "p", "") + poolTOML("p", "", a.Addr+"=3", b.Addr) + noHealth
	before := time.Now()
	h, path := startFile(t, conf, nil)
	v := func(name string, labels ...string) float64 { t.Helper(); return value(t, h.reg, name, labels...) }

	if got := v("lbctl_build_info", "version", "dev", "goversion", runtime.Version()); got != 1 {
		t.Errorf("build_info = %v, want 1", got)
	}
	if got := v("lbctl_config_last_reload_successful"); got != 1 {
		t.Errorf("after start: last_reload_successful = %v, want 1", got)
	}
	started := v("lbctl_config_last_reload_success_timestamp_seconds")
	if at := time.Unix(0, int64(started*1e9)); at.Before(before.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
		t.Errorf("last_reload_success_timestamp %v is not the start (%v)", at, before)
	}

	admin := func(backend string) string {
		t.Helper()
		var in []string
		for _, s := range metrics.AdminStates {
			if v("lbctl_backend_admin_state", "pool", "p", "backend", backend, "state", s) == 1 {
				in = append(in, s)
			}
		}
		return strings.Join(in, "+")
	}
	weight := func(backend string) float64 {
		t.Helper()
		return v("lbctl_backend_weight", "pool", "p", "backend", backend)
	}
	if admin(a.Addr) != "enabled" || admin(b.Addr) != "enabled" || weight(a.Addr) != 3 || weight(b.Addr) != 1 {
		t.Errorf("at start: a %s weight %v, b %s weight %v; want enabled 3, enabled 1",
			admin(a.Addr), weight(a.Addr), admin(b.Addr), weight(b.Addr))
	}
	if _, err := h.srv.SetBackendAdmin("p", b.Addr, balancer.Draining); err != nil {
		t.Fatal(err)
	}
	if got := admin(b.Addr); got != "draining" {
		t.Errorf("after drain: admin state %q, want draining alone", got)
	}
	if _, err := h.srv.SetBackendAdmin("p", b.Addr, balancer.Disabled); err != nil {
		t.Fatal(err)
	}
	if got := admin(b.Addr); got != "disabled" {
		t.Errorf("after disable: admin state %q, want disabled alone", got)
	}
	seven := 7
	if _, err := h.srv.SetWeightOverride("p", a.Addr, &seven); err != nil {
		t.Fatal(err)
	}
	if got := weight(a.Addr); got != 7 {
		t.Errorf("after override: weight %v, want 7", got)
	}
	if _, err := h.srv.SetWeightOverride("p", a.Addr, nil); err != nil {
		t.Fatal(err)
	}
	if got := weight(a.Addr); got != 3 {
		t.Errorf("after reset: weight %v, want 3", got)
	}

	// The file: unchanged, edited, reloaded, gone.
	if got := v("lbctl_config_file_changed"); got != 0 {
		t.Errorf("file as loaded: config_file_changed = %v, want 0", got)
	}
	edited := conf + "# edited\n"
	if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := v("lbctl_config_file_changed"); got != 1 {
		t.Errorf("file edited: config_file_changed = %v, want 1", got)
	}

	// A reload that fails (its new listener's port is taken) keeps the
	// time of the last success.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if err := h.reloadFile(path, conf+fmt.Sprintf("[listeners.x]\nbind = %q\npool = \"p\"\n", busy.Addr())); err == nil {
		t.Fatal("reload onto a busy port succeeded")
	}
	if got := v("lbctl_config_last_reload_successful"); got != 0 {
		t.Errorf("after a failed reload: last_reload_successful = %v, want 0", got)
	}
	if got := v("lbctl_config_last_reload_success_timestamp_seconds"); got != started {
		t.Errorf("after a failed reload: last success at %v, want %v (the start)", got, started)
	}
	if got := v("lbctl_config_file_changed"); got != 1 {
		t.Errorf("file not in force: config_file_changed = %v, want 1", got)
	}

	// A good reload without b: b's series go, the file is in force.
	if err := h.reloadFile(path, listenerTOML("l", "p", "")+poolTOML("p", "", a.Addr+"=3")+noHealth); err != nil {
		t.Fatal(err)
	}
	if got := v("lbctl_config_last_reload_successful"); got != 1 {
		t.Errorf("after a good reload: last_reload_successful = %v, want 1", got)
	}
	if got := v("lbctl_config_last_reload_success_timestamp_seconds"); got < started {
		t.Errorf("after a good reload: last success at %v, before the start %v", got, started)
	}
	if got := v("lbctl_config_file_changed"); got != 0 {
		t.Errorf("file reloaded: config_file_changed = %v, want 0", got)
	}
	for _, name := range []string{"lbctl_backend_admin_state", "lbctl_backend_weight"} {
		if _, ok := sample(t, h.reg, name, map[string]string{"backend": b.Addr}); ok {
			t.Errorf("%s of the removed backend is still exported", name)
		}
	}
	if got := admin(a.Addr); got != "enabled" {
		t.Errorf("kept backend: admin state %q, want enabled", got)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if got := v("lbctl_config_file_changed"); got != 1 {
		t.Errorf("file removed: config_file_changed = %v, want 1", got)
	}
}

// TestConnectionDuration: every TCP connection and UDP session is
// observed once, when it ends, in its listener's histogram; a refused
// connection is not; the series goes with its listener.
func TestConnectionDuration(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	ube := lbtest.NewUDP(t, "u", lbtest.UDPEcho)
	h := startServer(t, listenerTOML("l", "p", "")+listenerTOML("deny", "p", `deny = ["127.0.0.0/8"]`)+
		poolTOML("p", "", be.Addr)+noHealth+
		udpListenerTOML("u", "q", "responses = 1")+poolTOML("q", "", ube.Addr)+"[pools.q.health]\ncheck = \"none\"\n")
	count := func(listener string) float64 {
		v, _ := sample(t, h.reg, "lbctl_connection_duration_seconds", map[string]string{"listener": listener})
		return v
	}
	for range 3 {
		echoRoundTrip(t, h.addr("l"), []byte("hello"))
	}
	refused(t, h.addr("deny"))
	c := udpClient(t)
	if got := udpExchange(c, h.udpAddr("u"), []byte("ping"), 5*time.Second); string(got) != "ping" {
		t.Fatalf("udp exchange: got %q", got)
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		return count("l") == 3 && count("u") == 1, fmt.Sprintf("observed tcp %v (want 3), udp %v (want 1)", count("l"), count("u"))
	})
	if got := count("deny"); got != 0 {
		t.Errorf("refused connections observed: %v, want 0", got)
	}
	// An open connection is observed only once it ends.
	open := h.dial("l")
	if _, err := open.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	open.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := open.Read(buf); err != nil {
		t.Fatal(err)
	}
	if got := count("l"); got != 3 {
		t.Errorf("open connection observed: %v, want 3", got)
	}
	open.Close()
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		return count("l") == 4, fmt.Sprintf("observed %v, want 4 once the connection ended", count("l"))
	})
	cfg, err := config.Parse("test.toml", []byte(listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+noHealth))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if _, ok := sample(t, h.reg, "lbctl_connection_duration_seconds", map[string]string{"listener": "u"}); ok {
		t.Error("the removed listener's duration series is still exported")
	}
}

// TestReloadLogSaysWhatChanged: the reload line names every key that
// changed, with its old and new value, one entry per listener, pool or
// top-level key.
func TestReloadLogSaysWhatChanged(t *testing.T) {
	a, b, c := lbtest.ClosedPort(t), lbtest.ClosedPort(t), lbtest.ClosedPort(t)
	core, logs := observer.New(zap.InfoLevel)
	h, path := startFile(t, listenerTOML("api", "p", `idle_timeout = "1m"`)+listenerTOML("old", "p", "")+
		poolTOML("p", "", a+"=3", b)+noHealth, core)
	next := "shutdown_timeout = \"10s\"\n[log]\nlevel = \"debug\"\n" +
		listenerTOML("api", "p", `idle_timeout = "5m"`) + listenerTOML("new", "q", "") +
		poolTOML("p", `retries = 1`, a+"=5", c) + "[pools.p.health]\ncheck = \"none\"\ninterval = \"5s\"\n" +
		poolTOML("q", "", a, c) + "[pools.q.health]\ncheck = \"none\"\n"
	if err := h.reloadFile(path, next); err != nil {
		t.Fatal(err)
	}
	entries := logs.FilterMessage("configuration reloaded").All()
	if len(entries) != 1 {
		t.Fatalf("%d reload lines, want 1", len(entries))
	}
	var got []string
	for _, x := range entries[0].ContextMap()["changes"].([]any) {
		got = append(got, x.(string))
	}
	want := []string{
		"listener api: idle_timeout 1m -> 5m",
		"listener new: added (tcp 127.0.0.1:0, pool q)",
		"listener old: removed",
		"log.level info -> debug",
		"pool p: retries 2 -> 1, health.interval 2s -> 5s, weight of " + a + " 3 -> 5, backend " + c + " added, backend " + b + " removed",
		"pool q: added (2 backends)",
		"shutdown_timeout 30s -> 10s",
	}
	if !slices.Equal(got, want) {
		t.Errorf("changes:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// TestShutdownTimeoutLogCountsConnections: the line at the end of the
// shutdown drain says how many connections and sessions it closed.
func TestShutdownTimeoutLogCountsConnections(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	ube := lbtest.NewUDP(t, "u", lbtest.UDPEcho)
	core, logs := observer.New(zap.InfoLevel)
	h := startServerLog(t, listenerTOML("l", "p", "")+poolTOML("p", "", be.Addr)+noHealth+
		udpListenerTOML("u", "q", "")+poolTOML("q", "", ube.Addr)+"[pools.q.health]\ncheck = \"none\"\n", core)
	for range 2 {
		c := h.dial("l")
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			t.Fatal(err) // echoed: the connection is established
		}
	}
	if got := udpExchange(udpClient(t), h.udpAddr("u"), []byte("ping"), 5*time.Second); string(got) != "ping" {
		t.Fatalf("udp exchange: got %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	h.srv.Shutdown(ctx)
	entries := logs.FilterMessage("shutdown timeout reached, closing the remaining connections").All()
	if len(entries) != 1 {
		t.Fatalf("%d shutdown timeout lines, want 1", len(entries))
	}
	m := entries[0].ContextMap()
	if m["connections"] != int64(2) || m["udp_sessions"] != int64(1) {
		t.Errorf("shutdown timeout line: connections=%v udp_sessions=%v, want 2 and 1", m["connections"], m["udp_sessions"])
	}
}

// TestAccessLogRetries: the access line says how many backends a
// connection tried, and which failed.
func TestAccessLogRetries(t *testing.T) {
	live := lbtest.NewTCP(t, lbtest.Echo)
	dead, dead2 := lbtest.ClosedPort(t), lbtest.ClosedPort(t)
	core, logs := observer.New(zap.InfoLevel)
	// Smooth weighted round-robin picks the heaviest first: dead.
	h := startServerLog(t, listenerTOML("l", "p", "")+listenerTOML("none", "n", "")+
		poolTOML("p", "", dead+"=5", live.Addr+"=1")+noHealth+
		poolTOML("n", "retries = 1", dead, dead2)+"[pools.n.health]\ncheck = \"none\"\n", core)
	echoRoundTrip(t, h.addr("l"), []byte("hello"))
	refused(t, h.addr("none"))
	access := func(listener string) map[string]any {
		t.Helper()
		var m map[string]any
		lbtest.Until(t, 10*time.Second, func() (bool, string) {
			for _, e := range logs.FilterMessage("connection").All() {
				if e.ContextMap()["listener"] == listener {
					m = e.ContextMap()
					return true, ""
				}
			}
			return false, "no access line for listener " + listener
		})
		return m
	}
	m := access("l")
	if m["backend"] != live.Addr || m["attempts"] != int64(2) || !slices.Equal(strs(m["failed"]), []string{dead}) {
		t.Errorf("retried connection: backend %v attempts %v failed %v; want %s, 2, [%s]", m["backend"], m["attempts"], m["failed"], live.Addr, dead)
	}
	m = access("none")
	failed := strs(m["failed"])
	slices.Sort(failed)
	want := []string{dead, dead2}
	slices.Sort(want)
	if m["end"] != "backend_unavailable" || m["attempts"] != int64(2) || !slices.Equal(failed, want) {
		t.Errorf("unavailable: end %v attempts %v failed %v; want backend_unavailable, 2, %v", m["end"], m["attempts"], m["failed"], want)
	}
	echoRoundTrip(t, h.addr("l"), []byte("hello")) // dead is ejected now: one attempt
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		var last map[string]any
		n := 0
		for _, e := range logs.FilterMessage("connection").All() {
			if e.ContextMap()["listener"] == "l" {
				last, n = e.ContextMap(), n+1
			}
		}
		if n < 2 {
			return false, "no second access line"
		}
		if last["attempts"] != int64(1) || last["failed"] != nil {
			t.Errorf("direct connection: attempts %v failed %v, want 1 and no field", last["attempts"], last["failed"])
		}
		return true, ""
	})
}

func strs(v any) []string {
	var out []string
	if l, ok := v.([]any); ok {
		for _, x := range l {
			out = append(out, fmt.Sprint(x))
		}
	}
	return out
}

// TestErrorField: an error of several lines is logged as an array of its
// lines, one of one line as the usual string.
func TestErrorField(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	log := zap.New(core)
	_, err := config.Parse("bad.toml", []byte("[listeners.a]\npool = \"nope\"\nbogus = 1\n"))
	if err == nil {
		t.Fatal("bad config accepted")
	}
	log.Error("multi", ErrorField(err))
	log.Error("single", ErrorField(errors.New("one line")))
	m := logs.FilterMessage("multi").All()[0].ContextMap()
	lines := strs(m["errors"])
	if len(lines) < 2 || m["error"] != nil || strings.Join(lines, "\n") != err.Error() {
		t.Errorf("multi-line error logged as %#v, want its %d lines as an array", m, strings.Count(err.Error(), "\n")+1)
	}
	if m := logs.FilterMessage("single").All()[0].ContextMap(); m["error"] != "one line" || m["errors"] != nil {
		t.Errorf("one-line error logged as %#v", m)
	}
}

// TestDiffTablesAndLists: keys of nested tables carry their table's name,
// arrays of tables say they changed, the admin table says when it takes
// effect, and an unchanged file changes nothing.
func TestDiffTablesAndLists(t *testing.T) {
	parse := func(toml string) *config.Config {
		t.Helper()
		cfg, err := config.Parse("d.toml", []byte(toml))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	base := "[listeners.tls]\nbind = \"127.0.0.1:1443\"\npool = \"p\"\n" +
		"[[listeners.tls.routes]]\nsni = [%q]\npool = \"p\"\n" +
		"[pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:1\"\n" +
		"[admin]\nhosts = [%s]\n"
	old := parse(fmt.Sprintf(base, "a.example.com", ""))
	if got := diff(old, parse(fmt.Sprintf(base, "a.example.com", ""))); len(got) != 0 {
		t.Errorf("the same file: changes %q, want none", got)
	}
	got := diff(old, parse(fmt.Sprintf(base, "b.example.com", `"lb1.internal"`)))
	want := []string{
		"admin.hosts [] -> [lb1.internal] (takes effect at the next restart)",
		"listener tls: routes changed",
	}
	if !slices.Equal(got, want) {
		t.Errorf("changes:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	if s := snake("TLSInspectTimeout") + " " + snake("MaxConnectionsPerClient") + " " + snake("SNIRegex"); s != "tls_inspect_timeout max_connections_per_client sni_regex" {
		t.Errorf("snake: %s", s)
	}
}

// TestUDPAccessLogAttempts: a UDP session's access line says how many
// backends it tried.
func TestUDPAccessLogAttempts(t *testing.T) {
	ube := lbtest.NewUDP(t, "u", lbtest.UDPEcho)
	core, logs := observer.New(zap.InfoLevel)
	h := startServerLog(t, udpListenerTOML("u", "q", "responses = 1")+poolTOML("q", "", ube.Addr)+
		"[pools.q.health]\ncheck = \"none\"\n", core)
	if got := udpExchange(udpClient(t), h.udpAddr("u"), []byte("ping"), 5*time.Second); string(got) != "ping" {
		t.Fatalf("udp exchange: got %q", got)
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		e := logs.FilterMessage("session").All()
		if len(e) == 0 {
			return false, "no session access line"
		}
		if m := e[0].ContextMap(); m["attempts"] != int64(1) || m["backend"] != ube.Addr {
			t.Errorf("session line: attempts %v backend %v, want 1 and %s", m["attempts"], m["backend"], ube.Addr)
		}
		return true, ""
	})
}
