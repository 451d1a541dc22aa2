package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/server"
	"golang.org/x/sys/unix"
)

// upgraded is an lbctl serve followed across upgrades: its output goes to
// a file (a pipe would stay open in the new process, and the old one's
// Wait would wait for it), and every PID an upgrade reported is killed at
// the end of the test.
type upgraded struct {
	t      *testing.T
	dir    string
	config string
	sock   string
	logs   string
	pids   []int
	exited chan struct{} // the first process's
}

// startUpgradable starts `lbctl serve` with config (control_socket set to
// u.sock by the caller's text), env added to the test's (without what
// systemd sets), and waits until it is ready.
func startUpgradable(t *testing.T, dir, config string, env ...string) *upgraded {
	t.Helper()
	u := &upgraded{t: t, dir: dir, config: filepath.Join(dir, "lbctl.toml"), sock: filepath.Join(dir, "lbctl.sock"),
		logs: filepath.Join(dir, "lbctl.log"), exited: make(chan struct{})}
	writeFile(t, dir, "lbctl.toml", config)
	logf, err := os.Create(u.logs)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(lbctlBin, "serve", "--config", u.config)
	cmd.Env = append(systemdEnv("LBCTL_CONFIG=", "RUNTIME_DIRECTORY="), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	u.pids = append(u.pids, cmd.Process.Pid)
	go func() { cmd.Wait(); close(u.exited) }()
	t.Cleanup(func() {
		for _, pid := range u.pids {
			if lbtest.Alive(pid) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		<-u.exited
		for _, pid := range u.pids {
			lbtest.WaitGone(pid, 5*time.Second)
		}
		if t.Failed() {
			b, _ := os.ReadFile(u.logs)
			t.Logf("lbctl logs:\n%s", b)
		}
	})
	lbtest.Eventually(t, 60*time.Second, func() bool { return unixGetCode(u.sock, "/readyz") == 200 }, "lbctl not ready within 60s")
	return u
}

// pid is the process serving now.
func (u *upgraded) pid() int { return u.pids[len(u.pids)-1] }

// upgrade runs `lbctl upgrade args...` through the control socket.
func (u *upgraded) upgrade(args ...string) (string, int) {
	u.t.Helper()
	out, code := runLbctl(u.t, append([]string{"upgrade", "--socket", u.sock}, args...)...)
	if m := regexp.MustCompile(`pid (\d+) -> (\d+)`).FindStringSubmatch(out); code == 0 && m != nil {
		pid, _ := strconv.Atoi(m[2])
		u.pids = append(u.pids, pid)
	}
	return out, code
}

// ctl sends a request through the control socket; a non-2xx answer fails
// the test.
func (u *upgraded) ctl(method, path, body string, out any) {
	u.t.Helper()
	c := controlClient(u.sock)
	defer c.http.CloseIdleConnections()
	var in any
	if body != "" {
		in = json.RawMessage(body)
	}
	if err := c.send(method, path, in, out); err != nil {
		u.t.Fatalf("%s %s: %v", method, path, err)
	}
}

func (u *upgraded) status() server.Status {
	u.t.Helper()
	var st server.Status
	u.ctl(http.MethodGet, "/api/v1/status", "", &st)
	return st
}

// backendOf returns the status of address in pool.
func backendOf(st server.Status, pool, address string) (server.BackendStatus, bool) {
	for _, p := range st.Pools {
		if p.Name != pool {
			continue
		}
		for _, b := range p.Backends {
			if b.Address == address {
				return b, true
			}
		}
	}
	return server.BackendStatus{}, false
}

// connectLoop opens, uses and closes connections to addr one after the
// other until stop is closed (or a minute has passed, or 100,000 of them),
// counting those that failed at any step.
func connectLoop(addr string, stop <-chan struct{}, done, failed *atomic.Int64, lastErr *atomic.Value) {
	buf := make([]byte, 5)
	deadline := time.Now().Add(time.Minute)
	for i := 0; i < 100000 && time.Now().Before(deadline); i++ {
		select {
		case <-stop:
			return
		default:
		}
		err := func() error {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write([]byte("hello")); err != nil {
				return err
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				return err
			}
			if string(buf) != "hello" {
				return fmt.Errorf("echo %q", buf)
			}
			return nil
		}()
		done.Add(1)
		if err != nil {
			failed.Add(1)
			lastErr.Store(err.Error())
		}
	}
}

// TestUpgradeCommand: `lbctl upgrade` under a TCP client that connects in
// a loop (none refused or failed) and a UDP client (its session and the
// listener serve on), with run-time state (a disabled backend, a weight
// override, an API-added backend, a down backend) that is the same after;
// the old PID exits, the new one answers; SIGUSR2 then upgrades again.
func TestUpgradeCommand(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Echo)
	b := lbtest.NewTCP(t, lbtest.Echo)
	added := lbtest.NewTCP(t, lbtest.Echo)
	down := lbtest.ClosedPort(t)
	ub := lbtest.NewUDP(t, "u", lbtest.UDPEcho)
	dir := t.TempDir()
	front := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	dgram := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	adminAddr := freePort(t)
	conf := fmt.Sprintf(`shutdown_timeout = "5s"
control_socket = %q
[log]
level = "info"
[admin]
bind = %q
[listeners.web]
bind = %q
pool = "web"
[listeners.dns]
bind = %q
protocol = "udp"
pool = "dns"
[pools.web]
[pools.web.health]
check = "tcp"
interval = "300ms"
timeout = "200ms"
fall = 1
[[pools.web.backends]]
address = %q
[[pools.web.backends]]
address = %q
[[pools.web.backends]]
address = %q
[pools.dns]
[pools.dns.health]
check = "none"
[[pools.dns.backends]]
address = %q
`, filepath.Join(dir, "lbctl.sock"), adminAddr, front, dgram, a.Addr, b.Addr, down, ub.Addr)
	u := startUpgradable(t, dir, conf)

	u.ctl(http.MethodPost, "/api/v1/pools/web/backends/"+b.Addr+"/disable", "", nil)
	u.ctl(http.MethodPatch, "/api/v1/pools/web/backends/"+a.Addr, `{"weight": 5}`, nil)
	u.ctl(http.MethodPost, "/api/v1/pools/web/backends", `{"address": "`+added.Addr+`", "weight": 2}`, nil)
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		st, _ := backendOf(u.status(), "web", down)
		return st.Health == "down", "closed-port backend " + st.Health
	})
	before := u.status()

	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	dst := netip.MustParseAddrPort(dgram)
	if got := lbtest.UDPExchange(t, uc, dst, []byte("u1"), 5*time.Second); string(got) != "u1" {
		t.Fatalf("udp before: %q", got)
	}

	stop := make(chan struct{})
	var done, failed atomic.Int64
	var lastErr atomic.Value
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); connectLoop(front, stop, &done, &failed, &lastErr) }()
	lbtest.Until(t, 10*time.Second, func() (bool, string) { return done.Load() >= 20, "connections before the upgrade" })

	old := u.pid()
	out, code := u.upgrade()
	answered := time.Now()
	if code != 0 || len(u.pids) != 2 {
		t.Fatalf("upgrade: exit %d: %s", code, out)
	}
	if !strings.Contains(out, fmt.Sprintf("pid %d -> %d", old, u.pid())) {
		t.Fatalf("upgrade output: %s", out)
	}
	// Not the old process's child (nor its spawner's) by the time it is
	// named main process: the service manager's (upgrade_spawn.go).
	if pp := ppid(t, u.pid()); pp == old || lbtest.Alive(pp) && ppid(t, pp) == old {
		t.Errorf("new pid %d has parent %d, a child of the old process %d", u.pid(), pp, old)
	}
	// SPEC: the old process exits within 2 s once nothing remains.
	if !lbtest.WaitGone(old, 2*time.Second) {
		t.Fatalf("old pid %d still runs 2s after the upgrade answered", old)
	}
	t.Logf("old pid gone %v after the answer", time.Since(answered).Round(time.Millisecond))
	n := done.Load()
	lbtest.Until(t, 10*time.Second, func() (bool, string) { return done.Load() >= n+20, "connections after the upgrade" })
	close(stop)
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Errorf("%d of %d connections failed across the upgrade; last: %v", f, done.Load(), lastErr.Load())
	}
	if !lbtest.Alive(u.pid()) {
		t.Fatalf("new pid %d not running", u.pid())
	}

	// The session and the listener serve on, from the new process.
	if got := lbtest.UDPExchange(t, uc, dst, []byte("u2"), 5*time.Second); string(got) != "u2" {
		t.Fatalf("udp after: %q", got)
	}
	after := u.status()
	// The admin API's socket passed over too: the new process answers on it.
	resp, err := http.Get("http://" + adminAddr + "/api/v1/status")
	if err != nil {
		t.Fatalf("admin API after the upgrade: %v", err)
	}
	var viaAdmin server.Status
	json.NewDecoder(resp.Body).Decode(&viaAdmin)
	resp.Body.Close()
	if !viaAdmin.Started.Equal(after.Started) {
		t.Errorf("admin API answers for a process started %v, the control socket for one started %v", viaAdmin.Started, after.Started)
	}
	if !after.Started.After(before.Started) {
		t.Errorf("status started %v, before the upgrade %v: not the new process", after.Started, before.Started)
	}
	for _, addr := range []string{a.Addr, b.Addr, added.Addr, down} {
		x, _ := backendOf(before, "web", addr)
		y, ok := backendOf(after, "web", addr)
		if !ok || x.Admin != y.Admin || x.Weight != y.Weight || x.Source != y.Source || x.Health != y.Health {
			t.Errorf("backend %s before %+v, after %+v", addr, x, y)
		}
	}
	if y, _ := backendOf(after, "web", b.Addr); y.Admin != "disabled" {
		t.Errorf("disabled backend after: %+v", y)
	}
	if y, _ := backendOf(after, "web", added.Addr); y.Source != "api" || y.Weight != 2 {
		t.Errorf("added backend after: %+v", y)
	}

	// SIGUSR2 upgrades the same way; the log names the new process.
	second := u.pid()
	syscall.Kill(second, syscall.SIGUSR2)
	if !lbtest.WaitGone(second, 20*time.Second) {
		t.Fatalf("pid %d still runs 20s after SIGUSR2", second)
	}
	logs, _ := os.ReadFile(u.logs)
	m := regexp.MustCompile(`"upgrade: handed over".*"new_pid":(\d+)`).FindAllSubmatch(logs, -1)
	if len(m) != 2 {
		t.Fatalf("%d upgrades logged, want 2", len(m))
	}
	third, _ := strconv.Atoi(string(m[1][1]))
	u.pids = append(u.pids, third)
	if third == second || !lbtest.Alive(third) {
		t.Fatalf("after SIGUSR2: new pid %d (alive %v)", third, lbtest.Alive(third))
	}
	if got := roundTrip(t, front, []byte("after SIGUSR2")); string(got) != "after SIGUSR2" {
		t.Fatalf("after SIGUSR2: %q", got)
	}
	if st, _ := backendOf(u.status(), "web", b.Addr); st.Admin != "disabled" {
		t.Errorf("disabled backend after the second upgrade: %+v", st)
	}
}

