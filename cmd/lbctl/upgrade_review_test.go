package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/admin"
	"github.com/lbctl/lbctl/pkg/lbtest"
)

// TestUpgradeFailedStartKeepsControlSocket: a new process that fails once
// it serves the passed control socket (here: a listener the edited file
// adds binds a port in use) must not remove the socket's file on its way
// out: the old process serves on, and `lbctl reload`/`status` find it
// through that file. And --binary is taken relative to the caller's
// directory, not the running lbctl's.
func TestUpgradeFailedStartKeepsControlSocket(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	dir := t.TempDir()
	front := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	conf := fmt.Sprintf("shutdown_timeout = \"2s\"\ncontrol_socket = %q\n[listeners.web]\nbind = %q\npool = \"web\"\n"+
		"[pools.web]\n[pools.web.health]\ncheck = \"none\"\n[[pools.web.backends]]\naddress = %q\n",
		filepath.Join(dir, "lbctl.sock"), front, be.Addr)
	u := startUpgradable(t, dir, conf)

	// A relative --binary names a file in the caller's directory (dir);
	// the running lbctl's working directory is this package's.
	writeFileMode(t, dir, "exits.sh", "#!/bin/sh\nexit 3\n", 0o755)
	out, code := runLbctlIn(t, dir, nil, "upgrade", "--socket", u.sock, "--binary", "exits.sh")
	if code != 1 || !strings.Contains(out, "exit status 3") {
		t.Errorf("relative --binary: exit %d: %s", code, out)
	}

	// SIGUSR2 while an upgrade runs is refused, and the log (its only
	// answer) says so.
	pidFile := filepath.Join(dir, "hang.pid")
	hang := writeFileMode(t, dir, "hangs.sh", "#!/bin/sh\necho $$ > "+pidFile+"\nexec sleep 60\n", 0o755)
	hung := make(chan int, 1)
	go func() {
		_, code := runLbctlIn(t, "", nil, "upgrade", "--socket", u.sock, "--binary", hang, "--timeout", "3s")
		hung <- code
	}()
	waitPIDFile(t, pidFile)
	syscall.Kill(u.pid(), syscall.SIGUSR2)
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		b, _ := os.ReadFile(u.logs)
		return strings.Contains(string(b), `"upgrade refused","error":"an upgrade is already in progress"`), "SIGUSR2 during an upgrade: no log line"
	})
	if code := <-hung; code != 1 {
		t.Errorf("hanging binary: exit %d", code)
	}

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	writeFile(t, dir, "lbctl.toml", conf+fmt.Sprintf("[listeners.extra]\nbind = %q\npool = \"web\"\n", busy.Addr()))
	out, code = u.upgrade()
	if code != 1 || !strings.Contains(out, "could not start") || !strings.Contains(out, "address already in use") {
		t.Errorf("new process that cannot bind: exit %d: %s", code, out)
	}
	if _, err := os.Stat(u.sock); err != nil {
		t.Fatalf("the old process's control socket after the failed upgrade: %v", err)
	}
	if code := unixGetCode(u.sock, "/readyz"); code != 200 {
		t.Fatalf("control socket answers %d after the failed upgrade", code)
	}
	if got := roundTrip(t, front, []byte("still")); string(got) != "still" || !lbtest.Alive(u.pid()) || len(u.pids) != 1 {
		t.Fatalf("after the failed upgrade: echo %q, pids %v", got, u.pids)
	}
}

