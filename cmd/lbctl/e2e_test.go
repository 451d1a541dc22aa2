package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"go.uber.org/goleak"
)

// The tests here run the real binary, built once.
var lbctlBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lbctl-e2e")
	if err != nil {
		panic(err)
	}
	lbctlBin = filepath.Join(dir, "lbctl")
	out, err := exec.Command("go", "build", "-race", "-o", lbctlBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build lbctl: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		// The tests start goroutines too (readers of child output, notify
		// sockets, HTTP clients): none may outlive them.
		http.DefaultClient.CloseIdleConnections()
		if err := goleak.Find(goleak.IgnoreAnyFunction("github.com/lbctl/lbctl/pkg/tcpproxy.(*engine).run")); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines left behind:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// runLbctl runs the binary to completion and returns its output and exit
// status.
func runLbctl(t *testing.T, args ...string) (string, int) {
	t.Helper()
	return runLbctlIn(t, "", nil, args...)
}

// runLbctlIn runs the binary in dir ("": here) with env added to
// the test's, $LBCTL_CONFIG cleared, and returns its output and exit status.
func runLbctlIn(t *testing.T, dir string, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(lbctlBin, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "LBCTL_CONFIG="), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("run lbctl %v: %v", args, err)
	}
	return out.String(), 0
}

