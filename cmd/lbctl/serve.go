package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/lbctl/lbctl/pkg/admin"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/server"
	"github.com/lbctl/lbctl/pkg/systemd"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"github.com/lbctl/lbctl/pkg/upgrade"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
)

func newServeCmd() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the load balancer in the foreground until SIGTERM or SIGINT",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, path, err := loadConfig(configPath)
			if err != nil {
				return err
			}
			return serve(cfg, path)
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "config file (default: $LBCTL_CONFIG, ./lbctl.toml, /etc/lbctl/lbctl.toml)")
	return cmd
}

// daemon is a running lbctl: the server, its admin API, the file its
// configuration comes from and the service manager it reports to.
type daemon struct {
	path   string
	log    *zap.Logger
	level  zap.AtomicLevel
	m      *metrics.Metrics
	srv    *server.Server
	notify *systemd.Notifier // a no-op outside systemd (systemd.go)
	ctl    *controlSocket    // the control socket (control.go)

	reloadMu sync.Mutex // one reload at a time: SIGHUP and the admin API
	running  bool       // guarded by reloadMu: between READY=1 and STOPPING=1 (or an upgrade's handover)

	// lbctl upgrade (upgrade.go)
	exe        string        // the executable this process runs, resolved at start: the default new binary
	adm        *admin.Server // the admin API; nil without [admin]
	adminBind  string        // its bind as configured
	upgradeMu  sync.Mutex    // one upgrade at a time
	handedOver chan struct{} // closed once an upgrade handed everything over: this process exits
	successor  int           // the new process's pid once handed over (set before handedOver is closed)
	stopping   chan struct{} // closed at SIGTERM/SIGINT: an upgrade not yet handing over gives up
}

func serve(cfg *config.Config, path string) error {
	log, level, err := newLogger(cfg.Log)
	if err != nil {
		return withCode(exitUsage, err)
	}
	defer log.Sync()

	// Started by `lbctl upgrade` (upgrade_child.go): the old process's
	// sockets and state come first, and every failure before this process
	// serves goes back to it (h.fail).
	up, err := upgrade.FromEnv()
	if err != nil {
		log.Error("cannot start", zap.Error(err))
		return withCode(exitFailure, err)
	}
	var h *handover
	if up != nil {
		defer up.Close()
		if h, err = receiveHandover(up, log); err != nil {
			log.Error("cannot start", zap.Error(err))
			return withCode(exitFailure, err)
		}
		log.Info("upgrade: received the listening sockets and the state of the old process", zap.Int("sockets", len(h.sockets)))
	}

	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	m.SetBuildInfo(version, commit)
	m.SetLoopCounters(tcpproxy.MissedWakeups, tcpproxy.PromoteFailures)
	opts := server.Options{Log: log, Metrics: m, Version: version}
	if h != nil {
		opts.Inherited, opts.Handover, opts.HoldUDP = h.sockets, h.state, true
	} else {
		opts.Inherited = inheritedSockets(log, cfg)
	}
	srv, err := server.New(cfg, opts)
	if err != nil {
		h.fail(err)
		return startError(err)
	}
	d := &daemon{path: path, log: log, level: level, m: m, srv: srv, notify: systemd.NewNotifier(log),
		handedOver: make(chan struct{}), stopping: make(chan struct{})}
	if d.exe, err = os.Executable(); err != nil {
		log.Warn("cannot tell which executable runs; lbctl upgrade needs --binary", zap.Error(err))
	}
	if h != nil {
		// The upgrade that started this process runs until this one
		// confirms it: another upgrade meanwhile is refused as in progress
		// (h.run's serving func lets go).
		d.upgradeMu.Lock()
	}
	d.ctl = &controlSocket{log: log, opts: admin.Options{Registry: reg, Server: srv, Reload: d.reload, Upgrade: d.upgrade, Log: log}}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR2)
	defer signal.Stop(sigs)

	var adm *admin.Server
	if cfg.Admin != nil {
		adm, err = admin.New(admin.Options{
			Bind: cfg.Admin.Bind, Allow: cfg.Admin.Allow, Hosts: cfg.Admin.Hosts, TokenFile: cfg.Admin.TokenFile,
			Registry: reg, Server: srv, Reload: d.reload, Upgrade: d.upgrade, Log: log,
			Listener: h.adminListener(cfg.Admin.Bind),
		})
		if err != nil {
			h.fail(err)
			return withCode(exitFailure, err)
		}
		d.adm, d.adminBind = adm, cfg.Admin.Bind
		go func() {
			if err := adm.Serve(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				log.Error("admin API stopped", zap.Error(err))
			}
		}()
	}
	passedCtl := h.controlListener(cfg.ControlSocket) // the old process's, when it passed one
	if err := d.ctl.start(cfg.ControlSocket, passedCtl); err != nil {
		log.Error("cannot start", zap.Error(err))
		h.fail(err)
		if adm != nil {
			adm.Close()
		}
		return withCode(exitFailure, err)
	}
	defer d.ctl.close() // removes the socket file, unless an upgrade handed it over
	if err := srv.Start(); err != nil {
		log.Error("cannot start", server.ErrorField(err))
		h.fail(err)
		if passedCtl != nil {
			// The old process serves on, on that socket: its file stays.
			d.ctl.stopListening()
		}
		if adm != nil {
			adm.Close()
		}
		return startError(err)
	}
	log.Info("lbctl started", zap.String("version", version), zap.String("config", path),
		zap.Int("listeners", len(cfg.Listeners)), zap.Int("pools", len(cfg.Pools)), zap.Bool("upgrade", h != nil))
	if h != nil {
		// Serving on the passed sockets: tell the old process, and take
		// its sessions and connections over.
		h.started()
		h.run(srv, srv.Config().ShutdownTimeout+time.Minute, func() {
			d.setRunning(true)
			d.upgradeMu.Unlock()
		})
	}
	// Every listener is bound: tell systemd, then feed its watchdog while
	// the accept loops and health checkers are alive.
	d.setRunning(true)
	d.notify.Ready(d.summary())
	stopKeepalive := d.notify.Keepalive(srv.Alive, d.summary)
	defer stopKeepalive()

	for {
		var sig os.Signal
		select {
		case sig = <-sigs:
		case <-d.handedOver:
			// lbctl upgrade: the new process serves everything; what
			// could not be handed over finishes here, as at a stop, but
			// the service manager hears nothing of it (the new process
			// is the service now).
			stopKeepalive()
			log.Info("upgrade done: this process exits once the connections it kept have finished",
				zap.Duration("shutdown_timeout", srv.Config().ShutdownTimeout))
			ctx, cancel := context.WithTimeout(context.Background(), srv.Config().ShutdownTimeout)
			srv.Shutdown(ctx)
			cancel()
			if adm != nil {
				adm.Close()
			}
			log.Info("stopped after upgrade")
			return nil
		}
		switch sig {
		case syscall.SIGHUP:
			d.reload()
			continue
		case syscall.SIGUSR2:
			go func() { d.upgrade(admin.UpgradeRequest{}) }() // logs its outcome
			continue
		}
		log.Info("stopping", zap.String("signal", sig.String()), zap.Duration("shutdown_timeout", srv.Config().ShutdownTimeout))
		stopKeepalive()
		close(d.stopping)   // an upgrade still waiting for its new process gives up
		d.setRunning(false) // waits for an upgrade in progress
		select {
		case <-d.handedOver:
			// That upgrade handed everything over: the service is the
			// new process now, STOPPING=1 is not this one's to send.
		default:
			d.notify.Stopping(fmt.Sprintf("stopping: draining connections for up to %s", srv.Config().ShutdownTimeout))
		}
		ctx, cancel := context.WithTimeout(context.Background(), srv.Config().ShutdownTimeout)
		srv.Shutdown(ctx)
		cancel()
		if adm != nil {
			adm.Close()
		}
		log.Info("stopped")
		return nil
	}
}

