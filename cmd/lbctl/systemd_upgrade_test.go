package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"golang.org/x/sys/unix"
)

// TestSystemdUpgrade runs the unit of examples/lbctl.service under a real
// systemd and upgrades it: `lbctl upgrade`, then `systemctl reload`, then
// `systemctl stop`. The new process must become the unit's main process
// (MainPID), its watchdog pings must be accepted, reload must reach it,
// and stop must end it cleanly; a connection open through lbctl lives
// through the upgrade and the reload.
//
// How systemd runs here: this machine's PID 1 is not systemd, so the test
// boots one in a container, systemd-nspawn -b on an overlay of the host's
// root (lower: "/", read-only; upper: a directory of the test holding the
// binary, the unit, a drop-in and the config), mounted in a private mount
// namespace (unshare -m) so that nothing outlives the test. The container
// has its own network namespace (--private-network: loopback only) and
// boots to an empty target (systemd --unit=uptest.target), so none of the
// host's services start in it. The test drives it with nsenter into the
// container's namespaces, and reaches its loopback by creating its own
// sockets (a backend, a client) from a thread joined to the container's
// network namespace. The unit runs as written (DynamicUser=, the sandbox,
// the seccomp filter); the drop-in only shortens WatchdogSec so that a
// refused watchdog ping would show within seconds. Learned on the way:
// --volatile cannot boot the host's root (its /etc is missing), and
// nspawn refuses -D / outright; the overlay is what works.
func TestSystemdUpgrade(t *testing.T) {
	lbtest.NeedRoot(t)
	nspawn := lbtest.Binary(t, "systemd-nspawn", "/usr/bin/systemd-nspawn", "systemd-container")
	curl := lbtest.Binary(t, "curl", "/usr/bin/curl", "curl")
	c := bootContainer(t, nspawn)

	// A backend and, later, a client, both on the container's loopback.
	c.inNetns(t, func() { lbtest.NewTCPAt(t, "127.0.0.1:18081", lbtest.Echo) })
	if out, code := c.run("systemctl", "start", "lbctl"); code != 0 {
		t.Fatalf("systemctl start lbctl: exit %d\n%s\n%s", code, out, c.journal())
	}
	first := c.mainPID(t)
	var conn *net.TCPConn
	c.inNetns(t, func() { conn = dialTCP(t, "127.0.0.1:18080") })
	if err := echoExchange(conn, []byte("before")); err != nil {
		t.Fatalf("through lbctl: %v", err)
	}
	wd := c.show("WatchdogTimestampMonotonic")

	out, code := c.run("/usr/local/bin/lbctl", "upgrade", "--socket", "/run/lbctl/lbctl.sock")
	if code != 0 {
		t.Fatalf("lbctl upgrade: exit %d\n%s\n%s", code, out, c.journal())
	}
	t.Logf("lbctl upgrade: %s", strings.TrimSpace(out))
	second := c.mainPID(t)
	if second == first {
		t.Fatalf("MainPID still %d after the upgrade\n%s", first, c.journal())
	}
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		_, code := c.run("test", "-e", fmt.Sprintf("/proc/%d", first))
		return code != 0, fmt.Sprintf("the old main process %d still runs", first)
	})
	if err := echoExchange(conn, []byte("after the upgrade")); err != nil {
		t.Fatalf("the connection did not survive the upgrade: %v", err)
	}
	// The new main process's watchdog pings are taken (NotifyAccess= lets
	// it send them): the timestamp moves on, and the unit is not killed
	// for a missing ping two watchdog periods later.
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		now := c.show("WatchdogTimestampMonotonic")
		return now != wd && now != "0" && now != "", fmt.Sprintf("watchdog timestamp %s, was %s before the upgrade", now, wd)
	})
	time.Sleep(4 * time.Second) // two WatchdogSec of the drop-in: a refused ping would have killed it
	c.expect(t, map[string]string{"ActiveState": "active", "SubState": "running", "NRestarts": "0",
		"MainPID": strconv.Itoa(second)})

	if out, code := c.run("systemctl", "reload", "lbctl"); code != 0 {
		t.Fatalf("systemctl reload lbctl after the upgrade: exit %d\n%s\n%s", code, out, c.journal())
	}
	metrics, _ := c.run(curl, "-s", "http://127.0.0.1:19090/metrics")
	if !strings.Contains(metrics, `lbctl_config_reloads_total{result="success"} 1`) {
		t.Errorf("the reload did not reach the new process: metrics lack a successful reload\n%s", grepLines(metrics, "reloads"))
	}
	c.expect(t, map[string]string{"ActiveState": "active", "MainPID": strconv.Itoa(second)})
	if err := echoExchange(conn, []byte("after the reload")); err != nil {
		t.Fatalf("the connection did not survive the reload: %v", err)
	}
	if err := closeClean(conn); err != nil {
		t.Errorf("closing the connection: %v", err)
	}

	if out, code := c.run("systemctl", "stop", "lbctl"); code != 0 {
		t.Fatalf("systemctl stop lbctl: exit %d\n%s\n%s", code, out, c.journal())
	}
	c.expect(t, map[string]string{"ActiveState": "inactive", "Result": "success", "MainPID": "0"})
	if _, code := c.run("test", "-e", fmt.Sprintf("/proc/%d", second)); code == 0 {
		t.Errorf("pid %d still runs after systemctl stop", second)
	}
	if t.Failed() {
		t.Logf("journal:\n%s", c.journal())
	}
}