// freePort returns a loopback address whose port was free a moment ago
// and that no other call in this process got (lbtest.FreePort): the
// kernel may hand the port it just freed out again at once, and a test
// that takes several (the upgrade's five listeners) must get distinct ones.
func freePort(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVersion(t *testing.T) {
	out, code := runLbctl(t, "version")
	if code != 0 || !strings.HasPrefix(out, "lbctl ") || !strings.Contains(out, "go1.") {
		t.Fatalf("version: exit %d, %q", code, out)
	}
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	valid := writeFile(t, dir, "ok.toml", "[listeners.a]\nbind = \"127.0.0.1:8080\"\npool = \"p\"\n[pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:9001\"\n")
	invalid := writeFile(t, dir, "bad.toml", "[listeners.a]\nbind = \"127.0.0.1:8080\"\npool = \"nope\"\nbogus = 1\n")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"valid config", []string{"validate", "--config", valid}, 0, []string{"valid"}},
		{"invalid config lists every problem", []string{"validate", "--config", invalid}, 2,
			[]string{"bad.toml:3: listeners.a.pool", "bad.toml:4: listeners.a.bogus"}},
		{"missing config file", []string{"validate", "--config", filepath.Join(dir, "none.toml")}, 2, []string{"none.toml"}},
		{"serve with invalid config", []string{"serve", "--config", invalid}, 2, []string{"bad.toml:3"}},
		{"unknown flag", []string{"validate", "--nope"}, 2, []string{"unknown flag"}},
		{"unknown command", []string{"frobnicate"}, 2, []string{"unknown command"}},
		{"missing argument", []string{"backend", "drain", "web"}, 2, []string{"accepts 2 arg"}},
		{"missing action", []string{"backend"}, 2, []string{"missing or unknown action"}},
		{"unknown action", []string{"backend", "frob", "web", "1.2.3.4:80"}, 2, []string{"missing or unknown action"}},
		{"missing command", nil, 2, []string{"missing command"}},
		{"admin API unreachable", []string{"status", "--admin", freePort(t)}, 1, []string{"cannot reach lbctl at 127.0.0.1:", "(the admin API)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := runLbctl(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; output:\n%s", code, tc.code, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// proc is an lbctl serve process started by a test.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	logs   *bytes.Buffer
	admin  string
	front  string
	config string
	top    string // top-level keys written first in the config (a setup may set them)
	exited chan error
}

// startProc runs `prefix... lbctl serve --config FILE` with a config of
// one TCP listener in front of backends.
func startProc(t *testing.T, prefix []string, extra string, backends ...string) *proc {
	t.Helper()
	return startProcWith(t, nil, prefix, extra, backends...)
}

// startProcWith is startProc with setup, when not nil, run before the
// config is written and the process started: it may change d.front or
// d.cmd (environment, inherited files).
func startProcWith(t *testing.T, setup func(d *proc), prefix []string, extra string, backends ...string) *proc {
	t.Helper()
	d := &proc{t: t, admin: freePort(t), front: freePort(t), logs: &bytes.Buffer{}, exited: make(chan error, 1)}
	d.config = filepath.Join(t.TempDir(), "lbctl.toml")
	args := append(append([]string{}, prefix...), lbctlBin, "serve", "--config", d.config)
	d.cmd = exec.Command(args[0], args[1:]...)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if setup != nil {
		setup(d)
	}
	d.writeConfig(extra, backends...)
	d.start()
	lbtest.Eventually(t, 20*time.Second, func() bool { return d.get("/readyz") == 200 }, "lbctl not ready")
	return d
}

func (d *proc) writeConfig(extra string, backends ...string) {
	var b strings.Builder
	fmt.Fprintf(&b, "%sshutdown_timeout = \"5s\"\n[log]\nlevel = \"debug\"\n[admin]\nbind = %q\n%s\n", d.top, d.admin, extra)
	fmt.Fprintf(&b, "[listeners.web]\nbind = %q\npool = \"web\"\n[pools.web]\n[pools.web.health]\ncheck = \"none\"\n", d.front)
	for _, be := range backends {
		fmt.Fprintf(&b, "[[pools.web.backends]]\naddress = %q\n", be)
	}
	if err := os.WriteFile(d.config, []byte(b.String()), 0o644); err != nil {
		d.t.Fatal(err)
	}
}

func (d *proc) get(path string) int {
	resp, err := http.Get("http://" + d.admin + path)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func (d *proc) metric(line string) bool {
	resp, err := http.Get("http://" + d.admin + "/metrics")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return bytes.Contains(b, []byte(line))
}

// start starts d.cmd; the test's cleanup kills it, and shows its logs
// when the test failed.
func (d *proc) start() {
	d.t.Helper()
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	d.t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.exited
		if d.t.Failed() {
			d.t.Logf("lbctl logs:\n%s", d.logs)
		}
	})
}

// stop sends SIGTERM and returns the exit status.
func (d *proc) stop() int {
	d.t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	return d.wait()
}

// wait returns the exit status once the process ends.
func (d *proc) wait() int {
	d.t.Helper()
	select {
	case err := <-d.exited:
		d.exited <- err
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		return 0
	case <-time.After(20 * time.Second):
		d.t.Fatal("lbctl did not exit")
		return -1
	}
}

// roundTrip sends msg through the front listener to an echo backend.
func roundTrip(t *testing.T, addr string, msg []byte) []byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() {
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := lbtest.ReadAllTimeout(t, c, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestServeReloadAndStop(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	b := lbtest.NewTCP(t, lbtest.Named("b"))
	d := startProc(t, nil, "", a.Addr)
	if got := roundTrip(t, d.front, nil); string(got) != "a" {
		t.Fatalf("got %q, want a", got)
	}

	// SIGHUP with a new backend: both serve, same socket.
	d.writeConfig("", a.Addr, b.Addr)
	d.cmd.Process.Signal(syscall.SIGHUP)
	lbtest.Eventually(t, 10*time.Second, func() bool {
		return d.metric(`lbctl_config_reloads_total{result="success"} 1`)
	}, "reload not counted")
	for _, m := range []string{"lbctl_config_last_reload_successful 1", "lbctl_config_file_changed 0",
		"lbctl_tcp_loop_missed_wakeups_total 0", "lbctl_tcp_loop_promote_failures_total 0"} {
		if !d.metric(m) {
			t.Errorf("after a good reload, /metrics has no %q", m)
		}
	}
	seen := map[string]bool{}
	for i := 0; i < 4; i++ {
		seen[string(roundTrip(t, d.front, nil))] = true
	}
	if !seen["a"] || !seen["b"] {
		t.Fatalf("after reload, served by %v, want a and b", seen)
	}

	// SIGHUP with an invalid file: rejected, the old config keeps serving.
	os.WriteFile(d.config, []byte("[listeners.web]\nbind = 1\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	lbtest.Eventually(t, 10*time.Second, func() bool {
		return d.metric(`lbctl_config_reloads_total{result="failure"} 1`)
	}, "failed reload not counted")
	// The invalid file is not in force: both show it.
	for _, m := range []string{"lbctl_config_last_reload_successful 0", "lbctl_config_file_changed 1"} {
		if !d.metric(m) {
			t.Errorf("after a rejected reload, /metrics has no %q", m)
		}
	}
	if got := roundTrip(t, d.front, nil); len(got) != 1 {
		t.Fatalf("after a rejected reload got %q", got)
	}
	if code := d.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
}

// TestSplicePath proves that bulk bytes move with splice(2), by tracing the
// real binary.
func TestSplicePath(t *testing.T) {
	strace := lbtest.Binary(t, "strace", "/usr/bin/strace", "strace")
	be := lbtest.NewTCP(t, lbtest.Echo)
	d := startProc(t, nil, "", be.Addr)

	msg := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	n := splicesDuring(t, strace, d.cmd.Process.Pid, func() {
		got := roundTrip(t, d.front, msg)
		if sha256.Sum256(got) != sha256.Sum256(msg) {
			t.Fatalf("echo through lbctl under strace: %d bytes back, want %d identical", len(got), len(msg))
		}
	})
	if n < 4 {
		t.Fatalf("%d splice calls traced for 4 MiB each way, want many", n)
	}
}

// splicesDuring attaches strace to the process pid (all its threads),
// waits until strace says it is attached, runs fn, detaches, and returns
// how many splice(2) calls were traced. It skips the test where ptrace is
// not permitted.
func splicesDuring(t *testing.T, strace string, pid int, fn func()) int {
	t.Helper()
	trace := filepath.Join(t.TempDir(), "trace")
	st := exec.Command(strace, "-f", "-e", "trace=splice", "-o", trace, "-p", strconv.Itoa(pid))
	stderr, err := st.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // on a failure in fn: never leave strace attached
		if st.ProcessState == nil {
			st.Process.Kill()
			st.Wait()
		}
	})
	attached := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		ok := false
		for sc.Scan() {
			if !ok && strings.Contains(sc.Text(), "attached") {
				ok = true
				attached <- true
			}
		}
		if !ok {
			attached <- false
		}
	}()
	select {
	case ok := <-attached:
		if !ok {
			st.Wait()
			t.Skip("strace could not attach (ptrace not permitted here)")
		}
	case <-time.After(10 * time.Second):
		st.Process.Kill()
		st.Wait()
		t.Fatal("strace did not attach")
	}
	fn()
	st.Process.Signal(syscall.SIGINT) // strace detaches and exits; the process runs on
	st.Wait()
	out, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(out, []byte("splice("))
}

