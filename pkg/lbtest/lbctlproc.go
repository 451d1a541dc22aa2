package lbtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Lbctl is an `lbctl serve` process run by a test or by lbsoak and
// followed across upgrades: after `lbctl upgrade` the process serving is a
// child of the first one (then an orphan), not of this process, so it is
// known by its PID only, and watched through /proc. Output goes to a file
// (LogPath), never to a pipe: a pipe would stay open in the upgraded
// process and keep exec.Cmd.Wait of the first one from returning.
//
// Only PIDs this Lbctl started, or that an upgrade it asked for reported,
// are ever signalled.
type Lbctl struct {
	Bin     string
	Args    []string // after "serve"
	Admin   string   // host:port of [admin]
	LogPath string

	mu   sync.Mutex
	pid  int         // the process serving now
	logf *os.File    // shared by every process started here
	cmds []*exec.Cmd // children started here (reaped by their goroutines)
}

// StartLbctl runs `bin serve args...`, output appended to logPath, and
// waits until admin's /readyz answers 200 (at most 30s).
func StartLbctl(bin, logPath, admin string, args ...string) (*Lbctl, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	l := &Lbctl{Bin: bin, Args: args, Admin: admin, LogPath: logPath, logf: f}
	if err := l.spawn(); err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

// spawn starts a new process of this Lbctl and waits until it is ready.
func (l *Lbctl) spawn() error {
	cmd := exec.Command(l.Bin, append([]string{"serve"}, l.Args...)...)
	cmd.Stdout, cmd.Stderr = l.logf, l.logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", l.Bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	l.mu.Lock()
	l.pid = cmd.Process.Pid
	l.cmds = append(l.cmds, cmd)
	l.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if l.Get("/readyz") == http.StatusOK {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("lbctl exited at start (%v):\n%s", cmd.ProcessState, l.Tail(4000))
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return fmt.Errorf("lbctl not ready within 30s:\n%s", l.Tail(4000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// PID is the process serving now.
func (l *Lbctl) PID() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pid
}

// Get returns the status code of a GET of path on the admin API (0: no
// answer).
func (l *Lbctl) Get(path string) int {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + l.Admin + path)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// Tail is the last n bytes of the log.
func (l *Lbctl) Tail(n int) string {
	b, _ := os.ReadFile(l.LogPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Alive reports whether pid runs (exists and is not a zombie).
func Alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// WaitGone waits until pid no longer runs; false after timeout.
func WaitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for Alive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// Children returns the PIDs of pid's children.
func Children(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// Handover is the outcome of one Upgrade (or Restart).
type Handover struct {
	OldPID   int `json:"old_pid"`
	NewPID   int `json:"new_pid"`
	TCPMoved int `json:"tcp_moved"`
	UDPMoved int `json:"udp_moved"`
	TCPLeft  int `json:"tcp_left"`
	// Took is the time from the request to its answer.
	Took time.Duration `json:"-"`
	// OldExit is the time from the answer to the old process's exit.
	OldExit time.Duration `json:"-"`
	Body    string        `json:"-"` // the answer as it came
}

func (h *Handover) String() string {
	return fmt.Sprintf("pid %d -> %d: tcp moved %d, left %d; udp moved %d; answered in %v, old exited %v later",
		h.OldPID, h.NewPID, h.TCPMoved, h.TCPLeft, h.UDPMoved, h.Took.Round(time.Millisecond), h.OldExit.Round(time.Millisecond))
}

// Upgrade asks lbctl for an upgrade (POST /api/v1/upgrade, body binary
// when not "") and waits for the old process to exit (at most exitWithin
// after the answer). The new process serves from then on.
func (l *Lbctl) Upgrade(binary string, exitWithin time.Duration) (*Handover, error) {
	old := l.PID()
	body := []byte("{}")
	if binary != "" {
		body, _ = json.Marshal(map[string]string{"binary": binary})
	}
	c := http.Client{Timeout: 2 * time.Minute}
	start := time.Now()
	resp, err := c.Post("http://"+l.Admin+"/api/v1/upgrade", "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("upgrade request: %w", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	h := &Handover{Took: time.Since(start), Body: string(b)}
	answered := time.Now()
	if resp.StatusCode != http.StatusOK {
		return h, fmt.Errorf("upgrade: %s: %s", resp.Status, b)
	}
	if err := json.Unmarshal(b, h); err != nil {
		return h, fmt.Errorf("upgrade answer %q: %w", b, err)
	}
	if h.OldPID != old || h.NewPID <= 0 || h.NewPID == old {
		return h, fmt.Errorf("upgrade answer %q: want old_pid %d and a new pid", b, old)
	}
	l.mu.Lock()
	l.pid = h.NewPID
	l.mu.Unlock()
	if !WaitGone(old, exitWithin) {
		return h, fmt.Errorf("old pid %d still runs %v after the upgrade answered", old, exitWithin)
	}
	h.OldExit = time.Since(answered)
	return h, nil
}

// Restart is what an upgrade without handover would be: SIGTERM to the
// process serving (it drains for its shutdown_timeout), then a new
// process started once it has exited. Tests use it to show that the load
// catches what a plain restart drops.
func (l *Lbctl) Restart(exitWithin time.Duration) (*Handover, error) {
	old := l.PID()
	start := time.Now()
	syscall.Kill(old, syscall.SIGTERM)
	if !WaitGone(old, exitWithin) {
		return nil, fmt.Errorf("pid %d still runs %v after SIGTERM", old, exitWithin)
	}
	if err := l.spawn(); err != nil {
		return nil, err
	}
	return &Handover{OldPID: old, NewPID: l.PID(), Took: time.Since(start)}, nil
}

// Stop sends SIGTERM to the process serving and waits up to timeout for
// it to exit, then kills it (and reports that).
func (l *Lbctl) Stop(timeout time.Duration) error {
	pid := l.PID()
	if !Alive(pid) {
		return nil
	}
	syscall.Kill(pid, syscall.SIGTERM)
	if WaitGone(pid, timeout) {
		return nil
	}
	syscall.Kill(pid, syscall.SIGKILL)
	WaitGone(pid, 5*time.Second)
	return errors.New("lbctl pid " + strconv.Itoa(pid) + " did not exit within " + timeout.String() + " of SIGTERM")
}

// Kill kills every process of this Lbctl still running (the one serving,
// an old one still draining, a new one an upgrade left behind) and closes
// the log. For cleanups.
func (l *Lbctl) Kill() {
	l.mu.Lock()
	pids := []int{l.pid}
	for _, c := range l.cmds {
		pids = append(pids, c.Process.Pid)
	}
	l.mu.Unlock()
	for _, p := range pids {
		for _, c := range Children(p) { // an upgrade's new process, not yet reported
			if Alive(c) {
				syscall.Kill(c, syscall.SIGKILL)
			}
		}
		if Alive(p) {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
	for _, p := range pids {
		WaitGone(p, 5*time.Second)
	}
	l.logf.Close()
}
