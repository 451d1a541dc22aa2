package server

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Tests that run lbctl out of file descriptors do it in a child process:
// this test binary, re-executed to run only the test itself, with an
// environment variable that tells the test it is the child. The child
// lowers its RLIMIT_NOFILE, starts a server, prints a line naming its
// addresses and obeys one command a line on stdin until EOF; the parent
// drives it and reads its stdout lines and its logs (stderr).
//
//	func TestX(t *testing.T) {
//		if v := os.Getenv(xChildEnv); v != "" {
//			xChild(v) // never returns
//		}
//		child := StartChild(t, "^TestX$", xChildEnv+"="+backend)
//		addr := strings.TrimPrefix(child.WaitLine("listening "), "listening ")
//		child.Send("take")
//		child.WaitLine("took")
//	}
//
// The names are exported for udp_flood_test.go, which is in package
// server_test because it imports the admin API, which imports this package.

// Child is the parent's handle on a child process.
type Child struct {
	t      testing.TB
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    chan string // stdout, a line at a time; closed at EOF
	stderr lbtest.SyncBuffer
}

// StartChild re-executes this test binary to run only the tests matching
// run, with env added to its environment. When t ends, the child's stdin
// is closed and it has 10s to exit before it is killed.
func StartChild(t testing.TB, run string, env ...string) *Child {
	t.Helper()
	c := &Child{t: t, cmd: exec.Command(os.Args[0], "-test.run="+run), out: make(chan string, 16)}
	c.cmd.Env = append(os.Environ(), env...)
	c.cmd.Stderr = &c.stderr
	stdin, err := c.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.stdin = stdin
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		// Reading stdout to its end before Wait, as exec requires.
		lines := bufio.NewScanner(stdout)
		for lines.Scan() {
			c.out <- lines.Text()
		}
		close(c.out)
		c.cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		go func() {
			for range c.out { // lines nobody waited for
			}
		}()
		c.stdin.Close()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			c.cmd.Process.Kill() // the child only, by its PID
			<-exited
		}
	})
	return c
}

// Send writes the command cmd, a line, to the child's stdin.
func (c *Child) Send(cmd string) {
	c.t.Helper()
	if _, err := fmt.Fprintln(c.stdin, cmd); err != nil {
		c.t.Fatalf("command %q to the child: %v\n%s", cmd, err, c.Stderr())
	}
}

// WaitLine returns the next line of the child's stdout that starts with
// prefix, skipping others. It fails the test if the child exits first or
// says nothing of the kind for 20s.
func (c *Child) WaitLine(prefix string) string {
	c.t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-c.out:
			if !ok {
				c.t.Fatalf("the child exited:\n%s", c.Stderr())
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timeout:
			c.t.Fatalf("no %q from the child:\n%s", prefix, c.Stderr())
		}
	}
}

// Stderr is what the child has written to its stderr so far: its logs.
func (c *Child) Stderr() string { return c.stderr.String() }

// Pid is the child's process ID.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// The child's side. Nothing here returns an error: a child that fails
// says why on stderr, where the parent collects it, and exits.

// ChildFatal ends the child with err.
func ChildFatal(err error) {
	fmt.Fprintln(os.Stderr, "child:", err)
	os.Exit(3)
}

// ChildLimitFDs lowers the child's soft RLIMIT_NOFILE to n.
func ChildLimitFDs(n uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		ChildFatal(err)
	}
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		ChildFatal(err)
	}
}

// ChildLogger logs JSON lines, info and up, to the child's stderr.
func ChildLogger() *zap.Logger {
	return zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.Lock(os.Stderr), zap.InfoLevel))
}

// ChildServer starts a server from toml.
func ChildServer(toml string, log *zap.Logger, m *metrics.Metrics) *Server {
	cfg, err := config.Parse("child.toml", []byte(toml))
	if err != nil {
		ChildFatal(err)
	}
	srv, err := New(cfg, Options{Log: log, Metrics: m})
	if err != nil {
		ChildFatal(err)
	}
	if err := srv.Start(); err != nil {
		ChildFatal(err)
	}
	return srv
}

// ChildObey runs do for each command line on stdin; at EOF (the parent's
// cleanup closes stdin) the child exits. do may be nil.
func ChildObey(do func(cmd string)) {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if do != nil {
			do(in.Text())
		}
	}
	os.Exit(0)
}

// childFillFDs opens /dev/null until the descriptor table is full and
// returns the files.
func childFillFDs() []*os.File {
	var fill []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				ChildFatal(err)
			}
			return fill
		}
		fill = append(fill, f)
	}
}