// container is a systemd booted by systemd-nspawn for a test.
type container struct {
	init int // the container's PID 1, as this process sees it
}

// bootContainer boots systemd in a container on an overlay of "/" with
// lbctl, its unit and its config installed, and waits until it runs.
func bootContainer(t *testing.T, nspawn string) *container {
	t.Helper()
	dir := t.TempDir()
	upper, work, root := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "root")
	unit, err := os.ReadFile("../../examples/lbctl.service")
	if err != nil {
		t.Fatal(err)
	}
	files := []struct {
		path, content string
		mode          os.FileMode
	}{
		{"etc/systemd/system/uptest.target", "[Unit]\nDescription=lbctl upgrade test: nothing else starts\n", 0o644},
		{"etc/systemd/system/lbctl.service", string(unit), 0o644},
		{"etc/systemd/system/lbctl.service.d/test.conf", "[Service]\nWatchdogSec=2s\n", 0o644},
		{"etc/lbctl/lbctl.toml", `shutdown_timeout = "5s"
[admin]
bind = "127.0.0.1:19090"
[listeners.web]
bind = "127.0.0.1:18080"
pool = "web"
[pools.web]
  [pools.web.health]
  check = "none"
  [[pools.web.backends]]
  address = "127.0.0.1:18081"
`, 0o644},
	}
	for _, f := range files {
		p := filepath.Join(upper, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.content), f.mode); err != nil {
			t.Fatal(err)
		}
	}
	bin, err := os.ReadFile(lbctlBin)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(upper, "usr/local/bin"), 0o755)
	if err := os.WriteFile(filepath.Join(upper, "usr/local/bin/lbctl"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{work, root} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	logf, err := os.Create(filepath.Join(dir, "nspawn.log"))
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("lbctl-up-%d", os.Getpid())
	// Without systemd on the host there is no scope to allocate: the
	// container stays in the test's cgroup (--keep-unit). Under systemd
	// (sd_booted: /run/systemd/system exists) nspawn allocates its own.
	keep := "--keep-unit"
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		keep = "--quiet"
	}
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
		`mount -t overlay overlay -o lowerdir=/,upperdir="$1",workdir="$2" "$3" && exec "$4" -q -D "$3" -b --private-network --register=no "$6" -M "$5" -- --unit=uptest.target`,
		"sh", upper, work, root, nspawn, name, keep)
	// The unified cgroup hierarchy (v2), as on a current host: under the
	// hybrid one this machine mounts, systemd 252 in the container warns
	// "Supervising process N which is not our child" after MAINPID= names
	// the new process, and at stop SIGKILLs it (Result=signal), though it
	// exited at SIGTERM. With cgroup v2 it follows the cgroup instead.
	cmd.Env = append(os.Environ(), "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	t.Cleanup(func() {
		// systemd-nspawn (the same PID: unshare and sh exec) powers the
		// container off on SIGTERM; the mounts go with its namespace.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "nspawn.log"))
			t.Logf("systemd-nspawn output:\n%s", b)
		}
	})
	c := &container{}
	lbtest.Until(t, time.Minute, func() (bool, string) {
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, "nspawn.log"))
			t.Fatalf("systemd-nspawn exited: %v\n%s", cmd.ProcessState, b)
		default:
		}
		if kids := lbtest.Children(cmd.Process.Pid); len(kids) == 1 {
			c.init = kids[0]
			out, _ := c.run("systemctl", "is-system-running")
			out = strings.TrimSpace(out)
			return out == "running" || out == "degraded", "systemd in the container: " + out
		}
		return false, "no container init yet"
	})
	return c
}

// run runs a command inside the container (all its namespaces) and
// returns its output and exit status.
func (c *container) run(args ...string) (string, int) {
	cmd := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(c.init), "-a"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		return err.Error(), -1
	}
	return out.String(), 0
}

// show is a property of lbctl.service.
func (c *container) show(prop string) string {
	out, _ := c.run("systemctl", "show", "-p", prop, "--value", "lbctl")
	return strings.TrimSpace(out)
}

// mainPID is lbctl.service's main process (in the container's PID
// namespace); it fails the test when there is none.
func (c *container) mainPID(t *testing.T) int {
	t.Helper()
	pid, _ := strconv.Atoi(c.show("MainPID"))
	if pid <= 0 {
		t.Fatalf("lbctl.service has no main process\n%s", c.journal())
	}
	return pid
}

// expect checks properties of lbctl.service.
func (c *container) expect(t *testing.T, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got := c.show(k); got != v {
			t.Errorf("lbctl.service %s = %q, want %q", k, got, v)
		}
	}
}

// journal is the end of lbctl.service's journal.
func (c *container) journal() string {
	out, _ := c.run("journalctl", "--no-pager", "-n", "60", "-u", "lbctl")
	return out
}

// inNetns runs f on a thread joined to the container's network namespace:
// the sockets f creates live there (on the container's loopback) and keep
// working from any thread afterwards.
func (c *container) inNetns(t *testing.T, f func()) {
	t.Helper()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	target, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", c.init))
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	runtime.LockOSThread()
	if err := setns(target, syscall.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("join the container's network namespace: %v", err)
	}
	f()
	if err := setns(self, syscall.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it ends with this goroutine.
		t.Fatalf("back to the test's network namespace: %v", err)
	}
	runtime.UnlockOSThread()
}

func setns(f *os.File, kind int) error { return unix.Setns(int(f.Fd()), kind) }

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