// TestUpgradeFailures: a new binary that exits at once, one that hangs
// before it is ready, and one that rejects the config: upgrade exits 1
// with the reason and the old process serves on (same PID, same control
// socket); a second upgrade while one runs is refused.
func TestUpgradeFailures(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	dir := t.TempDir()
	front := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	conf := fmt.Sprintf("shutdown_timeout = \"2s\"\ncontrol_socket = %q\n[listeners.web]\nbind = %q\npool = \"web\"\n"+
		"[pools.web]\n[pools.web.health]\ncheck = \"none\"\n[[pools.web.backends]]\naddress = %q\n",
		filepath.Join(dir, "lbctl.sock"), front, be.Addr)
	u := startUpgradable(t, dir, conf)
	serves := func(what string) {
		t.Helper()
		if got := roundTrip(t, front, []byte(what)); string(got) != what {
			t.Fatalf("%s: echo %q", what, got)
		}
		if !lbtest.Alive(u.pid()) || len(u.pids) != 1 {
			t.Fatalf("%s: pids %v", what, u.pids)
		}
		if code := unixGetCode(u.sock, "/readyz"); code != 200 {
			t.Fatalf("%s: control socket answers %d", what, code)
		}
	}
	script := func(name, body string) string {
		return writeFileMode(t, dir, name, "#!/bin/sh\n"+body+"\n", 0o755)
	}

	out, code := u.upgrade("--binary", script("exits.sh", "exit 3"))
	if code != 1 || !strings.Contains(out, "exited before it was ready: exit status 3") {
		t.Errorf("binary that exits: exit %d: %s", code, out)
	}
	serves("after a binary that exits")

	pidFile := filepath.Join(dir, "hang.pid")
	hang := script("hangs.sh", "echo $$ > "+pidFile+"\nexec sleep 60")
	type result struct {
		out  string
		code int
	}
	// The second upgrade must arrive while this one waits: 10s covers
	// spawning lbctl twice under -race on a loaded machine.
	first := make(chan result, 1)
	go func() {
		out, code := runLbctlIn(t, "", nil, "upgrade", "--socket", u.sock, "--binary", hang, "--timeout", "10s")
		first <- result{out, code}
	}()
	waitPIDFile(t, pidFile)
	out, code = runLbctl(t, "upgrade", "--socket", u.sock)
	if code != 1 || !strings.Contains(out, "already in progress") {
		t.Errorf("second upgrade meanwhile: exit %d: %s", code, out)
	}
	r := <-first
	if r.code != 1 || !strings.Contains(r.out, "not ready within 10s") {
		t.Errorf("binary that hangs: exit %d: %s", r.code, r.out)
	}
	pb, _ := os.ReadFile(pidFile)
	if hung, err := strconv.Atoi(strings.TrimSpace(string(pb))); err != nil || !lbtest.WaitGone(hung, 5*time.Second) {
		t.Errorf("hanging process %q not killed", pb)
	}
	serves("after a binary that hangs")

	// A new process that dies once ready, in the middle of the handover:
	// the old one accepts again and serves on.
	fake := filepath.Join(dir, "fakenew")
	if out, err := exec.Command("go", "build", "-o", fake, "./testdata/fakenew").CombinedOutput(); err != nil {
		t.Fatalf("build fakenew: %v\n%s", err, out)
	}
	out, code = u.upgrade("--binary", fake)
	if code != 1 || !strings.Contains(out, "handover to the new process failed, this process serves again") {
		t.Errorf("binary that dies mid-handover: exit %d: %s", code, out)
	}
	serves("after a binary that died mid-handover")

	// The real binary, but the config file is now invalid: it says why.
	writeFile(t, dir, "lbctl.toml", conf+"bogus_key = 1\n")
	out, code = u.upgrade()
	if code != 1 || !strings.Contains(out, "exit status 2") {
		t.Errorf("invalid config: exit %d: %s", code, out)
	}
	serves("after an invalid config")
}