// reload loads the config file again and applies it: the one reload path,
// for SIGHUP and the admin API alike. An invalid file changes nothing; its
// problems are logged and returned. The service manager sees RELOADING=1
// before and READY=1 after, whatever the outcome.
func (d *daemon) reload() error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	select {
	case <-d.handedOver:
		// An upgrade handed over while this reload waited for it: the new
		// process serves, this one's configuration no longer matters.
		return d.reloadHandedOver() // upgrade.go
	default:
	}
	if !d.running {
		// Before READY=1 or after STOPPING=1 (the admin API answers
		// then too): the service manager hears nothing of it.
		return d.load()
	}
	d.notify.Reloading()
	err := d.load()
	status := d.summary()
	if err != nil {
		status = "reload rejected, the previous configuration keeps running; " + status
	}
	d.notify.Ready(status)
	return err
}

// setRunning marks the span in which reloads are reported to the service
// manager; it waits for a reload in progress, so its READY=1 never follows
// STOPPING=1.
func (d *daemon) setRunning(running bool) {
	d.reloadMu.Lock()
	d.running = running
	d.reloadMu.Unlock()
}

// load reads the config file and applies it.
func (d *daemon) load() error {
	cfg, err := config.Load(d.path)
	if err != nil {
		d.srv.ReloadRejected(err)
		d.log.Error("reload rejected: invalid configuration, the old one keeps running", zap.String("file", d.path), server.ErrorField(err))
		return err
	}
	// A changed control_socket moves: the new socket is bound first.
	commit, abort, err := d.ctl.prepare(cfg.ControlSocket)
	if err != nil {
		d.srv.ReloadRejected(err)
		d.log.Error("reload failed, the old configuration keeps running", zap.String("file", d.path), zap.Error(err))
		return err
	}
	if err := d.srv.Reload(cfg); err != nil {
		abort()
		return err
	}
	commit()
	if lvl, err := zap.ParseAtomicLevel(cfg.Log.Level); err == nil {
		d.level.SetLevel(lvl.Level())
	}
	return nil
}

// startError is the error for a failed start: exit 2 when the
// configuration itself is wrong (a static backend host name that does not
// resolve, found only at start), 1 for a run-time failure such as a bind.
func startError(err error) error {
	var cerr config.Errors
	if errors.As(err, &cerr) {
		return invalidConfig(cerr) // each problem on a line of its own
	}
	return withCode(exitFailure, err)
}
