package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// lbctl is the lbctl process under test.
type lbctl struct {
	cmd    *exec.Cmd
	admin  string
	log    string
	exited chan struct{}
	err    error // Wait's result, once exited is closed
}

func startLbctl(bin, config, logPath, admin string) (*lbctl, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", "--config", config)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	l := &lbctl{cmd: cmd, admin: admin, log: logPath, exited: make(chan struct{})}
	go func() {
		l.err = cmd.Wait()
		logf.Close()
		close(l.exited)
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return l, nil
			}
		}
		select {
		case <-l.exited:
			return nil, fmt.Errorf("lbctl exited at start (%v):\n%s", l.err, l.tail())
		default:
		}
		if time.Now().After(deadline) {
			l.kill()
			return nil, fmt.Errorf("lbctl not ready within 15s:\n%s", l.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tail is the end of lbctl's log.
func (l *lbctl) tail() string {
	b, _ := os.ReadFile(l.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func (l *lbctl) kill() {
	select {
	case <-l.exited:
	default:
		l.cmd.Process.Kill()
		<-l.exited
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (l *lbctl) stop(timeout time.Duration) error {
	l.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-l.exited:
		return l.err
	case <-time.After(timeout):
		l.kill()
		return errors.New("lbctl did not exit within " + timeout.String() + " of SIGTERM")
	}
}

// reload sends SIGHUP and waits until lbctl counts a successful reload.
func (l *lbctl) reload() error {
	before, err := l.metric("lbctl_config_reloads_total", `result="success"`)
	if err != nil {
		return err
	}
	if err := l.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if n, err := l.metric("lbctl_config_reloads_total", `result="success"`); err == nil && n > before {
			return nil
		}
		if n, err := l.metric("lbctl_config_reloads_total", `result="failure"`); err == nil && n > 0 {
			return fmt.Errorf("lbctl rejected the new configuration:\n%s", l.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("no successful reload counted within 10s of SIGHUP")
}

// metrics fetches lbctl's /metrics.
func (l *lbctl) metrics() (string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + l.admin + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func (l *lbctl) metric(name, labels string) (float64, error) {
	text, err := l.metrics()
	if err != nil {
		return 0, err
	}
	return sumMetric(text, name, labels), nil
}

// sumMetric adds up the samples of name (in Prometheus text format) whose
// labels contain every comma-separated pair of labels.
func sumMetric(text, name, labels string) float64 {
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		var lbl string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				continue
			}
			lbl, rest = rest[1:end], rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // a longer name with this prefix
		}
		match := true
		for _, want := range strings.Split(labels, ",") {
			if want != "" && !strings.Contains(","+lbl+",", ","+want+",") {
				match = false
			}
		}
		if !match {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// sample is lbctl's resource use at one moment.
type sample struct {
	label                  string
	goroutines, fds        int
	fdKinds                fdKinds
	rss                    int64
	tcpActive, udpSessions int
}

// fdKinds counts a process's descriptors by what they are.
type fdKinds struct{ sockets, pipes, other int }

func (k fdKinds) String() string {
	return fmt.Sprintf("%d sockets, %d pipes, %d other", k.sockets, k.pipes, k.other)
}

func readFDKinds(pid int) fdKinds {
	var k fdKinds
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		target, err := os.Readlink(dir + "/" + e.Name())
		switch {
		case err != nil:
		case strings.HasPrefix(target, "socket:"):
			k.sockets++
		case strings.HasPrefix(target, "pipe:"):
			k.pipes++
		default:
			k.other++
		}
	}
	return k
}

func (l *lbctl) sample(label string) (sample, error) {
	text, err := l.metrics()
	if err != nil {
		return sample{}, err
	}
	s := sample{
		label:       label,
		goroutines:  int(sumMetric(text, "go_goroutines", "")),
		fds:         int(sumMetric(text, "process_open_fds", "")),
		rss:         int64(sumMetric(text, "process_resident_memory_bytes", "")),
		tcpActive:   int(sumMetric(text, "lbctl_connections_active", "")),
		udpSessions: int(sumMetric(text, "lbctl_udp_sessions_active", "")),
		fdKinds:     readFDKinds(l.cmd.Process.Pid),
	}
	if s.goroutines == 0 {
		return s, errors.New("no go_goroutines in /metrics")
	}
	return s, nil
}

// freePorts returns n distinct loopback ports free for both TCP and UDP
// (the kernel may hand the port it just freed out again at once).
func freePorts(n int) ([]int, error) {
	var out []int
	for tries := 0; len(out) < n && tries < 100; tries++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		ln.Close()
		if err != nil {
			continue
		}
		u.Close()
		if !slices.Contains(out, port) {
			out = append(out, port)
		}
	}
	if len(out) < n {
		return nil, errors.New("no free ports")
	}
	return out, nil
}
