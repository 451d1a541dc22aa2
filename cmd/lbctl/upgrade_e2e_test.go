package main

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// The load of TestUpgradeUnderLoad, a CI-sized cut of issue 16's
// (2,000 streams, 500 UDP sessions, 500 connections/s, ten upgrades: make
// soak-upgrade runs that one).
const (
	upStreams  = 200
	upSessions = 50
	upConnRate = 100
	upUpgrades = 3
	upDuration = 90 * time.Second // at most: Finish ends the load after the upgrades
	// upOldExit is how long after the upgrade's answer the old process
	// may still run (issue 16: it exits within 2 s of the handover).
	upOldExit = 2 * time.Second
)

// TestUpgradeUnderLoad upgrades a real lbctl (POST /api/v1/upgrade, the
// same binary) upUpgrades times in a row while 200 long-lived TCP streams
// carry checksummed data both ways, 50 UDP sessions exchange numbered
// datagrams and 100 new connections a second come in. Nothing may be
// lost: no stream or connection reset, cut short or corrupted (as either
// end sees it), no connection refused, UDP loss under 0.1 %, no duplicate.
// Each old process exits within 2 s of its answer and its successor
// serves: the load keeps moving between upgrades, and at the end a new
// connection goes through and the last process stops on SIGTERM.
//
// Special connections live through every upgrade: one half-closed (the
// client has finished, the backend answers only after the last upgrade),
// one in the middle of a bulk transfer (splice), one idle, one in its
// PROXY-header phase and one in TLS inspection (both completed while the
// first upgrade runs).
func TestUpgradeUnderLoad(t *testing.T) {
	e := newUpgradeEnv(t, 20*time.Second)
	ld := lbtest.NewLoad(lbtest.LoadConfig{
		TCPAddr: e.front.load, UDPAddr: e.front.dgram,
		Streams: upStreams, StreamChunk: 2 << 10, StreamTick: 100 * time.Millisecond,
		UDPSessions: upSessions, UDPTick: 50 * time.Millisecond,
		ConnRate: upConnRate, Duration: upDuration, Deadline: upDuration + time.Minute,
	}, e.pat)
	ld.Start()
	loadStart := time.Now()
	t.Cleanup(func() { ld.Stop(); ld.Wait() })
	if err := ld.WaitEstablished(20 * time.Second); err != nil {
		t.Fatal(err)
	}

	// The special connections, each at its point before the first upgrade.
	half := dialTCP(t, e.front.hold)
	if _, err := half.Write(e.pat.At(0, 0, 64<<10)); err != nil {
		t.Fatal(err)
	}
	half.CloseWrite()
	select {
	case err := <-e.hold.gotEOF:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the hold backend did not see the client's FIN")
	}
	idle := dialTCP(t, e.front.echo)
	if err := echoExchange(idle, []byte("before")); err != nil {
		t.Fatalf("idle: %v", err)
	}
	bk := startBulk(t, e.front.echo, e.pat)
	pp := dialTCP(t, e.front.pp)
	ppHeader := []byte("PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n")
	if _, err := pp.Write(ppHeader[:11]); err != nil {
		t.Fatal(err)
	}
	hello := clientHello(t, "moved.example.com")
	tlsc := dialTCP(t, e.front.tls)
	if _, err := tlsc.Write(hello[:40]); err != nil {
		t.Fatal(err)
	}
	// lbctl has read what was sent and waits for more; the rest follows
	// while the first upgrade runs.
	finishPhases := func() {
		if _, err := pp.Write(append(ppHeader[11:], "after the header"...)); err != nil {
			t.Errorf("proxy header phase: %v", err)
		}
		if _, err := tlsc.Write(hello[40:]); err != nil {
			t.Errorf("tls inspection phase: %v", err)
		}
	}

	var lastBytes, lastReplies, lastBulk int64
	for i := range upUpgrades {
		// The process serving now moves the load before it is upgraded.
		lbtest.Until(t, 20*time.Second, func() (bool, string) {
			b, u := ld.Progress()
			k := bk.received.Load()
			return b > lastBytes+upStreams*2<<10 && u > lastReplies+upSessions && k > lastBulk+1<<20,
				fmt.Sprintf("stream bytes %d (were %d), udp replies %d (were %d), bulk bytes %d (were %d)", b, lastBytes, u, lastReplies, k, lastBulk)
		})
		lastBytes, lastReplies = ld.Progress()
		lastBulk = bk.received.Load()
		var during func()
		if i == 0 {
			during = finishPhases
		}
		h := upgradeDuring(t, e.lb, during)
		t.Logf("upgrade %d: %s", i+1, h)
		if h.TCPLeft != 0 || h.TCPMoved < upStreams || h.UDPMoved < upSessions {
			t.Errorf("upgrade %d moved %d TCP connections (%d left behind) and %d UDP sessions; want at least %d and %d, none left",
				i+1, h.TCPMoved, h.TCPLeft, h.UDPMoved, upStreams, upSessions)
		}
		if !lbtest.Alive(h.NewPID) {
			t.Fatalf("upgrade %d: new pid %d does not run", i+1, h.NewPID)
		}
		if code := e.lb.Get("/readyz"); code != 200 {
			t.Fatalf("upgrade %d: /readyz %d from the new process", i+1, code)
		}
	}

	lastBytes, lastReplies = ld.Progress()

	// Every special connection is whole.
	got := make([]byte, len("after the header"))
	if _, err := io.ReadFull(pp, got); err != nil || string(got) != "after the header" {
		t.Errorf("proxy header phase: echo %q, %v", got, err)
	} else if err := closeClean(pp); err != nil {
		t.Errorf("proxy header phase: %v", err)
	}
	got = make([]byte, len(hello))
	if _, err := io.ReadFull(tlsc, got); err != nil || string(got) != string(hello) {
		t.Errorf("tls inspection phase: the backend's echo of the hello differs (%v)", err)
	} else if err := closeClean(tlsc); err != nil {
		t.Errorf("tls inspection phase: %v", err)
	}
	close(e.hold.release)
	if reply, err := io.ReadAll(half); err != nil || len(reply) != holdReply || !e.pat.Match(1, 0, reply) {
		t.Errorf("half-closed: %d of %d reply bytes (pattern %v), %v", len(reply), holdReply, e.pat.Match(1, 0, reply), err)
	}
	if err := echoExchange(idle, []byte("after")); err != nil {
		t.Errorf("idle: %v", err)
	} else if err := closeClean(idle); err != nil {
		t.Errorf("idle: %v", err)
	}
	bk.finish(t)
	t.Logf("bulk: %d MiB each way", bk.received.Load()>>20)

	// The load ran through every upgrade; now it ends.
	lbtest.Until(t, 20*time.Second, func() (bool, string) {
		b, u := ld.Progress()
		return b > lastBytes && u > lastReplies, fmt.Sprintf("after the last upgrade: stream bytes %d (were %d), udp replies %d (were %d)", b, lastBytes, u, lastReplies)
	})
	ld.Finish()
	loadTime := time.Since(loadStart)
	r := e.report(ld)
	t.Logf("load:\n%s", r)
	if r.Failed(0.001) {
		t.Errorf("the load lost something across %d upgrades:\n%s", upUpgrades, r)
	}
	if n := r.Streams.OK.Load(); n != upStreams {
		t.Errorf("%d of %d streams whole", n, upStreams)
	}
	if n := r.Conns.OK.Load(); n < int64(upConnRate*loadTime.Seconds()/2) {
		t.Errorf("only %d short connections made (%d a second for %v): the generator fell behind", n, upConnRate, loadTime.Round(time.Second))
	}

	// The last process serves alone, and stops as usual.
	c := dialTCP(t, e.front.echo)
	if err := echoExchange(c, []byte("new")); err != nil {
		t.Fatalf("after the upgrades: %v", err)
	}
	c.Close()
	if err := e.lb.Stop(20 * time.Second); err != nil {
		t.Error(err)
	}
}

