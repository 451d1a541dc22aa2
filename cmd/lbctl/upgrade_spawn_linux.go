package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// spawn starts bin with args (argv[0] first) through the spawner, with
// end (the upgrade channel) as its descriptor 3 and env.
func spawn(bin string, args []string, env []string, end *os.File) (*child, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "upgrade-spawn"), os.NewFile(uintptr(fds[1]), "upgrade-spawn")
	cmd := exec.Command("/proc/self/exe", append([]string{bin}, args...)...)
	cmd.Args[0] = "lbctl-upgrade-spawner"
	cmd.Env = append(env, envSpawn+"=1")
	cmd.ExtraFiles = []*os.File{end, theirs} // 3, 4
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		mine.Close()
		return nil, fmt.Errorf("start the spawner: %w", err)
	}
	c := &child{spawner: cmd, ctl: mine, exited: make(chan struct{}), reaped: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(c.reaped)
	}()
	r := bufio.NewReader(mine)
	mine.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := r.ReadString('\n')
	mine.SetReadDeadline(time.Time{})
	kind, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	switch {
	case err != nil:
		c.release()
		return nil, fmt.Errorf("start the new process: no word from the spawner: %w", err)
	case kind == "error":
		c.release()
		return nil, fmt.Errorf("start the new process: %s", rest)
	case kind != "pid":
		c.release()
		return nil, fmt.Errorf("start the new process: the spawner said %q", line)
	}
	if c.pid, err = strconv.Atoi(rest); err != nil || c.pid <= 0 {
		c.release()
		return nil, fmt.Errorf("start the new process: the spawner said %q", line)
	}
	go func() {
		line, err := r.ReadString('\n')
		if kind, rest, _ := strings.Cut(strings.TrimSpace(line), " "); err == nil && kind == "exit" {
			c.reason = rest
		} else {
			c.reason = "its spawner went away"
		}
		close(c.exited)
	}()
	return c, nil
}