// TestUpgradeReloadDuringHandover: a SIGHUP (systemctl reload with
// ExecReload=kill -HUP $MAINPID) that reaches the old process while it
// hands over waits for the upgrade; once it has handed over, the reload
// must reach the new process (which serves), not be applied to the old one
// and lost. A connection whose client stopped reading holds the handover
// for shutdown_timeout, which gives the window.
func TestUpgradeReloadDuringHandover(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	added := lbtest.NewTCP(t, lbtest.Echo)
	fl := newFlood(t)
	dir := t.TempDir()
	front := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	stuck := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	conf := fmt.Sprintf("shutdown_timeout = \"4s\"\ncontrol_socket = %q\n[log]\nlevel = \"info\"\n"+
		"[listeners.web]\nbind = %q\npool = \"web\"\n[listeners.stuck]\nbind = %q\npool = \"flood\"\n"+
		"[pools.flood]\n[pools.flood.health]\ncheck = \"none\"\n[[pools.flood.backends]]\naddress = %q\n"+
		"[pools.web]\n[pools.web.health]\ncheck = \"none\"\n[[pools.web.backends]]\naddress = %q\n",
		filepath.Join(dir, "lbctl.sock"), front, stuck, fl.addr, be.Addr)
	u := startUpgradable(t, dir, conf)

	c, err := net.Dial("tcp", stuck)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The backend is blocked: lbctl holds bytes the client does not read.
	// The backend is blocked: lbctl holds bytes the client does not read.
	fl.waitFull(t)

	old := u.pid()
	type result struct {
		out  string
		code int
	}
	up := make(chan result, 1)
	go func() {
		out, code := runLbctl(t, "upgrade", "--socket", u.sock)
		up <- result{out, code}
	}()
	lbtest.Until(t, 60*time.Second, func() (bool, string) {
		b, _ := os.ReadFile(u.logs)
		return strings.Contains(string(b), "the new process is ready; handing over"), "the new process is not ready"
	})
	// The new process has read the file: this edit is for a reload.
	writeFile(t, dir, "lbctl.toml", conf+fmt.Sprintf("[[pools.web.backends]]\naddress = %q\n", added.Addr))
	syscall.Kill(old, syscall.SIGHUP)
	r := <-up
	if r.code != 0 {
		t.Fatalf("upgrade: exit %d: %s", r.code, r.out)
	}
	m := regexp.MustCompile(`pid (\d+) -> (\d+)`).FindStringSubmatch(r.out)
	if m == nil {
		t.Fatalf("upgrade output: %s", r.out)
	}
	pid, _ := strconv.Atoi(m[2])
	u.pids = append(u.pids, pid) // killed at the end
	lbtest.Until(t, 15*time.Second, func() (bool, string) {
		st := u.status()
		_, ok := backendOf(st, "web", added.Addr)
		return ok, fmt.Sprintf("the process serving (started %v) does not have the reloaded backend", st.Started)
	})
}

// TestUpgradeTenInARow: ten upgrades, each asked for as soon as the
// previous one answered, through one HTTP client as a script would use
// (keep-alive): every one succeeds, each new process serves, and every old
// one exits. The old process's answer closes its connection, so the next
// request reaches the new process rather than the old one on a kept-alive
// connection; and the new process takes the next upgrade as soon as the
// old one has answered, not refusing it as "not running" while it finishes
// its own start.
func TestUpgradeTenInARow(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	dir := t.TempDir()
	front := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	conf := fmt.Sprintf("shutdown_timeout = \"2s\"\ncontrol_socket = %q\n[listeners.web]\nbind = %q\npool = \"web\"\n"+
		"[pools.web]\n[pools.web.health]\ncheck = \"none\"\n[[pools.web.backends]]\naddress = %q\n",
		filepath.Join(dir, "lbctl.sock"), front, be.Addr)
	u := startUpgradable(t, dir, conf)
	c := controlClient(u.sock)
	c.http.Timeout = 2 * time.Minute
	defer c.http.CloseIdleConnections()
	for i := 0; i < 10; i++ {
		var res admin.UpgradeResult
		if err := c.send(http.MethodPost, "/api/v1/upgrade", admin.UpgradeRequest{}, &res); err != nil {
			t.Fatalf("upgrade %d of pid %d: %v", i+1, u.pid(), err)
		}
		if res.OldPID != u.pid() || res.NewPID <= 0 {
			t.Fatalf("upgrade %d: %+v, serving pid was %d", i+1, res, u.pid())
		}
		u.pids = append(u.pids, res.NewPID)
	}
	if got := roundTrip(t, front, []byte("ten")); string(got) != "ten" {
		t.Fatalf("after ten upgrades: echo %q", got)
	}
	for _, pid := range u.pids[:len(u.pids)-1] {
		if !lbtest.WaitGone(pid, 5*time.Second) {
			t.Errorf("old pid %d still runs", pid)
		}
	}
	if !lbtest.Alive(u.pid()) {
		t.Fatalf("last pid %d does not run", u.pid())
	}
}

