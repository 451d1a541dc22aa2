package tcpproxy

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestWatchdogWakesAParkedLoop: a loop that stays parked with its set
// ready through two of the watchdog's looks, without a turn between them,
// is woken through its eventfd and counted; a loop that took a turn, or
// whose set has nothing ready, is left alone. The loop here never runs: it
// stands for one whose wake-up got lost.
func TestWatchdogWakesAParkedLoop(t *testing.T) {
	e := handEngine(t)
	e.sleeping = true
	before := missedWakeups.Load()

	e.watchdogLook()
	e.watchdogLook()
	if n := missedWakeups.Load() - before; n != 0 {
		t.Fatalf("nothing ready, yet %d wake-ups", n)
	}

	// A readable socket in the set: it is ready from now on.
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rc, _ := s.SyscallConn()
	ev := unix.EpollEvent{Events: sockEvents, Fd: 0}
	rc.Control(func(fd uintptr) { err = unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev) })
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("x"))
	if !epollReady(e.epfd) {
		t.Fatal("the set is not ready with a readable socket in it")
	}

	e.watchdogLook() // first look: parked and ready
	e.turns.Add(1)   // a turn: not stuck
	e.watchdogLook()
	if n := missedWakeups.Load() - before; n != 0 {
		t.Fatalf("a loop that took a turn was woken (%d)", n)
	}
	e.watchdogLook() // parked, ready, no turn since the last look
	if n := missedWakeups.Load() - before; n != 1 {
		t.Fatalf("%d wake-ups, want 1", n)
	}
	var b [8]byte
	if n, err := unix.Read(e.evfd, b[:]); n != 8 || err != nil || b[0] != 1 {
		t.Fatalf("eventfd read %d %v %v: the loop was not woken through it", n, err, b)
	}
	e.watchdogLook() // right after a wake-up: a new episode starts
	if n := missedWakeups.Load() - before; n != 1 {
		t.Fatalf("%d wake-ups after the next look, want still 1", n)
	}
}

// TestLoopsParkedInEpoll runs the loop tests again in a child process
// whose loops wait in epoll_pwait themselves (LBCTL_TCP_PARK=epoll), the
// other way a loop can park; its engines are the process's, so it takes a
// process of its own.
func TestLoopsParkedInEpoll(t *testing.T) {
	if os.Getenv("LBCTL_TCP_PARK") == "epoll" {
		t.Skip("this process is the child")
	}
	if testing.Short() {
		t.Skip("a child process of loop tests")
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestLoop(Accept|Dial|StalledWriters|HangUp)", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "LBCTL_TCP_PARK=epoll")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("loop tests with LBCTL_TCP_PARK=epoll: %v\n%s", err, out)
	}
	if n := strings.Count(string(out), "--- PASS: TestLoop"); n < 10 {
		t.Fatalf("the child passed %d loop tests, want 10 or more:\n%s", n, out)
	}
}
