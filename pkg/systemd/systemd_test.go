package systemd

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// managerSocket is a fake service manager: a unixgram socket at a path in
// the test's temporary directory, set as $NOTIFY_SOCKET.
type managerSocket struct {
	t    *testing.T
	conn *net.UnixConn
}

func newManagerSocket(t *testing.T) *managerSocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "")
	t.Setenv("WATCHDOG_PID", "")
	return &managerSocket{t: t, conn: conn}
}

// next returns the next datagram, failing the test after timeout.
func (s *managerSocket) next(timeout time.Duration) string {
	s.t.Helper()
	buf := make([]byte, 4096)
	s.conn.SetReadDeadline(time.Now().Add(timeout))
	n, err := s.conn.Read(buf)
	if err != nil {
		s.t.Fatalf("no datagram from the notifier: %v", err)
	}
	return string(buf[:n])
}

// none asserts that no datagram is waiting.
func (s *managerSocket) none() {
	s.t.Helper()
	buf := make([]byte, 4096)
	s.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := s.conn.Read(buf); err == nil {
		s.t.Fatalf("unexpected datagram %q", buf[:n])
	}
}

func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	return zap.New(core), logs
}

func TestNotifierMessages(t *testing.T) {
	s := newManagerSocket(t)
	log, logs := observed()
	n := NewNotifier(log)
	if !n.Enabled() {
		t.Fatal("notifier disabled with NOTIFY_SOCKET set")
	}
	n.Ready("1 listener, 2/2 backends up")
	if got := s.next(time.Second); got != "READY=1\nSTATUS=1 listener, 2/2 backends up" {
		t.Fatalf("ready: %q", got)
	}
	n.Status("1 listener, 2/2 backends up") // unchanged: not sent
	n.Status("1 listener, 1/2 backends up")
	if got := s.next(time.Second); got != "STATUS=1 listener, 1/2 backends up" {
		t.Fatalf("status: %q", got)
	}

	before := monotonicUsec(t)
	n.Reloading()
	got := s.next(time.Second)
	after := monotonicUsec(t)
	m := regexp.MustCompile(`^RELOADING=1\nMONOTONIC_USEC=(\d+)$`).FindStringSubmatch(got)
	if m == nil {
		t.Fatalf("reloading: %q", got)
	}
	if usec := parseInt(t, m[1]); usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC=%d, not within [%d, %d]", usec, before, after)
	}
	n.Ready("reload rejected\nsee logs") // a status stays one line
	if got := s.next(time.Second); got != "READY=1\nSTATUS=reload rejected see logs" {
		t.Fatalf("ready after reload: %q", got)
	}
	n.Stopping("draining connections for up to 30s")
	if got := s.next(time.Second); got != "STOPPING=1\nSTATUS=draining connections for up to 30s" {
		t.Fatalf("stopping: %q", got)
	}
	s.none()
	if logs.Len() != 0 {
		t.Errorf("logged %v", logs.All())
	}
}

// Without $NOTIFY_SOCKET nothing is sent, nothing starts and nothing is
// logged, even with a watchdog in the environment.
func TestNotifierWithoutSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "1000")
	log, logs := observed()
	n := NewNotifier(log)
	if n.Enabled() || n.WatchdogInterval() != 0 {
		t.Fatalf("enabled %v, watchdog %s without NOTIFY_SOCKET", n.Enabled(), n.WatchdogInterval())
	}
	n.Ready("x")
	n.Reloading()
	n.Status("y")
	n.Stopping("z")
	stop := n.Keepalive(func() error { t.Error("alive called"); return nil }, func() string { return "s" })
	stop()
	if logs.Len() != 0 {
		t.Errorf("logged %v", logs.All())
	}
}

// A socket that went away is logged once at warn level, then at debug.
func TestNotifierSendFailure(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "gone"))
	log, logs := observed()
	n := NewNotifier(log)
	n.Ready("a")
	n.Ready("b")
	warns := logs.FilterLevelExact(zap.WarnLevel).Len()
	debugs := logs.FilterLevelExact(zap.DebugLevel).Len()
	if warns != 1 || debugs != 1 {
		t.Fatalf("%d warnings and %d debug lines, want 1 and 1: %v", warns, debugs, logs.All())
	}
}

func TestWatchdogInterval(t *testing.T) {
	newManagerSocket(t)
	for _, tc := range []struct {
		name      string
		usec, pid string
		want      time.Duration
	}{
		{"no watchdog", "", "", 0},
		{"half the interval", "200000", "", 100 * time.Millisecond},
		{"for this process", "200000", itoa(os.Getpid()), 100 * time.Millisecond},
		{"for another process", "200000", "1", 0},
		{"invalid", "soon", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("WATCHDOG_USEC", tc.usec)
			t.Setenv("WATCHDOG_PID", tc.pid)
			if got := NewNotifier(zap.NewNop()).WatchdogInterval(); got != tc.want {
				t.Fatalf("WatchdogInterval() = %s, want %s", got, tc.want)
			}
		})
	}
}

