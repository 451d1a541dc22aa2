package server

// operate.go: what the server reports for dashboards and alerts beside the
// traffic: each backend's admin state and weight in force
// (lbctl_backend_admin_state, lbctl_backend_weight), and whether the
// config file on disk is still the configuration in force
// (lbctl_config_file_changed).

import (
	"bytes"
	"crypto/sha256"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/config"
	"go.uber.org/zap"
)

// settingsPub is what publishSettings last exported for a backend; the
// zero value is nothing (forgetBackendSeries resets it with the series).
type settingsPub struct {
	ok     bool
	admin  balancer.AdminState
	weight int
}

// publishSettings sets be's admin state and weight series when they
// changed since it last did. Called with s.mu held whenever either may
// have changed: a generation put in service (commit), SetBackendAdmin, the
// state file read at start. The series go with the backend's other pool
// series (ForgetPoolBackend). Skipping the unchanged ones keeps a refresh
// of a large pool from resolving four series per backend.
func (be *backend) publishSettings() {
	a := be.b.Admin()
	if be.settings == (settingsPub{true, a, be.weight}) {
		return
	}
	be.settings = settingsPub{true, a, be.weight}
	be.m.SetBackendSettings(be.pool, be.b.Address(), a.String(), be.weight)
}

// fileCheck remembers what the config file looked like at its last
// reading, so that a scrape costs one stat while nothing changes.
type fileCheck struct {
	mu      sync.Mutex
	cfg     *config.Config // the configuration the answer is for
	size    int64
	mod     time.Time
	changed bool
}

// configFileChanged reports whether the config file differs from the
// configuration in force: its bytes hash to another digest, or it cannot
// be read (a reload would fail). The file is read again only when its
// size or modification time changed since the last look, or the
// configuration in force did.
func (s *Server) configFileChanged() bool {
	cfg := s.cfg.Load()
	if cfg == nil || cfg.File == "" {
		return false
	}
	c := &s.file
	c.mu.Lock()
	defer c.mu.Unlock()
	fi, err := os.Stat(cfg.File)
	if err != nil {
		c.cfg = nil
		return true
	}
	if c.cfg == cfg && c.size == fi.Size() && c.mod.Equal(fi.ModTime()) {
		return c.changed
	}
	data, err := os.ReadFile(cfg.File)
	if err != nil {
		c.cfg = nil
		return true
	}
	sum := sha256.Sum256(data)
	c.cfg, c.size, c.mod = cfg, fi.Size(), fi.ModTime()
	c.changed = !bytes.Equal(sum[:], cfg.Digest[:])
	return c.changed
}

// openConns counts the established TCP connections and the UDP sessions
// of every backend, draining ones included: what the end of a shutdown
// drain closes.
func (s *Server) openConns() (tcp, sessions int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, lp := range s.pools {
		for _, be := range lp.byAddr {
			tcp += be.tcpConns.Len()
			sessions += be.udpConns.Len()
		}
	}
	return tcp, sessions
}

// ErrorField is the field a log line carries err in: "error" with its text,
// or, for an error of several lines (config.Errors, errors.Join), "errors"
// with one array element per line, so that a JSON log shows each problem
// apart instead of one string with \n in it.
func ErrorField(err error) zap.Field {
	if err == nil {
		return zap.Skip()
	}
	msg := err.Error()
	if !strings.Contains(msg, "\n") {
		return zap.Error(err)
	}
	return zap.Strings("errors", strings.Split(msg, "\n"))
}
