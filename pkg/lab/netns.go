package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// netns is a network namespace made with ip netns add; its name is that
// of /run/netns/NAME.
type netns string

// ip runs ip -n NS ARGS (ip ARGS for the empty namespace: the caller's)
// and returns its output, or an error carrying it.
func (n netns) ip(args ...string) (string, error) {
	if n != "" {
		args = append([]string{"-n", string(n)}, args...)
	}
	return run("ip", args...)
}

// sysctl sets kernel parameters of the namespace (key=value each),
// writing /proc/sys from a thread inside it (a net.* file opened there is
// the namespace's own): no sysctl program needed.
func (n netns) sysctl(kv ...string) error {
	return n.do(func() error {
		for _, s := range kv {
			k, v, _ := strings.Cut(s, "=")
			p := "/proc/sys/" + strings.ReplaceAll(k, ".", "/")
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s in %s: %w", s, n, err)
			}
		}
		return nil
	})
}

// batch runs ip -n NS -batch - with the commands on its standard input,
// one a line: a thousand addresses in one process.
func (n netns) batch(lines []string) error {
	cmd := exec.Command("ip", "-n", string(n), "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s -batch: %v: %s", n, err, bytes.TrimSpace(out))
	}
	return nil
}

// enter switches the calling OS thread into the namespace. The caller has
// locked its goroutine to the thread and never unlocks it: the thread,
// now in another namespace, is ended by the runtime when the goroutine
// returns, so no other goroutine ever runs in it.
func (n netns) enter() error {
	f, err := os.Open("/run/netns/" + string(n))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", n, err)
	}
	return nil
}

// do runs f on a thread of its own inside the namespace: sockets f opens
// (listeners, dials) belong to the namespace for their whole life, while
// the rest of the program stays in its own. The thread ends with f.
func (n netns) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := n.enter(); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// workers runs k goroutines, each on a thread of its own inside the
// namespace, that call f for each job of jobs until it is closed; it
// returns once all have finished. A dial made by f originates in the
// namespace.
func (n netns) workers(k int, jobs <-chan func()) error {
	var wg sync.WaitGroup
	errs := make(chan error, k)
	for range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // never unlocked: see enter
			if err := n.enter(); err != nil {
				errs <- err
				for range jobs { // drain, so that the sender never blocks
				}
				return
			}
			for job := range jobs {
				job()
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// run runs a program, returning its output, or an error carrying it. It is
// bounded by a minute: every command the lab runs takes milliseconds.
func run(bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", bin, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}
