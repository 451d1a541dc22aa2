package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// The tests here run the real binary with a control socket, the way the
// systemd unit does: RuntimeDirectory=lbctl sets $RUNTIME_DIRECTORY for
// ExecStart and ExecReload alike.

// startCtl runs `lbctl serve --config config` with env added to the
// test's, and waits until socket answers /readyz.
func startCtl(t *testing.T, config, socket string, env ...string) *proc {
	t.Helper()
	p := startCtlNoWait(t, config, env...)
	lbtest.Eventually(t, 20*time.Second, func() bool { return unixGetCode(socket, "/readyz") == 200 }, "lbctl not ready on its control socket")
	return p
}

// startCtlNoWait is startCtl without waiting: for a config the test
// writes whole (ctlConfig), so the proc has no admin, front or config.
func startCtlNoWait(t *testing.T, config string, env ...string) *proc {
	t.Helper()
	p := &proc{t: t, logs: &bytes.Buffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(lbctlBin, "serve", "--config", config)
	p.cmd.Env = append(append(os.Environ(), "LBCTL_CONFIG=", "RUNTIME_DIRECTORY="), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	p.start()
	return p
}

func unixGetCode(path, urlPath string) int {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	resp, err := c.Get("http://lbctl" + urlPath)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// ctlConfig is a config of one listener in front of backends, with extra
// (top-level keys, tables) before it.
func ctlConfig(t *testing.T, path, extra string, backends ...string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "shutdown_timeout = \"2s\"\n%s\n[listeners.web]\nbind = \"127.0.0.1:0\"\npool = \"web\"\n[pools.web]\n[pools.web.health]\ncheck = \"none\"\n", extra)
	for _, be := range backends {
		fmt.Fprintf(&b, "[[pools.web.backends]]\naddress = %q\n", be)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestReloadWithoutAdmin: the systemd case of the issue. No [admin]
// table; $RUNTIME_DIRECTORY set, as RuntimeDirectory=lbctl does. `lbctl
// reload --config FILE` (the unit's ExecReload) works through the control
// socket, so does status; the socket is private (0600) and gone after exit.
func TestReloadWithoutAdmin(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	b := lbtest.NewTCP(t, lbtest.Named("b"))
	runDir := t.TempDir()
	sock := filepath.Join(runDir, "lbctl.sock")
	conf := filepath.Join(t.TempDir(), "lbctl.toml")
	ctlConfig(t, conf, "", a.Addr)
	env := []string{"RUNTIME_DIRECTORY=" + runDir}
	p := startCtl(t, conf, sock, env...)

	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket: %v %v, want a socket of mode 0600", fi.Mode(), err)
	}
	ctlConfig(t, conf, "", a.Addr, b.Addr)
	out, code := runLbctlIn(t, t.TempDir(), env, "reload", "--config", conf)
	if code != 0 || strings.TrimSpace(out) != "reloaded" {
		t.Fatalf("reload without [admin]: exit %d\n%s", code, out)
	}
	out, code = runLbctlIn(t, t.TempDir(), env, "status", "--config", conf)
	if code != 0 || !strings.Contains(out, a.Addr) || !strings.Contains(out, b.Addr) {
		t.Fatalf("status after the reload: exit %d\n%s", code, out)
	}
	if !strings.Contains(out, ", config "+conf+"\n") || !strings.Contains(out, "last reload: ok, ") || !strings.HasPrefix(out, "lbctl ") {
		t.Fatalf("status does not tell the process and its last reload:\n%s", out)
	}
	// The JSON tells how the reload went.
	out, code = runLbctlIn(t, t.TempDir(), env, "status", "--json", "--config", conf)
	if code != 0 || !strings.Contains(out, `"result": "ok"`) || !strings.Contains(out, `"config_file": "`+conf+`"`) {
		t.Fatalf("status --json: exit %d\n%s", code, out)
	}
	// A broken file is rejected, with its problem, through the socket too.
	if err := os.WriteFile(conf, []byte("bogus_key = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code = runLbctlIn(t, t.TempDir(), env, "reload", "--config", conf)
	if code != 1 || !strings.Contains(out, "reload rejected") || !strings.Contains(out, "bogus_key") {
		t.Fatalf("reload of a broken file: exit %d\n%s", code, out)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("control socket left after exit: %v", err)
	}
}

// TestReloadAfterAdminBindEdited: with a control socket, an edit of
// [admin] bind does not stop `lbctl reload`; without one, the client says
// it could not reach the new address, and that nothing was rejected.
func TestReloadAfterAdminBindEdited(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	t.Run("with a control socket", func(t *testing.T) {
		runDir := t.TempDir()
		env := []string{"RUNTIME_DIRECTORY=" + runDir}
		conf := filepath.Join(t.TempDir(), "lbctl.toml")
		ctlConfig(t, conf, fmt.Sprintf("[admin]\nbind = %q\n", freePort(t)), a.Addr)
		startCtl(t, conf, filepath.Join(runDir, "lbctl.sock"), env...)
		ctlConfig(t, conf, fmt.Sprintf("[admin]\nbind = %q\n", freePort(t)), a.Addr)
		out, code := runLbctlIn(t, t.TempDir(), env, "reload", "--config", conf)
		if code != 0 || strings.TrimSpace(out) != "reloaded" {
			t.Fatalf("reload after an edit of [admin] bind: exit %d\n%s", code, out)
		}
	})
	t.Run("without one", func(t *testing.T) {
		conf := filepath.Join(t.TempDir(), "lbctl.toml")
		old := freePort(t)
		ctlConfig(t, conf, fmt.Sprintf("[admin]\nbind = %q\n", old), a.Addr)
		p := startCtlNoWait(t, conf)
		lbtest.Eventually(t, 20*time.Second, func() bool {
			resp, err := http.Get("http://" + old + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		}, "lbctl not ready")
		edited := freePort(t)
		ctlConfig(t, conf, fmt.Sprintf("[admin]\nbind = %q\n", edited), a.Addr)
		out, code := runLbctlIn(t, t.TempDir(), nil, "reload", "--config", conf)
		if code != 1 || strings.Contains(out, "rejected") || !strings.Contains(out, "cannot reach lbctl at "+edited+" (the admin API)") ||
			!strings.Contains(out, "may still listen on the old address") {
			t.Fatalf("reload after an edit of [admin] bind, no control socket: exit %d\n%s", code, out)
		}
		// The old address still works, as the message says.
		out, code = runLbctlIn(t, t.TempDir(), nil, "reload", "--config", conf, "--admin", old)
		if code != 0 {
			t.Fatalf("reload through the old address: exit %d\n%s", code, out)
		}
		if code := p.stop(); code != 0 {
			t.Fatalf("exit %d after SIGTERM, want 0", code)
		}
	})
}

// TestSocketFlag: --socket needs no config at all; a path nobody answers on
// is an honest failure.
func TestSocketFlag(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	conf := filepath.Join(t.TempDir(), "lbctl.toml")
	ctlConfig(t, conf, fmt.Sprintf("control_socket = %q\n", sock), a.Addr)
	startCtl(t, conf, sock)
	for _, args := range [][]string{
		{"status", "--socket", sock},
		{"reload", "--socket", sock},
		{"backend", "drain", "web", a.Addr, "--socket", sock},
		{"backend", "enable", "web", a.Addr, "--socket", sock},
	} {
		out, code := runLbctlIn(t, t.TempDir(), nil, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
	}
	// The config's control_socket is found through --config alone.
	out, code := runLbctlIn(t, t.TempDir(), nil, "status", "--config", conf)
	if code != 0 || !strings.Contains(out, a.Addr) {
		t.Fatalf("status --config with control_socket: exit %d\n%s", code, out)
	}
	none := filepath.Join(t.TempDir(), "none.sock")
	out, code = runLbctlIn(t, t.TempDir(), nil, "status", "--socket", none)
	if code != 1 || !strings.Contains(out, "cannot reach lbctl at "+none+" (the control socket)") {
		t.Fatalf("status on a missing socket: exit %d\n%s", code, out)
	}
}

// TestControlSocketLifecycle: a stale socket file from a crash is
// replaced; a second lbctl on the same socket refuses to start (exit 1)
// and leaves the first alone; a reload that changes control_socket moves
// the socket.
func TestControlSocketLifecycle(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	runDir := t.TempDir()
	sock := filepath.Join(runDir, "lbctl.sock")
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close() // the file stays, nobody answers: a crashed run's
	env := []string{"RUNTIME_DIRECTORY=" + runDir}
	conf := filepath.Join(t.TempDir(), "lbctl.toml")
	ctlConfig(t, conf, "", a.Addr)
	p := startCtl(t, conf, sock, env...)

	second := startCtlNoWait(t, conf, env...)
	if code := second.wait(); code != 1 || !strings.Contains(second.logs.String(), "answers on it") {
		t.Fatalf("second lbctl on the same control socket: exit %d\n%s", code, second.logs)
	}
	if unixGetCode(sock, "/readyz") != 200 {
		t.Fatal("the first lbctl lost its control socket to the refused second")
	}

	// The file now names another socket, not served yet: the client falls
	// back to $RUNTIME_DIRECTORY's, which is.
	moved := filepath.Join(t.TempDir(), "moved.sock")
	ctlConfig(t, conf, fmt.Sprintf("control_socket = %q\n", moved), a.Addr)
	out, code := runLbctlIn(t, t.TempDir(), env, "reload", "--config", conf)
	if code != 0 {
		t.Fatalf("reload that moves the socket: exit %d\n%s", code, out)
	}
	lbtest.Eventually(t, 10*time.Second, func() bool {
		_, err := os.Lstat(sock)
		return os.IsNotExist(err)
	}, "the old control socket is still there")
	if unixGetCode(moved, "/readyz") != 200 {
		t.Fatal("nothing answers on the moved control socket")
	}
	out, code = runLbctlIn(t, t.TempDir(), env, "status", "--config", conf)
	if code != 0 || !strings.Contains(out, a.Addr) {
		t.Fatalf("status through the moved socket: exit %d\n%s", code, out)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
	if _, err := os.Lstat(moved); !os.IsNotExist(err) {
		t.Fatalf("moved control socket left after exit: %v", err)
	}
}