// TestUpgradeOldDiesMidHandover: the old process is killed once the new
// one is ready, while it is still handing over (a connection whose client
// stopped reading holds it there): the new process does not wait for
// messages that will never come nor exit; it serves the listeners and the
// control socket on, and takes the next upgrade. `lbctl upgrade` exits 1.
func TestUpgradeOldDiesMidHandover(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	fl := newFlood(t)
	dir := t.TempDir()
	front := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	stuck := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	conf := fmt.Sprintf("shutdown_timeout = \"20s\"\ncontrol_socket = %q\n[log]\nlevel = \"info\"\n"+
		"[listeners.web]\nbind = %q\npool = \"web\"\n[listeners.stuck]\nbind = %q\npool = \"flood\"\n"+
		"[pools.flood]\n[pools.flood.health]\ncheck = \"none\"\n[[pools.flood.backends]]\naddress = %q\n"+
		"[pools.web]\n[pools.web.health]\ncheck = \"none\"\n[[pools.web.backends]]\naddress = %q\n",
		filepath.Join(dir, "lbctl.sock"), front, stuck, fl.addr, be.Addr)
	u := startUpgradable(t, dir, conf)
	c, err := net.Dial("tcp", stuck)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fl.waitFull(t)

	old := u.pid()
	type result struct {
		out  string
		code int
	}
	up := make(chan result, 1)
	go func() {
		out, code := runLbctl(t, "upgrade", "--socket", u.sock)
		up <- result{out, code}
	}()
	newPID := regexp.MustCompile(`"upgrade: the new process is ready; handing over connections".*"new_pid":(\d+)`)
	var nw int
	lbtest.Until(t, 60*time.Second, func() (bool, string) {
		b, _ := os.ReadFile(u.logs)
		if m := newPID.FindSubmatch(b); m != nil {
			nw, _ = strconv.Atoi(string(m[1]))
		}
		return nw > 0, "the new process is not ready"
	})
	u.pids = append(u.pids, nw) // killed at the end
	syscall.Kill(old, syscall.SIGKILL)
	if r := <-up; r.code != 1 || !strings.Contains(r.out, "closed the connection before answering") {
		t.Errorf("upgrade whose old process died: exit %d: %s", r.code, r.out)
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		b, _ := os.ReadFile(u.logs)
		return strings.Contains(string(b), "the old process stopped handing over"), "the new process still waits for the old one"
	})
	if got := roundTrip(t, front, []byte("orphan")); string(got) != "orphan" {
		t.Fatalf("new process after the old one died: echo %q", got)
	}
	if code := unixGetCode(u.sock, "/readyz"); code != 200 || !lbtest.Alive(nw) {
		t.Fatalf("new process after the old one died: control socket %d, alive %v", code, lbtest.Alive(nw))
	}
	// And it upgrades in turn.
	if out, code := u.upgrade(); code != 0 {
		t.Fatalf("upgrade of the orphaned new process: exit %d: %s", code, out)
	}
	if !lbtest.WaitGone(nw, 5*time.Second) {
		t.Errorf("pid %d still runs after its own upgrade", nw)
	}
}

// TestUpgradeFailuresLeaveNoDescriptor: the old process holds as many
// descriptors after failed upgrades (a binary that exits, one that hangs
// until the timeout, one that dies once ready, mid-handover) as before:
// the socket duplicates, the channel and the spawner's socket are closed
// on every failure path.
func TestUpgradeFailuresLeaveNoDescriptor(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	dir := t.TempDir()
	front := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	dgram := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	conf := fmt.Sprintf("shutdown_timeout = \"2s\"\ncontrol_socket = %q\n[listeners.web]\nbind = %q\npool = \"web\"\n"+
		"[listeners.dns]\nbind = %q\nprotocol = \"udp\"\npool = \"web\"\n"+
		"[pools.web]\n[pools.web.health]\ncheck = \"none\"\n[[pools.web.backends]]\naddress = %q\n",
		filepath.Join(dir, "lbctl.sock"), front, dgram, be.Addr)
	u := startUpgradable(t, dir, conf)
	fds := func() int {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", u.pid()))
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	fake := filepath.Join(dir, "fakenew")
	if out, err := exec.Command("go", "build", "-o", fake, "./testdata/fakenew").CombinedOutput(); err != nil {
		t.Fatalf("build fakenew: %v\n%s", err, out)
	}
	roundTrip(t, front, []byte("warm")) // the pools' first connection
	before := fds()
	exits := writeFileMode(t, dir, "exits.sh", "#!/bin/sh\nexit 3\n", 0o755)
	hangs := writeFileMode(t, dir, "hangs.sh", "#!/bin/sh\nexec sleep 60\n", 0o755)
	for _, args := range [][]string{{"--binary", exits}, {"--binary", hangs, "--timeout", "2s"}, {"--binary", fake}} {
		if out, code := u.upgrade(args...); code != 1 {
			t.Fatalf("upgrade %v: exit %d: %s", args, code, out)
		}
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		n := fds()
		return n <= before, fmt.Sprintf("old process: %d descriptors after 3 failed upgrades, %d before", n, before)
	})
	if got := roundTrip(t, front, []byte("after")); string(got) != "after" {
		t.Fatalf("after the failed upgrades: echo %q", got)
	}
}

