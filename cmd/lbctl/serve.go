package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/lbctl/lbctl/pkg/admin"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/lbctl/lbctl/pkg/server"
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

// daemon is a running lbctl: the server, its admin API and the file its
// configuration comes from.
type daemon struct {
	path  string
	log   *zap.Logger
	level zap.AtomicLevel
	m     *metrics.Metrics
	srv   *server.Server
}

func serve(cfg *config.Config, path string) error {
	log, level, err := newLogger(cfg.Log)
	if err != nil {
		return withCode(exitUsage, err)
	}
	defer log.Sync()

	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	srv, err := server.New(cfg, server.Options{Log: log, Metrics: m})
	if err != nil {
		return withCode(exitFailure, err)
	}
	d := &daemon{path: path, log: log, level: level, m: m, srv: srv}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	var adm *admin.Server
	if cfg.Admin != nil {
		adm, err = admin.New(admin.Options{
			Bind: cfg.Admin.Bind, Allow: cfg.Admin.Allow, TokenFile: cfg.Admin.TokenFile,
			Registry: reg, Server: srv, Reload: d.reload, Log: log,
		})
		if err != nil {
			return withCode(exitFailure, err)
		}
		go func() {
			if err := adm.Serve(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin API stopped", zap.Error(err))
			}
		}()
	}
	if err := srv.Start(); err != nil {
		log.Error("cannot start", zap.Error(err))
		if adm != nil {
			adm.Close()
		}
		return withCode(exitFailure, err)
	}
	log.Info("lbctl started", zap.String("version", version), zap.String("config", path),
		zap.Int("listeners", len(cfg.Listeners)), zap.Int("pools", len(cfg.Pools)))

	for sig := range sigs {
		if sig == syscall.SIGHUP {
			d.reload()
			continue
		}
		log.Info("stopping", zap.String("signal", sig.String()), zap.Duration("shutdown_timeout", srv.Config().ShutdownTimeout))
		ctx, cancel := context.WithTimeout(context.Background(), srv.Config().ShutdownTimeout)
		srv.Shutdown(ctx)
		cancel()
		if adm != nil {
			adm.Close()
		}
		log.Info("stopped")
		return nil
	}
	return nil
}

// reload loads the config file again and applies it. An invalid file
// changes nothing; its problems are logged and returned.
func (d *daemon) reload() error {
	cfg, err := config.Load(d.path)
	if err != nil {
		d.m.ConfigReloads.WithLabelValues("failure").Inc()
		d.log.Error("reload rejected: invalid configuration, the old one keeps running", zap.String("file", d.path), zap.Error(err))
		return err
	}
	if err := d.srv.Reload(cfg); err != nil {
		return err
	}
	if lvl, err := zap.ParseAtomicLevel(cfg.Log.Level); err == nil {
		d.level.SetLevel(lvl.Level())
	}
	return nil
}
