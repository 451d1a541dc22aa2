// Command lbdemo is lbctl's self-contained demo (make demo): it starts three
// small HTTP backends on 127.0.0.1:9001-9003, runs lbctl in front of them
// with examples/demo.toml, and shows requests being spread across them, a
// backend failing and coming back, and a drain through the admin API.
//
// It needs nothing outside this repository. With --keep it leaves
// everything running until Ctrl-C, so you can try lbctl yourself:
//
//	curl http://127.0.0.1:8080/
//	bin/lbctl status --admin 127.0.0.1:9900
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
)

const (
	frontend = "127.0.0.1:8080"
	admin    = "127.0.0.1:9900"
)

var backendAddrs = []string{"127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"}

func main() {
	lbctl := flag.String("lbctl", "bin/lbctl", "path of the lbctl binary")
	cfg := flag.String("config", "examples/demo.toml", "demo configuration")
	keep := flag.Bool("keep", false, "keep running after the tour until Ctrl-C")
	flag.Parse()
	if err := run(*lbctl, *cfg, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type backend struct {
	name string
	addr string
	srv  *http.Server
}

func startBackend(name, addr string) (*backend, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w (is something else using the demo ports?)", name, err)
	}
	b := &backend{name: name, addr: addr}
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", name)
	})}
	go b.srv.Serve(ln)
	return b, nil
}

func (b *backend) stop() { b.srv.Close() }

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(lbctlPath, cfg string, keep bool) error {
	backends := make([]*backend, len(backendAddrs))
	for i, a := range backendAddrs {
		b, err := startBackend(fmt.Sprintf("backend-%d", i+1), a)
		if err != nil {
			return err
		}
		backends[i] = b
		defer b.stop()
	}
	step("started 3 backends on %s", strings.Join(backendAddrs, ", "))

	cmd := exec.Command(lbctlPath, "serve", "--config", cfg)
	logs, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start lbctl: %w (run 'make build' first)", err)
	}
	exited := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			fmt.Println("   [lbctl] " + sc.Text())
		}
		exited <- cmd.Wait()
	}()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
		}
	}()
	step("started %s serve --config %s (pid %d)", lbctlPath, cfg, cmd.Process.Pid)
	if err := waitFor(func() bool { return get("http://"+admin+"/readyz") == nil }, 10*time.Second, exited); err != nil {
		return fmt.Errorf("lbctl did not become ready: %w", err)
	}

	step("12 requests to http://%s/", frontend)
	tally(12)

	step("status")
	status(lbctlPath)

	step("stopping backend-2: the health check takes it out of the pool")
	backends[1].stop()
	if err := waitFor(func() bool { return health("127.0.0.1:9002") == "down" }, 10*time.Second, exited); err != nil {
		return err
	}
	tally(6)

	step("restarting backend-2: it comes back after the health check's rise count")
	b, err := startBackend("backend-2", backendAddrs[1])
	if err != nil {
		return err
	}
	backends[1] = b
	if err := waitFor(func() bool { return health("127.0.0.1:9002") == "up" }, 10*time.Second, exited); err != nil {
		return err
	}
	tally(6)

	step("lbctl backend drain demo 127.0.0.1:9003: no new connections for it")
	run := exec.Command(lbctlPath, "backend", "drain", "demo", "127.0.0.1:9003", "--admin", admin)
	run.Stdout, run.Stderr = os.Stdout, os.Stderr
	run.Run()
	tally(6)
	exec.Command(lbctlPath, "backend", "enable", "demo", "127.0.0.1:9003", "--admin", admin).Run()

	step("a few of the Prometheus metrics on http://%s/metrics", admin)
	metrics()

	if keep {
		step("lbctl is running on %s (admin on %s). Ctrl-C to stop.", frontend, admin)
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		select {
		case <-sig:
		case err := <-exited:
			return fmt.Errorf("lbctl exited: %v", err)
		}
	}
	step("stopping lbctl with SIGTERM")
	return nil
}

// tally sends n requests through lbctl and prints who answered.
func tally(n int) {
	counts := map[string]int{}
	var order []string
	for i := 0; i < n; i++ {
		body, err := fetch("http://" + frontend + "/")
		if err != nil {
			body = "error: " + err.Error()
		}
		body = strings.TrimSpace(body)
		counts[body]++
		order = append(order, strings.TrimPrefix(body, "hello from "))
	}
	fmt.Printf("    answered by: %s\n", strings.Join(order, " "))
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("    %-28s %d\n", k, counts[k])
	}
}

var client = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func fetch(url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func get(url string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// health is the backend's health in the status JSON ("up", "down"), "" when
// it cannot be read. The demo waits on it rather than on the text of lbctl
// status, whose columns may change.
func health(address string) string {
	body, err := fetch("http://" + admin + "/api/v1/status")
	if err != nil {
		return ""
	}
	var st struct {
		Pools []struct {
			Backends []struct{ Address, Health string }
		}
	}
	if json.Unmarshal([]byte(body), &st) != nil {
		return ""
	}
	for _, p := range st.Pools {
		for _, b := range p.Backends {
			if b.Address == address {
				return b.Health
			}
		}
	}
	return ""
}

func statusText(lbctl string) string {
	out, _ := exec.Command(lbctl, "status", "--admin", admin).CombinedOutput()
	return string(out)
}

func status(lbctl string) { fmt.Print(indent(statusText(lbctl))) }

func metrics() {
	body, err := fetch("http://" + admin + "/metrics")
	if err != nil {
		fmt.Println("    ", err)
		return
	}
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "lbctl_connections_total") || strings.HasPrefix(l, "lbctl_backend_up") {
			fmt.Println("    " + l)
		}
	}
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ") + "\n"
}

// waitFor polls cond until it holds, the timeout passes, or lbctl exits.
func waitFor(cond func() bool, timeout time.Duration, exited <-chan error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for !cond() {
		select {
		case err := <-exited:
			return fmt.Errorf("lbctl exited: %v", err)
		case <-ctx.Done():
			return errors.New("timed out")
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
