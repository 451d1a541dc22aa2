package main

// upgrade.go: `lbctl upgrade` and the old process's side of it (SPEC
// "Upgrading the binary without dropping anything"). The new process's side
// is upgrade_child.go; the channel between them is pkg/upgrade.
//
// The old process, asked through POST /api/v1/upgrade (the control socket
// or the admin API) or by SIGUSR2:
//
//  1. makes a socketpair and starts the new binary with the same arguments,
//     the other end as descriptor 3 ($LBCTL_UPGRADE_FD) and without
//     $LISTEN_FDS/$LISTEN_PID/$WATCHDOG_PID (those name this process);
//  2. sends "listeners" (a duplicate of every listening socket: the
//     listeners, the admin API's, the control socket) and "state"
//     (server.HandoverState);
//  3. waits for "ready" (the new process serves: both now accept on the
//     same sockets), at most the timeout; the new process exiting, sending
//     "failed" or staying silent fails the upgrade: the new process is
//     killed, this one never stopped serving;
//  4. stops accepting, passes its UDP sessions ("udp" batches, then
//     "udp-done") and its TCP connections ("tcp" batches, within
//     shutdown_timeout), sends "done" and waits for the new process's
//     "done"; then stops serving the admin API and control socket (the new
//     process serves them), sends MAINPID=<new> to systemd, answers, and
//     exits once the connections it kept have finished.
//
// A failure in step 4 resumes accepting here and kills the new process;
// what was handed over before it is lost, and the answer says so.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/lbctl/lbctl/pkg/admin"
	"github.com/lbctl/lbctl/pkg/server"
	"github.com/lbctl/lbctl/pkg/upgrade"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
)

// Message kinds of the upgrade channel.
const (
	msgListeners = "listeners" // old → new: sockets, meta: []socketMeta
	msgState     = "state"     // old → new: server.HandoverState; the last setup message
	msgReady     = "ready"     // new → old: serving; meta: readyMeta
	msgFailed    = "failed"    // new → old: cannot start; meta: the reason
	msgUDP       = "udp"       // old → new: a server.HandoverBatch of sessions
	msgUDPDone   = "udp-done"  // old → new: no more sessions; ReleaseUDP
	msgTCP       = "tcp"       // old → new: a server.HandoverBatch of connections
	msgDone      = "done"      // old → new: all sent, meta: doneMeta; new → old: all adopted
)

// socketMeta names one passed socket: "tcp|IP:port" and "udp|IP:port"
// (server.SocketKey), "admin|BIND" (the [admin] bind as configured) and
// "control|PATH".
type socketMeta struct {
	Key string `json:"key"`
}

type readyMeta struct {
	PID int `json:"pid"`
}

type doneMeta struct {
	TCP int `json:"tcp"`
	UDP int `json:"udp"`
}

// doneReply is the meta of the new process's "done" (absent from a new
// process that predates it: nothing dropped).
type doneReply struct {
	// DroppedControl: the paths of the passed control sockets the new
	// process did not serve (its control_socket changed); the old one
	// removes their files, which nobody will serve any more.
	DroppedControl []string `json:"dropped_control,omitempty"`
}

// upgrade runs one upgrade (the sequence above). Only one at a time:
// another request meanwhile gets admin.ErrUpgradeInProgress.
func (d *daemon) upgrade(req admin.UpgradeRequest) (admin.UpgradeResult, error) {
	// Refusals are logged too: after SIGUSR2 the log is the only answer.
	if !d.upgradeMu.TryLock() {
		d.log.Warn("upgrade refused", zap.Error(admin.ErrUpgradeInProgress))
		return admin.UpgradeResult{}, admin.ErrUpgradeInProgress
	}
	defer d.upgradeMu.Unlock()
	// No reload while the sockets and the state are handed over.
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	if !d.running {
		err := errors.New("not running (starting, stopping, or upgraded already)")
		d.log.Warn("upgrade refused", zap.Error(err))
		return admin.UpgradeResult{}, err
	}
	timeout := admin.DefaultUpgradeTimeout
	if req.Timeout != "" {
		t, err := time.ParseDuration(req.Timeout)
		if err != nil || t <= 0 {
			return admin.UpgradeResult{}, fmt.Errorf("timeout %q: not a positive duration", req.Timeout)
		}
		timeout = t
	}
	bin := req.Binary
	if bin == "" {
		bin = d.exe
	}
	log := d.log.With(zap.String("binary", bin))
	log.Info("upgrade: starting the new process", zap.Duration("timeout", timeout))
	res, err := d.runUpgrade(bin, timeout, log)
	if err != nil {
		log.Error("upgrade failed, this process keeps serving", zap.Error(err))
		return res, err
	}
	log.Info("upgrade: handed over", zap.Int("new_pid", res.NewPID), zap.Int("tcp_moved", res.TCPMoved),
		zap.Int("udp_moved", res.UDPMoved), zap.Int("tcp_left", res.TCPLeft))
	d.running = false // no reload nor upgrade here any more
	d.successor = res.NewPID
	close(d.handedOver)
	return res, nil
}

