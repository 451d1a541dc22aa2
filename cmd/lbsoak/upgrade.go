package main

// The upgrade mode of lbsoak (-upgrades N, make soak-upgrade): issue 16's
// full load through a real lbctl upgraded N times in a row, each upgrade
// once the process serving has moved the load, by POST /api/v1/upgrade
// (the same binary, as after a package upgrade). The load is
// lbtest.Load's: long-lived TCP streams carrying checksummed data both
// ways through two CheckPeers, UDP sessions exchanging numbered datagrams
// through two UDPEchoPeers, and a steady rate of new short connections.
// Nothing may be lost: the run passes when no stream or connection was
// reset, refused, cut short or corrupted (as either end saw it), UDP loss
// stayed under 0.1 % without a duplicate, every old process exited within
// 2 s of its upgrade's answer having left no connection behind, and the
// last process served a new connection and stopped on SIGTERM.
//
// -upgrade-restart replaces each upgrade by a plain restart (SIGTERM, then
// a new process), to see the same report fail.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// upgradeOptions are the flags of the upgrade mode.
type upgradeOptions struct {
	upgrades    int
	streams     int
	sessions    int
	connRate    int
	every       time.Duration
	restart     bool
	oldExit     time.Duration
	maxLoss     float64
	streamChunk int
	load        time.Duration
	udpTick     time.Duration
}