// upgradeDuring upgrades lb, checks that the old process exits within
// upOldExit of the answer, and returns the handover. during, when not
// nil, runs once the new process exists (a child of the old one), or
// else once the upgrade has answered.
func upgradeDuring(t *testing.T, lb *lbtest.Lbctl, during func()) *lbtest.Handover {
	t.Helper()
	old := lb.PID()
	type result struct {
		h   *lbtest.Handover
		err error
	}
	done := make(chan result, 1)
	go func() {
		h, err := lb.Upgrade("", upOldExit)
		done <- result{h, err}
	}()
	var res result
	if during != nil {
		lbtest.Eventually(t, time.Minute, func() bool {
			select {
			case res = <-done:
				done <- res
				return true
			default:
				return len(lbtest.Children(old)) > 0
			}
		})
		during()
	}
	select {
	case res = <-done:
	case <-time.After(3 * time.Minute):
		t.Fatal("upgrade did not answer within 3 minutes")
	}
	if res.err != nil {
		t.Fatalf("upgrade of pid %d: %v", old, res.err)
	}
	return res.h
}

// TestUpgradeLoadCatchesRestart shows that the load of
// TestUpgradeUnderLoad fails when lbctl is restarted (SIGTERM, then a new
// process) instead of upgraded: streams are cut at shutdown_timeout and
// connections are refused while no process listens. If this test fails,
// the load cannot see what an upgrade drops.
func TestUpgradeLoadCatchesRestart(t *testing.T) {
	e := newUpgradeEnv(t, time.Second)
	ld := lbtest.NewLoad(lbtest.LoadConfig{
		TCPAddr: e.front.load, UDPAddr: e.front.dgram,
		Streams: 20, StreamChunk: 1 << 10, UDPSessions: 5, ConnRate: 50,
		Duration: 6 * time.Second, Deadline: time.Minute,
	}, e.pat)
	ld.Start()
	t.Cleanup(func() { ld.Stop(); ld.Wait() })
	if err := ld.WaitEstablished(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	lbtest.Until(t, 20*time.Second, func() (bool, string) {
		b, u := ld.Progress()
		return b > 20<<10 && u > 5, fmt.Sprintf("stream bytes %d, udp replies %d", b, u)
	})
	h, err := e.lb.Restart(20 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restart: %s", h)
	r := e.report(ld)
	t.Logf("load:\n%s", r)
	if !r.Failed(0.001) {
		t.Fatalf("a restart lost nothing the load could see:\n%s", r)
	}
	if r.Streams.Failures() == 0 || r.PeerStreams.Failures() == 0 {
		t.Errorf("streams cut by the restart not counted as failures on both ends:\n%s", r)
	}
}