// reloadHandedOver is a reload that reached this process once an upgrade
// had handed everything over (a SIGHUP, or an API request that waited for
// the upgrade): applied here it would change nothing that serves and be
// lost, so it is passed to the new process as SIGHUP, and an API caller is
// told to reload again (this one cannot tell how the new process's went).
// The caller holds reloadMu.
func (d *daemon) reloadHandedOver() error {
	err := syscall.Kill(d.successor, syscall.SIGHUP)
	d.log.Warn("reload after the upgrade's handover: passed to the new process as SIGHUP",
		zap.Int("new_pid", d.successor), zap.Error(err))
	if err != nil {
		return fmt.Errorf("%w: this process handed over to pid %d (lbctl upgrade), and it could not be signalled (%v): reload again",
			server.ErrNotRunning, d.successor, err)
	}
	return fmt.Errorf("%w: this process handed over to pid %d (lbctl upgrade) while the reload waited; it was passed on as SIGHUP (see that process's log), reload again to see the outcome",
		server.ErrNotRunning, d.successor)
}

func (d *daemon) runUpgrade(bin string, timeout time.Duration, log *zap.Logger) (admin.UpgradeResult, error) {
	res := admin.UpgradeResult{OldPID: os.Getpid()}
	conn, end, err := upgrade.Pair()
	if err != nil {
		return res, err
	}
	defer conn.Close()
	ch, err := spawn(bin, os.Args, childEnv(os.Environ()), end) // upgrade_spawn.go
	end.Close()
	if err != nil {
		return res, err
	}
	res.NewPID = ch.pid
	log = log.With(zap.Int("new_pid", res.NewPID))

	fail := func(format string, args ...any) (admin.UpgradeResult, error) {
		ch.kill()
		return res, fmt.Errorf(format, args...)
	}
	if err := d.sendSetup(conn); err != nil {
		if waitExit(ch, time.Second) {
			return fail("the new process exited before it was ready: %s", ch.exitReason())
		}
		return fail("%w", err)
	}

	// Wait for "ready", the exit of the new process, or the timeout.
	type recv struct {
		m   upgrade.Message
		err error
	}
	got := make(chan recv, 1)
	go func() {
		m, err := conn.Recv(timeout)
		got <- recv{m, err}
	}()
	select {
	case <-ch.exited:
		return fail("the new process exited before it was ready: %s", ch.exitReason())
	case <-d.stopping:
		// SIGTERM: the stop must not wait for a new process that may
		// never be ready (and then drain past the service manager's
		// stop timeout).
		return fail("this lbctl is stopping (SIGTERM or SIGINT): upgrade abandoned, the new process killed")
	case r := <-got:
		r.m.CloseFiles()
		switch {
		case r.err != nil && errors.Is(r.err, os.ErrDeadlineExceeded):
			return fail("the new process was not ready within %s (killed)", timeout)
		case r.err != nil:
			if waitExit(ch, 2*time.Second) {
				return fail("the new process exited before it was ready: %s", ch.exitReason())
			}
			return fail("no answer from the new process: %w", r.err)
		case r.m.Kind == msgFailed:
			waitExit(ch, 2*time.Second)
			return fail("the new process could not start: %s", r.m.Meta)
		case r.m.Kind != msgReady:
			return fail("the new process sent %q instead of %q", r.m.Kind, msgReady)
		}
	}
	log.Info("upgrade: the new process is ready; handing over connections")

	// The control socket's file, to remove should the new process not
	// serve it (its control_socket changed).
	ctlPath, ctlLn := d.ctl.listening()
	var ctlFile os.FileInfo
	if ctlLn != nil {
		ctlFile, _ = os.Stat(ctlPath)
	}
	// From here on the new process serves too.
	dropped, err := d.handOver(conn, ch, &res)
	if err != nil {
		d.srv.ResumeAccepting()
		d.srv.ResumeUDP() // readers stopped by DetachUDP read again
		return fail("handover to the new process failed, this process serves again (connections handed over before the failure are lost): %w", err)
	}
	// The new process serves the admin API and the control socket; this
	// one stops accepting on them, without removing the socket file.
	if d.adm != nil {
		d.adm.StopListening()
	}
	d.ctl.stopListening()
	if ctlFile != nil && slices.Contains(dropped, ctlPath) {
		// Still the file of the socket this process served: remove it.
		if cur, err := os.Stat(ctlPath); err == nil && os.SameFile(cur, ctlFile) {
			os.Remove(ctlPath)
			log.Info("upgrade: the new process serves another control socket; this one's file is removed", zap.String("path", ctlPath))
		}
	}
	ch.release() // the service manager's child from now on
	d.notify.MainPID(res.NewPID)
	return res, nil
}