// Keepalive sends WATCHDOG=1 after each successful liveness check and
// withholds it while the check fails. The test answers each check itself,
// so the sequence is exact.
func TestKeepaliveWatchdog(t *testing.T) {
	s := newManagerSocket(t)
	t.Setenv("WATCHDOG_USEC", "20000") // a tick every 10ms
	log, logs := observed()
	n := NewNotifier(log)
	answers := make(chan error)
	quit := make(chan struct{})
	alive := func() error {
		select {
		case err := <-answers:
			return err
		case <-quit:
			return errors.New("test over")
		}
	}
	stop := n.Keepalive(alive, nil)
	var once sync.Once
	end := func() { once.Do(func() { close(quit) }); stop() }
	defer end()

	answers <- nil
	if got := s.next(time.Second); got != "WATCHDOG=1" {
		t.Fatalf("got %q, want WATCHDOG=1", got)
	}
	answers <- errors.New("accept loop gone")
	answers <- errors.New("accept loop gone")
	answers <- nil // the next datagram is this keep-alive: none for the failures
	if got := s.next(time.Second); got != "WATCHDOG=1" {
		t.Fatalf("got %q, want WATCHDOG=1", got)
	}
	if e := logs.FilterLevelExact(zap.ErrorLevel).FilterMessageSnippet("not alive").Len(); e != 1 {
		t.Errorf("%d 'not alive' errors logged for one failing episode, want 1", e)
	}
	if i := logs.FilterMessageSnippet("alive again").Len(); i != 1 {
		t.Errorf("%d 'alive again' lines, want 1", i)
	}
	end()
	s.none()
}

// Keepalive refreshes STATUS= when the summary changes, and only then.
func TestKeepaliveStatus(t *testing.T) {
	s := newManagerSocket(t)
	n := NewNotifier(zap.NewNop())
	n.StatusEvery = 5 * time.Millisecond
	var status atomic.Value
	status.Store("1 listener, 2/2 backends up")
	n.Ready(status.Load().(string))
	if got := s.next(time.Second); got != "READY=1\nSTATUS=1 listener, 2/2 backends up" {
		t.Fatalf("ready: %q", got)
	}
	stop := n.Keepalive(nil, func() string { return status.Load().(string) })
	defer stop()
	status.Store("1 listener, 1/2 backends up")
	if got := s.next(2 * time.Second); got != "STATUS=1 listener, 1/2 backends up" {
		t.Fatalf("status: %q", got)
	}
	status.Store("1 listener, 2/2 backends up")
	if got := s.next(2 * time.Second); got != "STATUS=1 listener, 2/2 backends up" {
		t.Fatalf("status: %q", got)
	}
	stop()
	s.none()
}

func TestAdopt(t *testing.T) {
	tcpLn, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tcpLn.Close()
	udpConn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udpConn.Close()
	client, err := net.DialTCP("tcp", nil, tcpLn.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()

	file := func(f interface{ File() (*os.File, error) }) *os.File {
		t.Helper()
		ff, err := f.File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ff.Close() })
		return ff
	}
	for _, tc := range []struct {
		name    string
		f       *os.File
		key     string
		wantErr string
	}{
		{"listening TCP socket", file(tcpLn), "tcp|" + tcpLn.Addr().String(), ""},
		{"UDP socket", file(udpConn), "udp|" + udpConn.LocalAddr().String(), ""},
		{"connected TCP socket (Accept=yes)", file(client), "", "Accept=yes"},
		{"pipe", pr, "", "not a socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock, err := adopt(tc.f)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("adopt: %v, want an error about %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer sock.Conn.Close()
			if key := sock.String(); key != tc.key {
				t.Fatalf("key %q, want %q", key, tc.key)
			}
		})
	}
}

func TestCanonical(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:80":          "127.0.0.1:80",
		"[::ffff:10.0.0.1]:443": "10.0.0.1:443",
		"[::]:53":               "[::]:53",
		"[2001:db8::1]:8080":    "[2001:db8::1]:8080",
	} {
		if got := canonical(netip.MustParseAddrPort(in)).String(); got != want {
			t.Errorf("canonical(%s) = %s, want %s", in, got, want)
		}
	}
}

// Without socket activation Inherited returns no socket and no error,
// and a LISTEN_PID for another process is not ours to take.
func TestInheritedNone(t *testing.T) {
	for _, env := range [][2]string{{"", ""}, {"1", "1"}} {
		t.Setenv("LISTEN_PID", env[0])
		t.Setenv("LISTEN_FDS", env[1])
		got, err := Inherited()
		if err != nil || len(got) != 0 {
			t.Fatalf("LISTEN_PID=%q: Inherited() = %v, %v; want none", env[0], got, err)
		}
	}
}

func monotonicUsec(t *testing.T) int64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}

func parseInt(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestNotifierMainPID: MAINPID= alone in its datagram; nothing without
// $NOTIFY_SOCKET.
func TestNotifierMainPID(t *testing.T) {
	ms := newManagerSocket(t)
	log, _ := observed()
	NewNotifier(log).MainPID(4242)
	if got := ms.next(5 * time.Second); got != "MAINPID=4242" {
		t.Fatalf("datagram %q", got)
	}
	t.Setenv("NOTIFY_SOCKET", "")
	NewNotifier(log).MainPID(4243)
	ms.none()
}

// TestKeepaliveFirstAtOnce: the first keep-alive goes out when Keepalive
// starts, not an interval later (the new process of lbctl upgrade takes
// over the watchdog from the old one, which has stopped its own).
func TestKeepaliveFirstAtOnce(t *testing.T) {
	s := newManagerSocket(t)
	t.Setenv("WATCHDOG_USEC", "60000000") // a tick every 30s
	n := NewNotifier(zap.NewNop())
	stop := n.Keepalive(func() error { return nil }, nil)
	defer stop()
	if got := s.next(10 * time.Second); got != "WATCHDOG=1" {
		t.Fatalf("got %q within 10s of the start, want WATCHDOG=1 (the next tick is 30s away)", got)
	}
}
