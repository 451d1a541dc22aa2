package main

// upgrade_spawn.go: how the old process of `lbctl upgrade` starts the new
// one so that, once handed over, the new process is not its child.
//
// systemd treats a main process that is not its own child (MAINPID= named
// a grandchild) as "alien": it cannot tell when it exits, and at
// `systemctl stop` it sends SIGTERM and, not waiting for an alien process,
// SIGKILL right after (seen with systemd 252), so no drain. The new process
// must therefore be the service manager's child when it becomes the main
// process. The old process starts it through a spawner (this same binary,
// /proc/self/exe, with $LBCTL_UPGRADE_SPAWN=1), which starts the new binary
// and stays, reporting its PID and, should it exit, its exit status, until
// the old process releases it (closes the spawner's control socket): then
// the spawner exits, the kernel hands the new process to the service
// manager (PID 1, or the nearest subreaper, which systemd --user is), and
// only then does the old process send MAINPID=.

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// envSpawn marks the spawner; its arguments are the new binary, the new
// process's argv[0], then its arguments. Descriptor 3 is the upgrade
// channel (passed on), 4 the control socket to the old process.
const envSpawn = "LBCTL_UPGRADE_SPAWN"

func init() {
	if os.Getenv(envSpawn) == "1" {
		os.Exit(runSpawner())
	}
}

// runSpawner is the spawner's whole life.
func runSpawner() int {
	os.Unsetenv(envSpawn)
	unix.CloseOnExec(4)
	ctl := os.NewFile(4, "upgrade-spawn")
	if len(os.Args) < 3 {
		fmt.Fprintln(ctl, "error spawner: missing arguments")
		return 2
	}
	cmd := exec.Command(os.Args[1])
	cmd.Args = os.Args[2:]
	cmd.ExtraFiles = []*os.File{os.NewFile(3, "upgrade")}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(ctl, "error %s\n", oneLineErr(err))
		return 1
	}
	fmt.Fprintf(ctl, "pid %d\n", cmd.Process.Pid)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	released := make(chan struct{})
	go func() {
		io.Copy(io.Discard, ctl) // until the old process closes its end
		close(released)
	}()
	select {
	case err := <-exited:
		reason := "exit status 0"
		if err != nil {
			reason = oneLineErr(err)
		}
		fmt.Fprintf(ctl, "exit %s\n", reason)
	case <-released:
		// The new process carries on without its parent.
	}
	return 0
}

func oneLineErr(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

// child is the new process while the old one waits for it, seen through
// its spawner.
type child struct {
	pid     int
	spawner *exec.Cmd
	ctl     *os.File      // the spawner's control socket
	exited  chan struct{} // closed when the new process has exited (reason set) or the spawner went away
	reason  string
	reaped  chan struct{} // closed when the spawner has been waited for
}

// kill ends the new process (if still running) and waits until its
// spawner has reported it.
func (c *child) kill() {
	select {
	case <-c.exited:
	default:
		syscall.Kill(c.pid, syscall.SIGKILL)
		t := time.NewTimer(10 * time.Second)
		select {
		case <-c.exited:
		case <-t.C:
		}
		t.Stop()
	}
	c.release()
}

// release lets the spawner go, and waits for it: the new process, if it
// runs, is then the service manager's child.
func (c *child) release() {
	c.ctl.Close()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-c.reaped:
	case <-t.C:
		c.spawner.Process.Kill()
		<-c.reaped
	}
}

// exitReason describes how the new process ended.
func (c *child) exitReason() string { return c.reason }