// waitExit reports whether the new process exits within d.
func waitExit(ch *child, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch.exited:
		return true
	case <-t.C:
		return false
	}
}

// sendSetup sends the listening sockets and the state.
func (d *daemon) sendSetup(conn *upgrade.Conn) error {
	lfs, err := d.srv.ListenerFiles()
	if err != nil {
		return err
	}
	var metas []socketMeta
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, lf := range lfs {
		metas = append(metas, socketMeta{Key: lf.Key.String()})
		files = append(files, lf.File)
	}
	add := func(key string, ln net.Listener) error {
		fl, ok := ln.(interface{ File() (*os.File, error) })
		if !ok {
			return fmt.Errorf("%s: a %T cannot be passed", key, ln)
		}
		f, err := fl.File()
		if err != nil {
			return fmt.Errorf("duplicate %s: %w", key, err)
		}
		metas = append(metas, socketMeta{Key: key})
		files = append(files, f)
		return nil
	}
	if d.adm != nil {
		if err := add("admin|"+d.adminBind, d.adm.Listening()); err != nil {
			return err
		}
	}
	if path, ln := d.ctl.listening(); ln != nil {
		if err := add("control|"+path, ln); err != nil {
			return err
		}
	}
	for i := 0; i < len(files) || i == 0; i += upgrade.MaxFiles {
		j := min(i+upgrade.MaxFiles, len(files))
		meta, _ := json.Marshal(metas[i:j])
		if err := conn.Send(upgrade.Message{Kind: msgListeners, Meta: meta, Files: files[i:j]}); err != nil {
			return err
		}
	}
	state, err := d.srv.HandoverState()
	if err != nil {
		return err
	}
	return conn.Send(upgrade.Message{Kind: msgState, Meta: state})
}

// handOver is step 4: stop accepting, pass the sessions and the
// connections, and wait until the new process has them.
func (d *daemon) handOver(conn *upgrade.Conn, ch *child, res *admin.UpgradeResult) (droppedControl []string, err error) {
	err = d.handOverConns(conn, ch, res, &droppedControl)
	return droppedControl, err
}

