// Command lblab is make lab: three lbctl instances behind a bird2 router
// that spreads one service address's flows over them with ECMP, three
// backends and a client with 1,000 addresses, all in network namespaces
// (pkg/lab builds them). It prints where the flows went, the instances'
// table digests, what happens when one loses its backends and when one
// is stopped with SIGTERM, then deletes everything it made.
//
//	make lab                                  # builds bin/lbctl and bin/lblab, runs this
//	sudo bin/lblab --lbctl bin/lbctl --keep   # leave the lab up until Ctrl-C
//
// It needs root, ip (iproute2) and bird2: apt-get install bird2 iproute2.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/lbctl/lbctl/pkg/lab"
)

func main() {
	lbctl := flag.String("lbctl", "bin/lbctl", "the lbctl binary the instances run")
	keep := flag.Bool("keep", false, "after the tour, keep the lab up until Ctrl-C (the namespaces are named lblab<pid>-*)")
	dir := flag.String("dir", "", "write the configurations, sockets and logs (bird's, each lbctl's) here and keep them; default: a temporary directory, removed")
	flag.Parse()
	if err := run(*lbctl, *dir, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "lblab:", err)
		os.Exit(1)
	}
}

// need says how to get what the lab needs, before anything is made.
func need(lbctl string) error {
	if os.Geteuid() != 0 {
		return errors.New("the lab creates network namespaces: run it as root (sudo make lab)")
	}
	for _, bin := range []string{"ip", "bird", "birdc"} {
		if _, err := exec.LookPath(bin); err != nil {
			if _, err := os.Stat("/usr/sbin/" + bin); err != nil {
				return fmt.Errorf("%s not found: apt-get install bird2 iproute2", bin)
			}
		}
	}
	if _, err := os.Stat(lbctl); err != nil {
		return fmt.Errorf("%v (make build writes bin/lbctl)", err)
	}
	return nil
}

func run(lbctl, dir string, keep bool) error {
	if err := need(lbctl); err != nil {
		return err
	}
	// Ctrl-C or SIGTERM at any point: stop, undo the lab, exit.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	var l *lab.Lab
	done := make(chan struct{})
	interrupted := make(chan struct{})
	go func() {
		select {
		case <-sigs:
			close(interrupted)
		case <-done:
		}
	}()
	result := make(chan error, 1)
	go func() {
		var err error
		if dir != "" {
			if err = os.MkdirAll(dir, 0o755); err != nil {
				result <- err
				return
			}
		}
		l, err = lab.Start(lab.Options{Lbctl: lbctl, Dir: dir, Progress: os.Stdout})
		if err == nil {
			_, err = l.Tour(os.Stdout)
		}
		result <- err
	}()
	var err error
	select {
	case err = <-result:
	case <-interrupted:
		fmt.Println("\nlblab: interrupted; removing the lab")
		err = errors.New("interrupted")
		// The tour's own waits are bounded; wait for it, then undo.
		<-result
	}
	if err == nil && keep {
		fmt.Println("\nlblab: the lab is up (ip netns list; its files: " + l.Dir() + "); Ctrl-C removes it")
		<-interrupted
	}
	close(done)
	if l != nil {
		l.Close()
	}
	return err
}
