// Command lbsoak is lbctl's soak test: it runs a real lbctl process for a
// long time under mixed load, kills and restarts backends and reloads the
// configuration meanwhile, verifies every byte, and checks at the end that
// lbctl's goroutines, descriptors and memory did not grow.
//
//	make soak DURATION=10m
//	bin/lbsoak -lbctl bin/lbctl -duration 10m
//
// The load, all on loopback:
//   - long TCP transfers (8-64 MiB each way) through an echo backend,
//     SHA-256 checked on the way back;
//   - short TCP connections (1 byte to 16 KiB), likewise checked;
//   - UDP ping-pong with random datagrams, each reply compared byte for
//     byte, from sockets replaced every 300 datagrams (new sessions).
//
// Chaos: every -kill-every a random backend (TCP or UDP) is killed (its
// connections reset, as a crash would) and restarted -down-for later on the
// same port; every -reload-every the configuration is rewritten (algorithm,
// weights, timeouts) and lbctl is sent SIGHUP.
//
// Accounting: each backend tags what it serves with its identity and
// generation, so a stream cut because its own backend was killed is counted
// apart ("killed backend": the design cannot save it); every other failure
// counts against lbctl, and so does any stream or datagram that comes back
// with other bytes than were sent. At the end lbsoak prints a table and
// exits 1 when a failure was seen or a resource grew beyond its bound.
//
// It is not part of `make test`: a run takes minutes and two busy cores.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

type options struct {
	lbctl        string
	duration     time.Duration
	killEvery    time.Duration
	downFor      time.Duration
	reloadEvery  time.Duration
	longWorkers  int
	shortWorkers int
	udpWorkers   int
	tcpBackends  int
	udpBackends  int
	dir          string
	seed         uint64
}

func main() {
	var o options
	flag.StringVar(&o.lbctl, "lbctl", "bin/lbctl", "lbctl binary to run")
	flag.DurationVar(&o.duration, "duration", 10*time.Minute, "how long the load runs")
	flag.DurationVar(&o.killEvery, "kill-every", 15*time.Second, "time between backend kills (0 = none)")
	flag.DurationVar(&o.downFor, "down-for", 5*time.Second, "how long a killed backend stays down")
	flag.DurationVar(&o.reloadEvery, "reload-every", 20*time.Second, "time between config reloads (0 = none)")
	flag.IntVar(&o.longWorkers, "long", 3, "concurrent long transfers")
	flag.IntVar(&o.shortWorkers, "short", 12, "concurrent short-connection loops")
	flag.IntVar(&o.udpWorkers, "udp", 6, "concurrent UDP ping loops")
	flag.IntVar(&o.tcpBackends, "tcp-backends", 4, "TCP echo backends")
	flag.IntVar(&o.udpBackends, "udp-backends", 2, "UDP echo backends")
	flag.StringVar(&o.dir, "dir", "", "directory for lbctl's config and log (default: a temporary one)")
	flag.Uint64Var(&o.seed, "seed", uint64(time.Now().UnixNano()), "seed of the load's random choices")
	flag.Parse()
	if o.tcpBackends < 2 || o.udpBackends < 2 {
		fmt.Fprintln(os.Stderr, "lbsoak: at least 2 TCP and 2 UDP backends (one may be down at a time)")
		os.Exit(2)
	}
	if o.dir == "" {
		d, err := os.MkdirTemp("", "lbsoak")
		if err != nil {
			fmt.Fprintln(os.Stderr, "lbsoak:", err)
			os.Exit(1)
		}
		defer os.RemoveAll(d)
		o.dir = d
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lbsoak:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

// soak is one run.
type soak struct {
	o       options
	tcp     []*tcpBackend
	udp     []*udpBackend
	tcpAddr string // lbctl's listeners
	udpAddr string
	lb      *lbctl
	led     ledger
	reloads struct{ ok, failed int }
}

func run(ctx context.Context, o options) (bool, error) {
	s := &soak{o: o}
	for i := 0; i < o.tcpBackends; i++ {
		b, err := startTCPBackend(uint32(i))
		if err != nil {
			return false, err
		}
		defer b.kill()
		s.tcp = append(s.tcp, b)
	}
	for i := 0; i < o.udpBackends; i++ {
		b, err := startUDPBackend(uint32(i))
		if err != nil {
			return false, err
		}
		defer b.kill()
		s.udp = append(s.udp, b)
	}
	ports, err := freePorts(3)
	if err != nil {
		return false, err
	}
	s.tcpAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	s.udpAddr = fmt.Sprintf("127.0.0.1:%d", ports[1])
	cfg := configFile{admin: fmt.Sprintf("127.0.0.1:%d", ports[2]), tcpBind: s.tcpAddr, udpBind: s.udpAddr}
	for _, b := range s.tcp {
		cfg.tcp = append(cfg.tcp, b.addr)
	}
	for _, b := range s.udp {
		cfg.udp = append(cfg.udp, b.addr)
	}
	path := filepath.Join(o.dir, "lbctl.toml")
	if err := os.WriteFile(path, []byte(cfg.render(0)), 0o644); err != nil {
		return false, err
	}
	s.lb, err = startLbctl(o.lbctl, path, filepath.Join(o.dir, "lbctl.log"), cfg.admin)
	if err != nil {
		return false, err
	}
	defer s.lb.kill()
	fmt.Printf("lbsoak: %v of load on lbctl pid %d (tcp %s, udp %s), %d tcp + %d udp backends, seed %d\n",
		o.duration, s.lb.cmd.Process.Pid, s.tcpAddr, s.udpAddr, o.tcpBackends, o.udpBackends, o.seed)

	time.Sleep(2 * time.Second) // first health checks done, nothing in flight
	var samples []sample
	take := func(label string) {
		sm, err := s.lb.sample(label)
		if err != nil {
			s.led.note("sample %s: %v", label, err)
			return
		}
		samples = append(samples, sm)
		fmt.Printf("  %-14s goroutines %5d  fds %5d (%s)  rss %6.1f MiB  tcp active %d  udp sessions %d\n",
			sm.label, sm.goroutines, sm.fds, sm.fdKinds, float64(sm.rss)/(1<<20), sm.tcpActive, sm.udpSessions)
	}
	take("start (idle)")

	loadCtx, stopLoad := context.WithTimeout(ctx, o.duration)
	defer stopLoad()
	var wg sync.WaitGroup
	seeds := rand.New(rand.NewPCG(o.seed, 0))
	for i := 0; i < o.longWorkers; i++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			s.tcpWorker(loadCtx, &s.led.long, "long", 8<<20, 64<<20, 3*time.Minute, seed)
		}(seeds.Uint64())
	}
	for i := 0; i < o.shortWorkers; i++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			s.tcpWorker(loadCtx, &s.led.short, "short", 1, 16<<10, 30*time.Second, seed)
		}(seeds.Uint64())
	}
	for i := 0; i < o.udpWorkers; i++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			s.udpWorker(loadCtx, seed)
		}(seeds.Uint64())
	}
	chaosDone := make(chan struct{})
	go func() {
		defer close(chaosDone)
		s.chaos(loadCtx, path, cfg, seeds.Uint64())
	}()

	// Samples under load: after a warm-up, and as the load ends.
	warm := min(o.duration/4, time.Minute)
	select {
	case <-time.After(warm):
		take("under load")
	case <-loadCtx.Done():
	}
	progress := time.NewTicker(time.Minute)
	defer progress.Stop()
	deadline, _ := loadCtx.Deadline()
	endOfLoad := time.After(time.Until(deadline) - time.Second)
	for loadCtx.Err() == nil {
		select {
		case <-progress.C:
			s.printProgress()
		case <-endOfLoad:
			take("end of load")
		case <-loadCtx.Done():
		}
	}
	<-chaosDone
	wg.Wait()
	for _, b := range s.tcp {
		if err := b.restart(); err != nil {
			return false, err
		}
	}
	for _, b := range s.udp {
		if err := b.restart(); err != nil {
			return false, err
		}
	}
	// Idle again: no connection open, UDP sessions expired.
	drained := time.Now().Add(30 * time.Second)
	for time.Now().Before(drained) {
		sm, err := s.lb.sample("")
		if err == nil && sm.tcpActive == 0 && sm.udpSessions == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // let closed connections' goroutines finish
	take("end (idle)")

	exitErr := s.lb.stop(15 * time.Second)
	return s.report(samples, exitErr), nil
}

