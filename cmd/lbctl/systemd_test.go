package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"golang.org/x/sys/unix"
)

// The tests here run the real binary the way systemd does: with a
// notification socket ($NOTIFY_SOCKET), a watchdog ($WATCHDOG_USEC) and
// inherited sockets ($LISTEN_FDS, $LISTEN_PID).

// datagram is one notification and when it arrived.
type datagram struct {
	msg string
	at  time.Time
}

// notifySocket is a fake service manager: a unixgram socket the test
// creates, read by one goroutine until the test ends.
type notifySocket struct {
	t    *testing.T
	path string
	in   chan datagram
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	s := &notifySocket{t: t, path: path, in: make(chan datagram, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			s.in <- datagram{string(buf[:n]), time.Now()}
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return s
}

// next returns the next datagram, failing the test after timeout.
func (s *notifySocket) next(timeout time.Duration) datagram {
	s.t.Helper()
	select {
	case d := <-s.in:
		return d
	case <-time.After(timeout):
		s.t.Fatalf("no notification within %s", timeout)
		return datagram{}
	}
}

// nextState returns the next datagram that is not a watchdog keep-alive.
func (s *notifySocket) nextState(timeout time.Duration) string {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if d := s.next(time.Until(deadline)); d.msg != "WATCHDOG=1" {
			return d.msg
		}
	}
}

// rest returns the datagrams already received or arriving within a short
// while (call it once the sender has exited).
func (s *notifySocket) rest() []string {
	var out []string
	for {
		select {
		case d := <-s.in:
			out = append(out, d.msg)
		case <-time.After(time.Second): // generous: a loaded CI machine may be slow to deliver
			return out
		}
	}
}

// systemdEnv is this process's environment without the variables systemd
// sets (the tests may themselves run under systemd), plus extra.
func systemdEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "JOURNAL_STREAM":
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

func monotonicUsec(t *testing.T) int64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}

// expectReload reads RELOADING=1 with a MONOTONIC_USEC= taken between
// before and now, then the READY=1 that ends the reload.
func (s *notifySocket) expectReload(before int64, wantReady string) {
	s.t.Helper()
	got := s.nextState(10 * time.Second)
	after := monotonicUsec(s.t)
	m := regexp.MustCompile(`^RELOADING=1\nMONOTONIC_USEC=(\d+)$`).FindStringSubmatch(got)
	if m == nil {
		s.t.Fatalf("got %q, want RELOADING=1 and MONOTONIC_USEC=", got)
	}
	if usec, _ := strconv.ParseInt(m[1], 10, 64); usec < before || usec > after {
		s.t.Errorf("MONOTONIC_USEC=%s, not within [%d, %d]", m[1], before, after)
	}
	if got := s.nextState(10 * time.Second); got != wantReady {
		s.t.Fatalf("after RELOADING=1 got %q, want %q", got, wantReady)
	}
}

// TestSystemdNotify checks the sd_notify sequence of a whole life: start,
// watchdog, reload (SIGHUP and admin API, accepted and rejected), stop.
func TestSystemdNotify(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	b := lbtest.NewTCP(t, lbtest.Named("b"))
	sock := newNotifySocket(t)
	d := startProcWith(t, func(d *proc) {
		d.cmd.Env = systemdEnv("NOTIFY_SOCKET="+sock.path, "WATCHDOG_USEC=200000")
	}, nil, "", a.Addr)

	// Start: READY=1 comes first, once the listener is bound.
	if got := sock.next(10 * time.Second).msg; got != "READY=1\nSTATUS=1 listener, 1/1 backend up" {
		t.Fatalf("first notification %q, want READY=1 with the status", got)
	}
	if got := roundTrip(t, d.front, nil); string(got) != "a" {
		t.Fatalf("after READY=1 the listener answered %q", got)
	}

	// Watchdog: WATCHDOG_USEC=200000 asks for a keep-alive every 100ms.
	var gaps []time.Duration
	prev := sock.next(5 * time.Second)
	for len(gaps) < 7 {
		d := sock.next(5 * time.Second)
		if d.msg != "WATCHDOG=1" || prev.msg != "WATCHDOG=1" {
			t.Fatalf("while idle got %q then %q, want only WATCHDOG=1", prev.msg, d.msg)
		}
		gaps = append(gaps, d.at.Sub(prev.at))
		prev = d
	}
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
	if median := gaps[len(gaps)/2]; median < 30*time.Millisecond || median > 300*time.Millisecond {
		t.Fatalf("median gap between keep-alives %s (all %v), want about 100ms: half of WATCHDOG_USEC", median, gaps)
	}

	// Reload by SIGHUP: RELOADING=1 (with MONOTONIC_USEC), then READY=1.
	d.writeConfig("", a.Addr, b.Addr)
	before := monotonicUsec(t)
	d.cmd.Process.Signal(syscall.SIGHUP)
	sock.expectReload(before, "READY=1\nSTATUS=1 listener, 2/2 backends up")

	// A rejected reload through the admin API: the same pair, the status
	// says the old configuration runs on.
	os.WriteFile(d.config, []byte("[listeners.web]\nbind = 1\n"), 0o644)
	before = monotonicUsec(t)
	if out, code := runLbctl(t, "reload", "--admin", d.admin); code != 1 {
		t.Fatalf("reload of an invalid file: exit %d\n%s", code, out)
	}
	sock.expectReload(before,
		"READY=1\nSTATUS=reload rejected, the previous configuration keeps running; 1 listener, 2/2 backends up")

	// Stop: STOPPING=1 and nothing after it, not even a keep-alive.
	if code := d.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	var states []string
	for _, m := range sock.rest() {
		if m != "WATCHDOG=1" || len(states) > 0 {
			states = append(states, m)
		}
	}
	want := []string{"STOPPING=1\nSTATUS=stopping: draining connections for up to 5s"}
	if fmt.Sprint(states) != fmt.Sprint(want) {
		t.Fatalf("at stop got %q, want %q", states, want)
	}
}