// ppid is the parent of pid.
func ppid(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// pid (comm) state ppid ...: the fields after the last ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	n, _ := strconv.Atoi(f[1])
	return n
}

// writeFileMode is writeFile with a mode.
func writeFileMode(t *testing.T, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// credDatagram is a notification and the PID that sent it.
type credDatagram struct {
	pid int
	msg string
}

// credNotifySocket is a fake service manager that, as systemd does, learns
// each notification's sender from SO_PASSCRED.
func credNotifySocket(t *testing.T) (path string, in <-chan credDatagram) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := conn.SyscallConn()
	rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan credDatagram, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf, oob := make([]byte, 4096), make([]byte, 1024)
		for {
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			d := credDatagram{msg: string(buf[:n])}
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range msgs {
					if cred, err := unix.ParseUnixCredentials(&m); err == nil {
						d.pid = int(cred.Pid)
					}
				}
			}
			ch <- d
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return path, ch
}

// TestUpgradeSystemdNotify: under a (fake) service manager, the old
// process names the new one with MAINPID= and sends nothing after (no
// STOPPING=1: the service goes on); the new one sends READY=1 and feeds
// the watchdog, and its reload and stop notifications follow as before.
func TestUpgradeSystemdNotify(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	notify, in := credNotifySocket(t)
	dir := t.TempDir()
	front := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	conf := fmt.Sprintf("shutdown_timeout = \"2s\"\ncontrol_socket = %q\n[listeners.web]\nbind = %q\npool = \"web\"\n"+
		"[pools.web]\n[pools.web.health]\ncheck = \"none\"\n[[pools.web.backends]]\naddress = %q\n",
		filepath.Join(dir, "lbctl.sock"), front, be.Addr)
	u := startUpgradable(t, dir, conf, "NOTIFY_SOCKET="+notify, "WATCHDOG_USEC=200000")
	old := u.pid()
	next := func(what string, match func(credDatagram) bool) credDatagram {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for {
			select {
			case d := <-in:
				if match(d) {
					return d
				}
			case <-timeout:
				t.Fatalf("no %s within 20s", what)
			}
		}
	}
	next("READY=1 from the old process", func(d credDatagram) bool {
		return d.pid == old && strings.HasPrefix(d.msg, "READY=1")
	})

	if out, code := u.upgrade(); code != 0 {
		t.Fatalf("upgrade: exit %d: %s", code, out)
	}
	nw := u.pid()
	var mainPID, ready, watchdog bool
	for !(mainPID && ready && watchdog) {
		d := next("MAINPID=, READY=1 and WATCHDOG=1", func(credDatagram) bool { return true })
		switch {
		case d.pid == old && d.msg == fmt.Sprintf("MAINPID=%d", nw):
			mainPID = true
		case d.pid == old && d.msg != "WATCHDOG=1":
			t.Fatalf("the old process sent %q", d.msg)
		case d.pid == nw && strings.HasPrefix(d.msg, "READY=1\nSTATUS=1 listener"):
			ready = true
		case d.pid == nw && d.msg == "WATCHDOG=1":
			watchdog = ready // keep-alives count once the new one is ready
		case d.pid == nw:
			t.Fatalf("the new process sent %q before READY=1", d.msg)
		}
	}
	if !lbtest.WaitGone(old, 5*time.Second) {
		t.Fatalf("old pid %d still runs", old)
	}

	// A reload reaches the new process; its notifications come from it.
	if out, code := runLbctl(t, "reload", "--socket", u.sock); code != 0 {
		t.Fatalf("reload: exit %d: %s", code, out)
	}
	notWatchdog := func(d credDatagram) bool { return d.msg != "WATCHDOG=1" }
	if d := next("RELOADING=1", notWatchdog); d.pid != nw || !strings.HasPrefix(d.msg, "RELOADING=1") {
		t.Fatalf("after reload: %+v, want RELOADING=1 from %d", d, nw)
	}
	if d := next("READY=1", notWatchdog); d.pid != nw || !strings.HasPrefix(d.msg, "READY=1") {
		t.Fatalf("after reload: %+v, want READY=1 from %d", d, nw)
	}
	next("WATCHDOG=1 after the reload", func(d credDatagram) bool { return d.pid == nw && d.msg == "WATCHDOG=1" })
	syscall.Kill(nw, syscall.SIGTERM)
	if d := next("STOPPING=1", notWatchdog); d.pid != nw || !strings.HasPrefix(d.msg, "STOPPING=1") {
		t.Fatalf("at stop: %+v, want STOPPING=1 from %d", d, nw)
	}
	if !lbtest.WaitGone(nw, 10*time.Second) {
		t.Fatalf("new pid %d did not stop", nw)
	}
}

// TestChildEnv: the new process does not inherit what names the old one.
func TestChildEnv(t *testing.T) {
	got := childEnv([]string{"PATH=/bin", "LISTEN_FDS=2", "LISTEN_PID=7", "LISTEN_FDNAMES=a:b", "WATCHDOG_PID=7",
		"WATCHDOG_USEC=1000", "NOTIFY_SOCKET=/run/n", "LBCTL_UPGRADE_FD=3"})
	want := []string{"PATH=/bin", "WATCHDOG_USEC=1000", "NOTIFY_SOCKET=/run/n", "LBCTL_UPGRADE_FD=3"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("childEnv = %q, want %q", got, want)
	}
}