// handOverConns is handOver; the new process's "done" fills *dropped.
func (d *daemon) handOverConns(conn *upgrade.Conn, ch *child, res *admin.UpgradeResult, dropped *[]string) error {
	if err := d.srv.StopAccepting(); err != nil {
		return err
	}
	send := func(kind string) func(server.HandoverBatch) error {
		return func(b server.HandoverBatch) error {
			return conn.Send(upgrade.Message{Kind: kind, Meta: b.Meta, Files: b.Files})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.srv.Config().ShutdownTimeout)
	defer cancel()
	udp, err := d.srv.DetachUDP(ctx, send(msgUDP))
	if err != nil {
		return fmt.Errorf("UDP sessions: %w", err)
	}
	res.UDPMoved = udp
	if err := conn.Send(upgrade.Message{Kind: msgUDPDone}); err != nil {
		return err
	}
	tcp, err := d.srv.DetachTCP(ctx, send(msgTCP))
	if err != nil {
		return fmt.Errorf("TCP connections: %w", err)
	}
	res.TCPMoved = tcp
	meta, _ := json.Marshal(doneMeta{TCP: tcp, UDP: udp})
	if err := conn.Send(upgrade.Message{Kind: msgDone, Meta: meta}); err != nil {
		return err
	}
	m, err := conn.Recv(30 * time.Second)
	m.CloseFiles()
	if err != nil {
		if waitExit(ch, time.Second) {
			return fmt.Errorf("the new process exited: %s", ch.exitReason())
		}
		return fmt.Errorf("no %q from the new process: %w", msgDone, err)
	}
	if m.Kind != msgDone {
		return fmt.Errorf("the new process sent %q instead of %q", m.Kind, msgDone)
	}
	var reply doneReply
	if json.Unmarshal(m.Meta, &reply) == nil {
		*dropped = reply.DroppedControl
	}
	for _, l := range d.srv.Status().Listeners {
		if l.Protocol == "tcp" {
			res.TCPLeft += int(l.Active)
		}
	}
	return nil
}

// childEnv is the new process's environment: this one's, without what
// names this process (socket activation, the watchdog's PID) or a previous
// upgrade's channel, and with the channel's descriptor.
func childEnv(env []string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_PID", upgrade.EnvFD:
			continue
		}
		out = append(out, kv)
	}
	return append(out, upgrade.EnvFD+"=3")
}

// newUpgradeCmd is `lbctl upgrade`, a client of the running lbctl.
func newUpgradeCmd() *cobra.Command {
	var f clientFlags
	var binary string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "Replace the running lbctl by a new binary without dropping a connection",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if timeout <= 0 {
				return withCode(exitUsage, errors.New("--timeout must be positive"))
			}
			if binary != "" {
				// The running lbctl starts it from its own working
				// directory (/ under systemd), not the caller's.
				abs, err := filepath.Abs(binary)
				if err != nil {
					return withCode(exitUsage, fmt.Errorf("--binary %s: %w", binary, err))
				}
				binary = abs
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			// The answer comes once the connections are handed over: up
			// to the timeout, then up to shutdown_timeout.
			c.http.Timeout = timeout + 10*time.Minute
			req := admin.UpgradeRequest{Binary: binary, Timeout: timeout.String()}
			var res admin.UpgradeResult
			if err := c.send(http.MethodPost, "/api/v1/upgrade", req, &res); err != nil {
				var unreachable *unreachableError
				var op *net.OpError
				if errors.As(err, &unreachable) && !(errors.As(err, &op) && op.Op == "dial") {
					// Connected, asked, and the connection went: the
					// outcome is not known (the old process may have
					// died half way); not "cannot reach".
					return withCode(exitFailure, fmt.Errorf("upgrade: the running lbctl closed the connection before answering "+
						"(did it exit during the upgrade? its log says how far it got; lbctl status names the process serving now): %w", unreachable.err))
				}
				if errors.As(err, &unreachable) {
					return withCode(exitFailure, err)
				}
				return withCode(exitFailure, fmt.Errorf("upgrade failed, the running lbctl keeps serving: %w", err))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "upgraded: pid %d -> %d, %d TCP connections and %d UDP sessions handed over, %d connections finishing in the old process\n",
				res.OldPID, res.NewPID, res.TCPMoved, res.UDPMoved, res.TCPLeft)
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&binary, "binary", "", "the lbctl binary to start (default: the one the running lbctl was started from, as it is on disk now)")
	cmd.Flags().DurationVar(&timeout, "timeout", admin.DefaultUpgradeTimeout, "how long the new process has to become ready")
	return cmd
}