// Without $NOTIFY_SOCKET nothing is sent and nothing is logged about it,
// even with a watchdog interval in the environment.
func TestSystemdNothingWithoutNotifySocket(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Named("a"))
	d := startProcWith(t, func(d *proc) { d.cmd.Env = systemdEnv("WATCHDOG_USEC=100000") }, nil, "", be.Addr)
	d.cmd.Process.Signal(syscall.SIGHUP)
	lbtest.Eventually(t, 10*time.Second, func() bool {
		return d.metric(`lbctl_config_reloads_total{result="success"} 1`)
	}, "reload not counted")
	if code := d.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	// The config path names this test: leave it out.
	logs := strings.ToLower(strings.ReplaceAll(d.logs.String(), filepath.Dir(d.config), "DIR"))
	for _, word := range []string{"notify", "watchdog", "systemd", "socket activation", "alive"} {
		if strings.Contains(logs, word) {
			t.Errorf("logs mention %q without NOTIFY_SOCKET:\n%s", word, d.logs)
		}
	}
}

// udpEcho is a UDP backend that sends every datagram back.
func udpEcho(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			c.WriteToUDP(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().String()
}

// inheritable returns a TCP listening socket and a UDP socket on loopback
// as files to pass to a child, and their addresses. The test keeps them
// open, so nobody else can bind those addresses meanwhile.
func inheritable(t *testing.T) (tcpFile, udpFile *os.File, tcpAddr, udpAddr string) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if tcpFile, err = ln.File(); err != nil {
		t.Fatal(err)
	}
	if udpFile, err = uc.File(); err != nil {
		t.Fatal(err)
	}
	tcpAddr, udpAddr = ln.Addr().String(), uc.LocalAddr().String()
	ln.Close() // the files hold the sockets
	uc.Close()
	t.Cleanup(func() { tcpFile.Close(); udpFile.Close() })
	return tcpFile, udpFile, tcpAddr, udpAddr
}

// TestSocketActivation passes a listening TCP socket as fd 3 and a UDP
// socket as fd 4 with LISTEN_FDS=2 and LISTEN_PID set to lbctl's own pid
// (sh sets it to $$, then execs lbctl in its place), as systemd does. The
// test holds both addresses, so lbctl can only serve them through the
// inherited sockets: binding them itself would fail.
func TestSocketActivation(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Named("a"))
	udpBackend := udpEcho(t)
	tcpFile, udpFile, tcpAddr, udpAddr := inheritable(t)
	extra := fmt.Sprintf("[listeners.dns]\nprotocol = \"udp\"\nbind = %q\npool = \"dns\"\n"+
		"[pools.dns]\n[[pools.dns.backends]]\naddress = %q\n", udpAddr, udpBackend)
	d := startProcWith(t, func(d *proc) {
		d.front = tcpAddr
		d.cmd.ExtraFiles = []*os.File{tcpFile, udpFile}
		d.cmd.Env = systemdEnv("LISTEN_FDS=2", "LISTEN_FDNAMES=web:dns")
	}, []string{"sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`}, extra, be.Addr)

	if got := roundTrip(t, tcpAddr, nil); string(got) != "a" {
		t.Fatalf("through the inherited TCP socket got %q, want a", got)
	}
	c, err := net.Dial("udp", udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("through the inherited UDP socket: %q, %v", buf[:n], err)
	}
	if code := d.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{`"listener":"web","socket":"tcp|` + tcpAddr, `"listener":"dns","socket":"udp|` + udpAddr} {
		if !strings.Contains(d.logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, d.logs)
		}
	}
}

// Sockets passed with LISTEN_PID naming another process are not lbctl's
// (sd_listen_fds(3)): it ignores them and binds itself, which fails here
// because the address is taken, by that very socket.
func TestSocketActivationOtherPID(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Named("a"))
	tcpFile, _, tcpAddr, _ := inheritable(t)
	config := writeFile(t, t.TempDir(), "lbctl.toml", fmt.Sprintf(
		"[listeners.web]\nbind = %q\npool = \"web\"\n[pools.web]\n[[pools.web.backends]]\naddress = %q\n", tcpAddr, be.Addr))
	cmd := exec.Command(lbctlBin, "serve", "--config", config)
	cmd.ExtraFiles = []*os.File{tcpFile}
	cmd.Env = systemdEnv("LISTEN_FDS=1", "LISTEN_PID=1")
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "address already in use") {
		t.Fatalf("serve with another process's sockets: %v, want exit 1 binding %s itself\n%s", err, tcpAddr, out)
	}
}