// chaos kills and restarts backends and reloads the configuration until
// ctx is done. At most one TCP and one UDP backend are down at a time.
func (s *soak) chaos(ctx context.Context, path string, cfg configFile, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 3))
	tick := func(d time.Duration) <-chan time.Time {
		if d <= 0 {
			return nil
		}
		return time.After(d)
	}
	killT, reloadT := tick(s.o.killEvery), tick(s.o.reloadEvery)
	type down struct {
		b    backend
		kill int
		at   time.Time
	}
	var downs []down
	variant := 0
	for {
		var restartT <-chan time.Time
		if len(downs) > 0 {
			restartT = time.After(time.Until(downs[0].at))
		}
		select {
		case <-ctx.Done():
			for _, d := range downs {
				d.b.restart()
				s.led.restarted(d.kill, time.Now())
			}
			return
		case <-killT:
			killT = tick(s.o.killEvery)
			udp := rng.IntN(3) == 0
			var b backend
			if udp {
				b = s.udp[rng.IntN(len(s.udp))]
			} else {
				b = s.tcp[rng.IntN(len(s.tcp))]
			}
			busy := false
			for _, d := range downs {
				_, dUDP := d.b.(*udpBackend)
				busy = busy || dUDP == udp
			}
			if busy {
				continue
			}
			k := s.led.killed(udp, time.Now())
			b.kill()
			downs = append(downs, down{b, k, time.Now().Add(s.o.downFor)})
		case <-restartT:
			d := downs[0]
			downs = downs[1:]
			if err := d.b.restart(); err != nil {
				s.led.note("restart %s: %v", d.b.name(), err)
				continue
			}
			s.led.restarted(d.kill, time.Now())
		case <-reloadT:
			reloadT = tick(s.o.reloadEvery)
			variant++
			if err := os.WriteFile(path, []byte(cfg.render(variant)), 0o644); err != nil {
				s.led.note("write config: %v", err)
				s.reloads.failed++
				continue
			}
			if err := s.lb.reload(); err != nil {
				s.led.note("reload: %v", err)
				s.reloads.failed++
				continue
			}
			s.reloads.ok++
		}
	}
}

func (s *soak) printProgress() {
	l := &s.led
	fmt.Printf("  ... long %d ok / %d killed / %d failed, short %d / %d / %d, udp %d / %d / %d, reloads %d\n",
		l.long.ok.Load(), l.long.excused.Load(), l.long.failed.Load(),
		l.short.ok.Load(), l.short.excused.Load(), l.short.failed.Load(),
		l.udp.ok.Load(), l.udp.excused.Load(), l.udp.failed.Load(), s.reloads.ok)
}
