// Command lbbench is the load generator behind `make bench`: it compares
// lbctl with a direct connection, HAProxy and nginx on this machine.
//
//	lbbench run [-lbctl bin/lbctl] [-out bench/results] [-docs docs]
//
// starts a child process of loopback backends (lbbench backends), generates an
// equivalent configuration for each proxy, starts them, and runs every measure
// against every target in interleaved rounds: bulk throughput, short
// connections (plain, and TLS hellos routed by server name), request/response
// on 1 and 32 persistent connections, UDP
// request/response and idle connections. The proxies' CPU time, memory and
// descriptors are read from /proc. It prints progress on stderr and a
// markdown table on stdout, and writes results.json, table.md, chart.svg and
// the generated configs to a timestamped results folder.
//
// lbbench load runs a single measure against addresses given by hand (a
// proxy started outside lbbench, for profiling); lbbench backends runs the
// loopback backends alone and prints their addresses; lbbench splithello
// sends ClientHellos split over segments and records to lbctl, HAProxy and
// nginx routing by server name and prints what each did (splithello.go).
//
// BENCH_TIME (counted time per measure, target and round, default 4s),
// BENCH_ROUNDS (default 3), BENCH_TARGETS (comma list of
// direct,lbctl,haproxy,nginx) and BENCH_MEASURES (comma list of
// bulk,short,sni,rr1,rr32,udp,idle) shorten or focus a run.
//
// lbbench does not install anything or tune the kernel; `make bench` installs
// HAProxy and nginx when missing.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	switch os.Args[1] {
	case "run":
		fs := flag.NewFlagSet("run", flag.ExitOnError)
		var opt runOptions
		fs.StringVar(&opt.LbctlBin, "lbctl", "bin/lbctl", "lbctl binary")
		fs.StringVar(&opt.OutDir, "out", "bench/results", "results are written to a timestamped folder under this one")
		fs.StringVar(&opt.DocsDir, "docs", "docs", "copy the latest table and chart here (empty: don't)")
		_ = fs.Parse(os.Args[2:])
		s := defaultSettings()
		if err := s.applyEnv(os.Getenv); err != nil {
			fmt.Fprintln(os.Stderr, "lbbench:", err)
			os.Exit(2)
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		if err := run(ctx, opt, s, os.Stderr, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "lbbench:", err)
			stop()
			os.Exit(1)
		}
	case "load":
		// One measure against given addresses, for profiling a proxy by hand.
		fs := flag.NewFlagSet("load", flag.ExitOnError)
		d := fs.Duration("time", 5*time.Second, "counted time")
		n := fs.Int("n", 0, "streams, workers or connections (0: the bench's default)")
		_ = fs.Parse(os.Args[2:])
		if fs.NArg() < 2 {
			usage()
			os.Exit(2)
		}
		if err := runLoad(fs.Arg(0), fs.Args()[1:], *n, *d, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "lbbench load:", err)
			os.Exit(1)
		}
	case "splithello":
		// The split-ClientHello comparison (not a measure of speed).
		fs := flag.NewFlagSet("splithello", flag.ExitOnError)
		lbctlBin := fs.String("lbctl", "bin/lbctl", "lbctl binary")
		targets := fs.String("targets", "lbctl,haproxy,nginx", "comma list of lbctl, haproxy, nginx")
		_ = fs.Parse(os.Args[2:])
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		if err := runSplitHello(ctx, *lbctlBin, strings.Split(*targets, ","), os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "lbbench splithello:", err)
			stop()
			os.Exit(1)
		}
	case "backends":
		fs := flag.NewFlagSet("backends", flag.ExitOnError)
		n := fs.Int("n", 2, "number of backends of each kind")
		_ = fs.Parse(os.Args[2:])
		if err := runBackends(*n); err != nil {
			fmt.Fprintln(os.Stderr, "lbbench backends:", err)
			os.Exit(1)
		}
	default:
		usage()
		os.Exit(2)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: lbbench run [-lbctl bin/lbctl] [-out bench/results] [-docs docs]
       lbbench backends [-n 2]
       lbbench splithello [-lbctl bin/lbctl] [-targets lbctl,haproxy,nginx]
       lbbench load [-time 5s] [-n N] bulk|short|rr|udp|idle ADDRESS...`)
}