// runUpgrades is the upgrade mode: true when nothing was lost.
func runUpgrades(ctx context.Context, o options, u upgradeOptions) (bool, error) {
	limit, err := lbtest.RaiseFileLimit()
	if err != nil {
		return false, err
	}
	if need := uint64(3*u.streams + 2*u.sessions + 8*u.connRate + 1000); limit < need {
		fmt.Printf("lbsoak: RLIMIT_NOFILE %d, this load wants about %d\n", limit, need)
	}
	pat := lbtest.NewPattern(o.seed)
	peers, err := lbtest.NewLoadPeers(pat)
	if err != nil {
		return false, err
	}
	defer peers.Close()
	ports, err := freePorts(3)
	if err != nil {
		return false, err
	}
	admin := fmt.Sprintf("127.0.0.1:%d", ports[0])
	tcpAddr := fmt.Sprintf("127.0.0.1:%d", ports[1])
	udpAddr := fmt.Sprintf("127.0.0.1:%d", ports[2])
	// UDP sessions expire 10s after the load: the last process's stop
	// drains them.
	conf := fmt.Sprintf(`shutdown_timeout = "30s"
[log]
level = "info"
access = false
[admin]
bind = %q
%s`, admin, peers.Listeners(tcpAddr, udpAddr, "5m", "10s"))
	cfgPath := filepath.Join(o.dir, "lbctl.toml")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o644); err != nil {
		return false, err
	}
	logPath := filepath.Join(o.dir, "lbctl.log")
	lb, err := lbtest.StartLbctl(o.lbctl, logPath, admin, "--config", cfgPath)
	if err != nil {
		return false, err
	}
	defer lb.Kill()

	// The load runs until the upgrades are done and the last process has
	// moved it (Finish), at most this long: the time to connect the
	// streams, every upgrade (on a loaded 2-CPU machine one took 5-20 s,
	// with 2,500 to 5,000 connections), and a margin.
	duration := u.load
	if duration <= 0 {
		duration = 30*time.Second + time.Duration(u.upgrades)*(u.every+time.Minute)
	}
	mode := "upgrade (POST /api/v1/upgrade)"
	if u.restart {
		mode = "plain restart (SIGTERM, then a new process)"
	}
	fmt.Printf("lbsoak upgrade: lbctl pid %d (%s); %d TCP streams (%d bytes each way every 100ms), %d UDP sessions (a datagram every %v), %d new connections/s for %v; %d x %s, one every %v or more; seed %d\n",
		lb.PID(), o.lbctl, u.streams, u.streamChunk, u.sessions, u.udpTick, u.connRate, duration, u.upgrades, mode, u.every, o.seed)
	ld := lbtest.NewLoad(lbtest.LoadConfig{
		TCPAddr: tcpAddr, UDPAddr: udpAddr,
		Streams: u.streams, StreamChunk: u.streamChunk, StreamTick: 100 * time.Millisecond,
		UDPSessions: u.sessions, UDPTick: u.udpTick,
		ConnRate: u.connRate, Duration: duration, Deadline: duration + 3*time.Minute,
		Ramp: 5 * time.Second,
	}, pat)
	rcvbuf := udpRcvbufErrors()
	overflows, drops := tcpExt("ListenOverflows"), tcpExt("ListenDrops")
	start := time.Now()
	ld.Start()
	defer ld.Stop()
	if err := ld.WaitEstablished(time.Minute); err != nil {
		ld.Stop()
		r := ld.Wait()
		return false, fmt.Errorf("%w\n%s\nlbctl log (end):\n%s", err, r, lb.Tail(4000))
	}
	fmt.Printf("  %6.1fs  %d streams connected\n", time.Since(start).Seconds(), u.streams)

	ok := true
	fail := func(format string, args ...any) {
		ok = false
		fmt.Printf("  FAIL: "+format+"\n", args...)
	}
	var handovers []*lbtest.Handover
	next := time.Now().Add(u.every)
	var lastBytes, lastReplies int64
	stuck := false
	for i := 0; i < u.upgrades && ctx.Err() == nil; i++ {
		// The process serving moves the load before it is upgraded.
		deadline := time.Now().Add(time.Minute)
		for {
			b, r := ld.Progress()
			if b > lastBytes && (u.sessions == 0 || r > lastReplies) && !time.Now().Before(next) {
				break
			}
			if time.Now().After(deadline) {
				fail("before upgrade %d: the load did not move for a minute (stream bytes %d, udp replies %d)", i+1, b, r)
				stuck = true
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if stuck {
			break
		}
		var h *lbtest.Handover
		if u.restart {
			h, err = lb.Restart(time.Minute)
		} else {
			h, err = lb.Upgrade("", u.oldExit)
		}
		next = time.Now().Add(u.every)
		if err != nil {
			fail("upgrade %d: %v", i+1, err)
			if h == nil || h.NewPID == 0 || !lbtest.Alive(lb.PID()) {
				break
			}
			continue
		}
		handovers = append(handovers, h)
		lastBytes, lastReplies = ld.Progress()
		fmt.Printf("  %6.1fs  upgrade %2d: %s\n", time.Since(start).Seconds(), i+1, h)
		if !u.restart && (h.TCPLeft != 0 || h.TCPMoved < u.streams || h.UDPMoved < u.sessions) {
			fail("upgrade %d moved %d TCP connections (%d left in the old process) and %d UDP sessions; want at least %d and %d",
				i+1, h.TCPMoved, h.TCPLeft, h.UDPMoved, u.streams, u.sessions)
		}
		if code := lb.Get("/readyz"); code != 200 {
			fail("upgrade %d: the new process's /readyz answered %d (0: no answer within 5s)", i+1, code)
		}
	}
	// The last process moves the load too, then the load ends.
	deadline := time.Now().Add(time.Minute)
	for {
		if b, r := ld.Progress(); b > lastBytes+int64(u.streams*u.streamChunk) && (u.sessions == 0 || r > lastReplies+int64(u.sessions)) {
			break
		}
		if time.Now().After(deadline) {
			fail("after the upgrades: the load did not move for a minute")
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	ld.Finish()
	fmt.Printf("  %6.1fs  upgrades done, the load moved on; it ends\n", time.Since(start).Seconds())
	r := peers.Report(ld)
	// Where datagrams overflowed a receive buffer: lbctl's listener, the
	// echo peers, or elsewhere (the clients' sockets and lbctl's backend
	// sockets, closed by now: the machine's count minus these).
	dropsListener := udpDrops(udpAddr)
	dropsPeers := udpDrops(peers.UDP[0].Addr) + udpDrops(peers.UDP[1].Addr)

	// The last process serves a new connection alone, then stops.
	if c, err := net.DialTimeout("tcp", tcpAddr, 5*time.Second); err != nil {
		fail("a new connection after the upgrades: %v", err)
	} else {
		c.Close()
	}
	last := lb.PID()
	stopErr := lb.Stop(45 * time.Second)

	fmt.Printf("\nlbsoak upgrade report (%d x %s, %v of load)\n%s", len(handovers), mode, r.Elapsed.Round(time.Second), r)
	var took, exit []string
	var maxExit time.Duration
	for _, h := range handovers {
		took = append(took, h.Took.Round(time.Millisecond).String())
		exit = append(exit, h.OldExit.Round(time.Millisecond).String())
		maxExit = max(maxExit, h.OldExit)
	}
	fmt.Printf("upgrade answered after: %s\nold process exited after the answer: %s (max %v)\n",
		strings.Join(took, " "), strings.Join(exit, " "), maxExit.Round(time.Millisecond))
	check := func(name string, pass bool, detail string) {
		mark := "ok  "
		if !pass {
			mark = "FAIL"
			ok = false
		}
		fmt.Printf("  %s %-38s %s\n", mark, name, detail)
	}
	fmt.Println("criteria:")
	resets := r.Streams.Reset.Load() + r.PeerStreams.Reset.Load() + r.Conns.Reset.Load()
	check("zero resets", resets == 0, fmt.Sprint(resets))
	bad := r.Streams.Corrupt.Load() + r.Streams.Short.Load() + r.Streams.Long.Load() +
		r.PeerStreams.Corrupt.Load() + r.PeerStreams.Short.Load() + r.PeerStreams.Long.Load() +
		r.Conns.Corrupt.Load() + r.Conns.Short.Load() + r.Conns.Long.Load()
	check("zero corrupted or missing bytes", bad == 0, fmt.Sprintf("%d streams or connections", bad))
	check("zero refused connects", r.Conns.Refused.Load()+r.Streams.Refused.Load() == 0, fmt.Sprint(r.Conns.Refused.Load()+r.Streams.Refused.Load()))
	other := r.Streams.Failed.Load() + r.PeerStreams.Failed.Load() + r.Conns.Failed.Load()
	check("zero other TCP failures (timeouts...)", other == 0, fmt.Sprint(other))
	check("every stream whole", r.Streams.OK.Load() == int64(u.streams), fmt.Sprintf("%d of %d", r.Streams.OK.Load(), u.streams))
	check("UDP loss < 0.1 %", r.UDP.Sent.Load() > 0 && r.UDP.LossRate() < u.maxLoss,
		fmt.Sprintf("%.4f %% (%d of %d)", 100*r.UDP.LossRate(), r.UDP.Lost(), r.UDP.Sent.Load()))
	check("no UDP duplicate or corrupt reply", r.UDP.Duplicates.Load()+r.UDP.Corrupt.Load() == 0,
		fmt.Sprintf("%d duplicates, %d corrupt", r.UDP.Duplicates.Load(), r.UDP.Corrupt.Load()))
	check(fmt.Sprintf("%d upgrades in a row", u.upgrades), len(handovers) == u.upgrades, fmt.Sprint(len(handovers)))
	if !u.restart {
		check("old process exits within 2 s", len(handovers) > 0 && maxExit <= u.oldExit, maxExit.Round(time.Millisecond).String())
	}
	check("last process stops on SIGTERM", stopErr == nil, fmt.Sprintf("pid %d: %v", last, stopErr))
	fmt.Printf("short connections made: %d (%.0f/s); skipped by the generator: %d\n",
		r.Conns.OK.Load(), float64(r.Conns.OK.Load())/r.Elapsed.Seconds(), r.Skipped.Load())
	fmt.Printf("accept queues meanwhile (/proc/net/netstat, every process; somaxconn %s): ListenOverflows %d, ListenDrops %d\n",
		strings.TrimSpace(readFile("/proc/sys/net/core/somaxconn")), tcpExt("ListenOverflows")-overflows, tcpExt("ListenDrops")-drops)
	all := udpRcvbufErrors() - rcvbuf
	fmt.Printf("UDP receive buffer overflows meanwhile: %d on the machine (/proc/net/snmp RcvbufErrors, every process); "+
		"lbctl's UDP listener %d, the echo peers %d, other sockets (clients, lbctl's backend sockets, other processes) %d\n",
		all, dropsListener, dropsPeers, all-dropsListener-dropsPeers)
	if !ok {
		fmt.Printf("\nlbctl log (end):\n%s\n", lb.Tail(6000))
	}
	return ok, nil
}

// readFile is a file's content, "" if unreadable.
func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// tcpExt is a counter of the TcpExt lines of /proc/net/netstat, -1 if
// unknown.
func tcpExt(name string) int64 { return procNetCounter("/proc/net/netstat", "TcpExt:", name) }

// udpRcvbufErrors is the machine's count of UDP datagrams dropped because
// a socket's receive buffer was full (/proc/net/snmp), -1 if unknown.
func udpRcvbufErrors() int64 { return procNetCounter("/proc/net/snmp", "Udp:", "RcvbufErrors") }

// procNetCounter is the counter name of a /proc/net file (netstat, snmp)
// in the lines of proto ("TcpExt:"): a line of names, then one of values.
// It is -1 if the file or the counter is not there.
func procNetCounter(path, proto, name string) int64 {
	var head []string
	for _, line := range strings.Split(readFile(path), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != proto {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		for i, h := range head {
			if h == name && i < len(f) {
				n, _ := strconv.ParseInt(f[i], 10, 64)
				return n
			}
		}
	}
	return -1
}

// udpDrops is the drops column of /proc/net/udp for the socket bound to
// addr (127.0.0.1:port): datagrams its receive buffer had no room for.
func udpDrops(addr string) int64 {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return 0
	}
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return 0
	}
	a := ap.Addr().As4()
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], ap.Port())
	var n int64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 12 && f[1] == want {
			d, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
			n += d
		}
	}
	return n
}
