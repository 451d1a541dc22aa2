package systemd

import (
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
)

// WatchdogInterval is how often the service manager wants WATCHDOG=1 from
// this process: half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises,
// or 0 when no watchdog is armed for it (no $NOTIFY_SOCKET, no
// $WATCHDOG_USEC, or $WATCHDOG_PID naming another process). An invalid
// $WATCHDOG_USEC is logged and treated as no watchdog.
func (n *Notifier) WatchdogInterval() time.Duration {
	if !n.enabled {
		return 0
	}
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.log.Warn("watchdog not fed: invalid environment", zap.Error(err))
		return 0
	}
	return d / 2
}

// Keepalive starts, until stop is called:
//
//   - a goroutine that sends WATCHDOG=1 at once, then every
//     WatchdogInterval, while alive returns nil. When alive fails, the keep-alive is skipped (and the
//     failure logged once until alive succeeds again), so the service
//     manager kills and restarts a process whose work has stopped,
//     WatchdogSec after the last keep-alive. alive should not block; if it
//     does, the keep-alives stop just the same.
//   - a goroutine that refreshes STATUS= from status every StatusEvery,
//     sending it only when it changed (status may be nil). It runs apart
//     from the watchdog, so a status that takes long to compute never
//     delays a keep-alive.
//
// stop waits for both to return; after it no datagram is sent. Without
// $NOTIFY_SOCKET, Keepalive starts nothing.
func (n *Notifier) Keepalive(alive func() error, status func() string) (stop func()) {
	if !n.enabled {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	if every := n.WatchdogInterval(); every > 0 && alive != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.watchdog(done, every, alive)
		}()
	}
	if status != nil && n.StatusEvery > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.refreshStatus(done, n.StatusEvery, status)
		}()
	}
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		wg.Wait()
	}
}

func (n *Notifier) watchdog(done <-chan struct{}, every time.Duration, alive func() error) {
	t := time.NewTicker(every)
	defer t.Stop()
	var failing bool
	// The first keep-alive goes out at once, not a tick later: after lbctl
	// upgrade the new process takes over the watchdog from the old one,
	// which stops its keep-alives when it hands over, and a first tick
	// that came late would leave the service manager nothing for up to
	// WatchdogSec.
	for first := true; ; first = false {
		if !first {
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
		err := alive()
		select {
		case <-done:
			return // stopping: no keep-alive after stop
		default:
		}
		switch {
		case err == nil:
			if failing {
				n.log.Info("alive again, watchdog keep-alives resume")
				failing = false
			}
			n.send(daemon.SdNotifyWatchdog)
		case !failing:
			n.log.Error("not alive: watchdog keep-alives withheld, the service manager restarts the service if this lasts", zap.Error(err))
			failing = true
		}
	}
}

func (n *Notifier) refreshStatus(done <-chan struct{}, every time.Duration, status func() string) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		line := status()
		select {
		case <-done:
			return
		default:
		}
		n.Status(line)
	}
}