func TestClientCommands(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Named("a"))
	dir := t.TempDir()
	token := writeFile(t, dir, "token", "  s3cret\n")
	wrong := writeFile(t, dir, "wrong", "nope")
	d := startProc(t, nil, fmt.Sprintf("token_file = %q", token), be.Addr)
	admin := []string{"--admin", d.admin}

	out, code := runLbctl(t, append([]string{"status", "--token-file", token}, admin...)...)
	if code != 0 || !strings.Contains(out, be.Addr) || !strings.Contains(out, "enabled") {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	out, code = runLbctl(t, append([]string{"status", "--json", "--token-file", token}, admin...)...)
	if code != 0 || !strings.Contains(out, `"listeners"`) || !strings.Contains(out, `"admin": "enabled"`) {
		t.Fatalf("status --json: exit %d\n%s", code, out)
	}
	out, code = runLbctl(t, append([]string{"status", "--token-file", wrong}, admin...)...)
	if code != 1 || !strings.Contains(out, "401") {
		t.Fatalf("status with a wrong token: exit %d\n%s", code, out)
	}
	out, code = runLbctl(t, append([]string{"backend", "drain", "web", be.Addr, "--token-file", token}, admin...)...)
	if code != 0 || !strings.Contains(out, "draining") {
		t.Fatalf("backend drain: exit %d\n%s", code, out)
	}
	out, code = runLbctl(t, append([]string{"backend", "enable", "nope", be.Addr, "--token-file", token}, admin...)...)
	if code != 1 || !strings.Contains(out, "unknown pool") {
		t.Fatalf("backend enable on an unknown pool: exit %d\n%s", code, out)
	}
	out, code = runLbctl(t, append([]string{"reload", "--token-file", token}, admin...)...)
	if code != 0 || !strings.Contains(out, "reloaded") {
		t.Fatalf("reload: exit %d\n%s", code, out)
	}
	// The drain survives the reload while the backend stays in the config.
	out, _ = runLbctl(t, append([]string{"status", "--token-file", token}, admin...)...)
	if !strings.Contains(out, "draining") {
		t.Fatalf("drain lost across reload:\n%s", out)
	}
	os.WriteFile(d.config, []byte("oops = 1\n"), 0o644)
	out, code = runLbctl(t, append([]string{"reload", "--token-file", token}, admin...)...)
	if code != 1 || !strings.Contains(out, "oops") {
		t.Fatalf("reload of an invalid file: exit %d\n%s", code, out)
	}
}
