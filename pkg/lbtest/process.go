package lbtest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Binary finds the program name (or fallback, an absolute path) of a real
// server a test needs. Without it the test is skipped with a message naming
// the Debian package pkg, except under CI=true, where every real peer must
// be installed and a missing one fails the test.
func Binary(t testing.TB, name, fallback, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if _, err := os.Stat(fallback); err == nil {
		return fallback
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required under CI=true (apt-get install %s)", name, pkg)
	}
	t.Skipf("%s not installed (apt-get install %s); under CI=true this is a failure", name, pkg)
	return ""
}

// given is every port FreePort returned in this process.
var (
	givenMu sync.Mutex
	given   = map[int]bool{}
)

// FreePort returns a port of 127.0.0.1 that was free for both TCP and UDP
// a moment ago (dnsmasq binds both), outside the kernel's ephemeral range
// (net.ipv4.ip_local_port_range): a port in that range can be taken
// between the check and the caller's bind by any outgoing connection or
// 127.0.0.1:0 listener of the machine, and a loaded test run makes
// thousands. Another FreePort, in another test process, may still take
// it: callers retry a failed start on a new port. It never returns the
// same port twice in one process.
func FreePort(t testing.TB) int {
	t.Helper()
	lo, hi := freeRange()
	for range 200 {
		port := pickPort(lo, hi)
		u, err := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		u.Close()
		if err != nil {
			continue
		}
		l.Close()
		givenMu.Lock()
		seen := given[port]
		given[port] = true
		givenMu.Unlock()
		if !seen {
			return port
		}
	}
	t.Fatalf("no free port in [%d, %d)", lo, hi)
	return 0
}

// pickPort is where FreePort tries next, in [lo, hi); a test replaces it.
var pickPort = func(lo, hi int) int { return lo + rand.IntN(hi-lo) }

// freeRange is where FreePort looks: [lo, hi), below the ephemeral range
// when there is room for 2,000 ports, else above it, else anywhere.
func freeRange() (lo, hi int) {
	elo, ehi := 32768, 60999
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var a, z int
		if _, err := fmt.Sscan(string(b), &a, &z); err == nil && a > 0 && z >= a {
			elo, ehi = a, z
		}
	}
	switch {
	case elo-10000 >= 2000:
		return 10000, elo
	case 65535-ehi >= 2000:
		return ehi + 1, 65536
	}
	return 1024, 65536
}

// ClosedPort returns a loopback TCP address where nothing listens: connects
// to it are refused. The port stays reserved until the test ends by a
// socket bound to it that never listens, so that no listener of the test
// is given it as a free port (a port freed at once could be handed to the
// next 127.0.0.1:0 listener); SO_REUSEADDR lets a test listen on it on
// purpose (a backend coming back).
func ClosedPort(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// Process is a server program started by a test. It is stopped by its PID
// only (SIGTERM, then SIGKILL after 5s), at Stop or in the test's cleanup.
type Process struct {
	cmd    *exec.Cmd
	exited chan struct{}
	out    *SyncBuffer
	Stop   func() // idempotent; returns once the process has exited
}

// Start runs bin with args, its output kept for Output.
func Start(t testing.TB, bin string, args ...string) *Process {
	t.Helper()
	p := &Process{cmd: exec.Command(bin, args...), exited: make(chan struct{}), out: &SyncBuffer{}}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
	p.Stop = sync.OnceFunc(func() {
		p.cmd.Process.Signal(syscall.SIGTERM) // this process only, by its PID
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
	t.Cleanup(p.Stop)
	return p
}

// Running reports whether the process has not exited.
func (p *Process) Running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Output is what the process wrote to stdout and stderr so far.
func (p *Process) Output() string { return p.out.String() }

// SyncBuffer is a strings.Builder that goroutines may write and read at
// once: a child process's output, collected while the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