// TestUpgradeAbandonedAtStop: SIGTERM while an upgrade waits for a new
// process that does not become ready: the stop does not wait for the
// upgrade's timeout (a minute here; the drain would then run past
// systemd's TimeoutStopSec): the new process is killed, lbctl upgrade
// exits 1 saying why, and the old process drains and exits at once.
func TestUpgradeAbandonedAtStop(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	dir := t.TempDir()
	front := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	conf := fmt.Sprintf("shutdown_timeout = \"2s\"\ncontrol_socket = %q\n[listeners.web]\nbind = %q\npool = \"web\"\n"+
		"[pools.web]\n[pools.web.health]\ncheck = \"none\"\n[[pools.web.backends]]\naddress = %q\n",
		filepath.Join(dir, "lbctl.sock"), front, be.Addr)
	u := startUpgradable(t, dir, conf)
	pidFile := filepath.Join(dir, "hang.pid")
	hang := writeFileMode(t, dir, "hangs.sh", "#!/bin/sh\necho $$ > "+pidFile+"\nexec sleep 90\n", 0o755)
	type result struct {
		out  string
		code int
	}
	up := make(chan result, 1)
	go func() {
		out, code := runLbctlIn(t, "", nil, "upgrade", "--socket", u.sock, "--binary", hang, "--timeout", "1m")
		up <- result{out, code}
	}()
	waitPIDFile(t, pidFile)
	syscall.Kill(u.pid(), syscall.SIGTERM)
	if !lbtest.WaitGone(u.pid(), 15*time.Second) {
		t.Fatalf("pid %d still runs 15s after SIGTERM, an upgrade waiting for its new process", u.pid())
	}
	r := <-up
	if r.code != 1 || !strings.Contains(r.out, "upgrade abandoned") {
		t.Errorf("upgrade at stop: exit %d: %s", r.code, r.out)
	}
	pb, _ := os.ReadFile(pidFile)
	if hung, err := strconv.Atoi(strings.TrimSpace(string(pb))); err != nil || !lbtest.WaitGone(hung, 5*time.Second) {
		t.Errorf("hanging new process %q not killed", pb)
	}
}

// TestUpgradeControlSocketMoved: the new process's file names another
// control_socket: it serves that one, and the old process removes the
// file of the one nobody serves any more (it was left behind, a socket
// refusing every connection).
func TestUpgradeControlSocketMoved(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	dir := t.TempDir()
	front := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	body := fmt.Sprintf("[listeners.web]\nbind = %q\npool = \"web\"\n"+
		"[pools.web]\n[pools.web.health]\ncheck = \"none\"\n[[pools.web.backends]]\naddress = %q\n", front, be.Addr)
	u := startUpgradable(t, dir, fmt.Sprintf("shutdown_timeout = \"2s\"\ncontrol_socket = %q\n", filepath.Join(dir, "lbctl.sock"))+body)
	moved := filepath.Join(dir, "moved.sock")
	writeFile(t, dir, "lbctl.toml", fmt.Sprintf("shutdown_timeout = \"2s\"\ncontrol_socket = %q\n", moved)+body)
	old := u.pid()
	if out, code := u.upgrade(); code != 0 {
		t.Fatalf("upgrade: exit %d: %s", code, out)
	}
	if code := unixGetCode(moved, "/readyz"); code != 200 {
		t.Fatalf("the new control socket answers %d", code)
	}
	if !lbtest.WaitGone(old, 5*time.Second) {
		t.Fatalf("old pid %d still runs", old)
	}
	if _, err := os.Lstat(u.sock); err == nil {
		t.Errorf("the old control socket's file %s is still there, nobody serves it", u.sock)
	}
}

// flood is a backend that writes to its one client until the client's
// side is full (or 256 MiB have gone, or a minute has passed).
type flood struct {
	addr    string
	written atomic.Int64
}

// newFlood starts a flood backend on loopback; it stops with the test.
func newFlood(t *testing.T) *flood {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f := &flood{addr: ln.Addr().String()}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		c.SetWriteDeadline(time.Now().Add(time.Minute))
		for i := 0; i < 4096; i++ { // at most 256 MiB
			n, err := c.Write(buf)
			f.written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	return f
}

// waitFull waits until the flood has written something and then made no
// progress for 2s: its writes are blocked because every buffer between it
// and the client that does not read is full. The 2s margin is for a loaded
// machine, where a proxy merely descheduled for a moment is not yet full.
func (f *flood) waitFull(t *testing.T) {
	t.Helper()
	last, since := int64(-1), time.Now()
	lbtest.Until(t, 30*time.Second, func() (bool, string) {
		n := f.written.Load()
		if n != last {
			last, since = n, time.Now()
		}
		return n > 0 && time.Since(since) >= 2*time.Second,
			fmt.Sprintf("flood backend still writing (%d bytes)", n)
	})
}

// waitPIDFile waits until a hanging test binary has written its PID to
// path: written, not only created (the shell creates the file before it
// writes, and a signal in between left it empty).
func waitPIDFile(t *testing.T, path string) {
	t.Helper()
	lbtest.Eventually(t, 10*time.Second, func() bool {
		pb, _ := os.ReadFile(path)
		_, err := strconv.Atoi(strings.TrimSpace(string(pb)))
		return err == nil
	}, "hanging binary not started")
}
