// Package systemd makes lbctl a well-behaved systemd service: it tells the
// service manager when the balancer is ready, reloading or stopping, feeds
// the watchdog while the server is alive, and takes over the listening
// sockets a .socket unit opened for it (socket activation).
//
// Outside systemd all of it is a no-op: without $NOTIFY_SOCKET a Notifier
// sends nothing, starts no goroutine and logs nothing, and without
// $LISTEN_FDS (or when $LISTEN_PID names another process) Inherited returns
// no socket.
//
// Typical use in a daemon's serve command:
//
//	n := systemd.NewNotifier(log)
//	socks, err := systemd.Inherited() // err: some fds were unusable (logged, not fatal)
//	inherited := map[server.SocketKey]server.InheritedSocket{}
//	for _, s := range socks { inherited[server.NewSocketKey(s.Protocol, s.Addr)] = s.Conn }
//	srv, _ := server.New(cfg, server.Options{Inherited: inherited, ...})
//	if err := srv.Start(); err != nil { ... }     // every listener bound
//	n.Ready("1 listener, 3/3 backends up")        // READY=1 + STATUS=
//	stop := n.Keepalive(srv.Alive, summary)        // WATCHDOG=1, STATUS= refreshes
//	// SIGHUP: n.Reloading(); reload(); n.Ready(summary())
//	// SIGTERM: stop(); n.Stopping("draining"); srv.Shutdown(ctx)
//
// The wire protocol is sd_notify(3): one datagram per state change, made of
// newline-separated VAR=VALUE assignments, sent to the unix datagram socket
// named by $NOTIFY_SOCKET. The package leaves the wire work to
// github.com/coreos/go-systemd/v22 (daemon and activation) and adds what a
// long-running daemon needs on top: a STATUS= line sent only when it changes,
// MONOTONIC_USEC= with RELOADING=1 (systemd 253 and later want it), a
// watchdog loop at half $WATCHDOG_USEC that skips the keep-alive while the
// caller's liveness check fails, and socket-activation fds named by
// protocol and address so a listener finds its socket by its bind.
//
// What it does not do: parse unit files, talk D-Bus, or write to the journal
// (lbctl logs to stderr, which systemd connects to the journal).
package systemd

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
)

// DefaultStatusEvery is how often Keepalive recomputes the STATUS= line.
const DefaultStatusEvery = 5 * time.Second

// Notifier sends service state changes to the service manager. The zero
// value is not usable; use NewNotifier. Its methods are safe for concurrent
// use and do nothing when the process was not started with $NOTIFY_SOCKET.
type Notifier struct {
	log     *zap.Logger
	enabled bool
	// StatusEvery is how often Keepalive recomputes the status line
	// (DefaultStatusEvery); set it before calling Keepalive.
	StatusEvery time.Duration

	mu     sync.Mutex
	status string // the last STATUS= sent
	failed bool   // the last send failed and was logged
}

// NewNotifier returns a Notifier for this process, enabled when
// $NOTIFY_SOCKET is set. Send failures are logged to log (the first of a
// run at warn level, later ones at debug).
func NewNotifier(log *zap.Logger) *Notifier {
	return &Notifier{log: log, enabled: os.Getenv("NOTIFY_SOCKET") != "", StatusEvery: DefaultStatusEvery}
}

// Enabled reports whether a service manager listens ($NOTIFY_SOCKET set).
func (n *Notifier) Enabled() bool { return n.enabled }

// Ready tells the service manager that start-up or a reload is complete,
// with status as the one-line STATUS= shown by `systemctl status`.
func (n *Notifier) Ready(status string) {
	n.sendStatus(daemon.SdNotifyReady, status, true)
}

// Reloading tells the service manager that a configuration reload begins;
// Ready must follow when it ends, whatever its outcome. The message carries
// MONOTONIC_USEC=, the CLOCK_MONOTONIC time of the request, which systemd
// 253 and later use to match it with the reload they asked for.
func (n *Notifier) Reloading() {
	if !n.enabled {
		return
	}
	state := daemon.SdNotifyReloading
	if mono := strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n"); mono != "" {
		state += "\n" + mono
	}
	n.send(state)
}

// Stopping tells the service manager that shutdown begins, with status
// saying what happens meanwhile (draining connections).
func (n *Notifier) Stopping(status string) {
	n.sendStatus(daemon.SdNotifyStopping, status, true)
}

// MainPID tells the service manager that pid is now the service's main
// process: the old process of `lbctl upgrade` sends it once the new one
// has taken over, before it exits. systemd honours it from the main
// process; the new process's own READY=1 and WATCHDOG=1, which may come
// first, need NotifyAccess=all in the unit (examples/lbctl.service).
func (n *Notifier) MainPID(pid int) {
	if !n.enabled {
		return
	}
	n.send("MAINPID=" + strconv.Itoa(pid))
}

// Status sends STATUS=status when it differs from the last status sent.
func (n *Notifier) Status(status string) {
	n.sendStatus("", status, false)
}

// sendStatus sends state (may be empty) and STATUS=status in one datagram.
// Without force, an unchanged status alone is not sent.
func (n *Notifier) sendStatus(state, status string, force bool) {
	if !n.enabled {
		return
	}
	status = oneLine(status)
	n.mu.Lock()
	changed := status != n.status
	n.status = status
	n.mu.Unlock()
	if !changed && !force {
		return
	}
	var parts []string
	if state != "" {
		parts = append(parts, state)
	}
	if status != "" || changed {
		parts = append(parts, "STATUS="+status)
	}
	if len(parts) > 0 {
		n.send(strings.Join(parts, "\n"))
	}
}

// send writes one datagram to $NOTIFY_SOCKET.
func (n *Notifier) send(state string) {
	_, err := daemon.SdNotify(false, state)
	n.mu.Lock()
	first := err != nil && !n.failed
	n.failed = err != nil
	n.mu.Unlock()
	switch {
	case first:
		n.log.Warn("cannot notify the service manager", zap.String("notify_socket", os.Getenv("NOTIFY_SOCKET")),
			zap.String("state", firstLine(state)), zap.Error(err))
	case err != nil:
		n.log.Debug("cannot notify the service manager", zap.String("state", firstLine(state)), zap.Error(err))
	}
}

// oneLine keeps STATUS= to one line: a newline would start a new
// assignment in the datagram.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
