package server

// checks.go: the glue between the health package's Checker and the
// server: it registers each backend's active checks, counts their results
// in lbctl_health_checks_total and hands their verdicts to the backend's
// state (backendstate.go).

import (
	"strings"
	"sync"
	"time"

	"github.com/lbctl/lbctl/health"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// healthMonitor connects the health package's checker to backends, metrics
// and logs.
//
// A check that fails because lbctl itself is short of descriptors, buffers
// or local ports comes back as health.NoVerdict: the checker leaves the
// backend's state alone, it is not counted in lbctl_health_checks_total,
// and the shortage is logged once per episode (its first such check, at
// warn, with the error), not once per check: an episode lasts while the
// last check of at least one backend gave no verdict.
type healthMonitor struct {
	log     *zap.Logger
	m       *metrics.Metrics
	checker *health.Checker

	mu      sync.Mutex
	targets map[string]*checkTarget // by backend key
	// the current local-shortage episode
	noVerdict    int       // targets whose last check gave no verdict; 0: no episode
	skipped      int       // checks without a verdict in this episode
	episodeStart time.Time // first check without a verdict
}

// checkTarget is the monitor's record of one backend. Guarded by
// healthMonitor.mu.
type checkTarget struct {
	be               *backend
	success, failure prometheus.Counter // lbctl_health_checks_total
	checked          bool               // active checks are on
	noVerdict        bool               // its last check gave no verdict
	// beat is the checker's heartbeat for this backend: when its last check
	// completed, whatever the outcome, or when its checks were turned on.
	// Alive reads it.
	beat time.Time
}

func newHealthMonitor(log *zap.Logger, m *metrics.Metrics) *healthMonitor {
	h := &healthMonitor{log: log, m: m, targets: map[string]*checkTarget{}}
	h.checker = health.NewChecker(h.onResult, h.onChange)
	return h
}

// set starts or updates the active checks of be, a backend of p. A backend
// already checked at the same address keeps its state; a new one starts
// with the backend's current active verdict (up when never checked) and is
// checked at once.
func (h *healthMonitor) set(p *pool, be *backend) {
	k := be.key()
	spec := healthSpec(p)
	spec.ServerName = checkServerName(p.cfg.Health, be)
	on := spec.Kind != health.KindNone
	h.mu.Lock()
	t := h.targets[k]
	if t == nil {
		t = &checkTarget{
			be:      be,
			success: h.m.HealthChecks.WithLabelValues(be.pool, be.b.Address(), "success"),
			failure: h.m.HealthChecks.WithLabelValues(be.pool, be.b.Address(), "failure"),
		}
		h.targets[k] = t
	}
	if on && !t.checked {
		t.beat = time.Now()
	}
	t.checked = on
	h.mu.Unlock()
	if !on {
		h.checker.Remove(k)
		h.mu.Lock()
		h.clearNoVerdictLocked(t)
		h.mu.Unlock()
		be.mu.Lock()
		if !be.activeUp {
			be.activeUp = true
			be.publishLocked("active", "active checks off")
		}
		be.mu.Unlock()
		return
	}
	// The checker's initial state must be the backend's active verdict (not
	// its overall health, which a passive ejection may hold down): the
	// checker reports only changes from it.
	be.mu.Lock()
	initialUp := be.activeUp
	be.mu.Unlock()
	if err := h.checker.Set(k, be.addr, spec, initialUp); err != nil {
		h.log.Error("health check not started", zap.String("pool", be.pool), zap.String("backend", be.b.Address()), zap.Error(err))
	}
}

// remove stops the active checks of be and deletes its
// lbctl_health_checks_total series. Once it returns, no callback runs for be.
func (h *healthMonitor) remove(be *backend) {
	k := be.key()
	h.checker.Remove(k)
	h.mu.Lock()
	t := h.targets[k]
	if t != nil {
		h.clearNoVerdictLocked(t)
		delete(h.targets, k)
	}
	h.mu.Unlock()
	if t != nil {
		h.m.HealthChecks.DeleteLabelValues(be.pool, be.b.Address(), "success")
		h.m.HealthChecks.DeleteLabelValues(be.pool, be.b.Address(), "failure")
	}
}

func (h *healthMonitor) stop() { h.checker.Stop() }

// lastCheck returns the heartbeat of the backend's checker: when its last
// check completed (a success, a failure or no verdict), or when its checks
// were turned on if none has completed since. It returns false for a
// backend without active checks.
func (h *healthMonitor) lastCheck(key string) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.targets[key]
	if t == nil || !t.checked {
		return time.Time{}, false
	}
	return t.beat, true
}

func (h *healthMonitor) onResult(key string, o health.Outcome, err error, took time.Duration) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.targets[key]
	if t == nil {
		return
	}
	if o != health.NoVerdict {
		t.be.recordCheck(o, err, now, took)
	}
	t.beat = now
	switch o {
	case health.Success:
		t.success.Inc()
	case health.Failure:
		t.failure.Inc()
	case health.NoVerdict:
		h.skipped++
		if t.noVerdict {
			return
		}
		t.noVerdict = true
		h.noVerdict++
		if h.noVerdict == 1 {
			h.skipped, h.episodeStart = 1, now
			h.log.Warn("health checks give no verdict: lbctl is short of descriptors, buffers or ports; backends keep their state",
				zap.String("pool", t.be.pool), zap.String("backend", t.be.b.Address()), zap.Error(err))
		}
		return
	}
	h.clearNoVerdictLocked(t)
}

// clearNoVerdictLocked records that t's last check is no longer one without
// a verdict, and logs the end of the episode when it was the last such
// target. The caller holds h.mu.
func (h *healthMonitor) clearNoVerdictLocked(t *checkTarget) {
	if !t.noVerdict {
		return
	}
	t.noVerdict = false
	h.noVerdict--
	if h.noVerdict == 0 {
		h.log.Info("health checks give verdicts again",
			zap.Int("checks_without_verdict", h.skipped), zap.Duration("after", time.Since(h.episodeStart)))
	}
}

func (h *healthMonitor) onChange(ev health.Event) {
	h.mu.Lock()
	var be *backend
	if t := h.targets[ev.Target]; t != nil {
		be = t.be
	}
	h.mu.Unlock()
	if be == nil {
		return
	}
	be.mu.Lock()
	be.activeUp = ev.Up
	var extra []zap.Field
	if ev.Err != nil {
		extra = append(extra, zap.NamedError("error", ev.Err))
	}
	be.publishLocked("active", ev.Reason, extra...)
	be.mu.Unlock()
}

// checkServerName is the SNI of be's tls and https checks, what an
// operator would type into a browser: server_name when set; else (https)
// the name in host; else the backend's host name when its address was
// written as a name ("api.internal:443") or a dns source found it; else
// none, since an IP address cannot be sent as SNI. be.source is read with
// s.mu held (set runs from commit).
func checkServerName(hc config.Health, be *backend) string {
	if hc.Check != string(health.KindTLS) && hc.Check != string(health.KindHTTPS) {
		return ""
	}
	if hc.ServerName != "" {
		return hc.ServerName
	}
	if name := health.ServerNameOf(hc.Host); hc.Check == string(health.KindHTTPS) && name != "" {
		return name
	}
	if name := health.ServerNameOf(be.b.Address()); name != "" {
		return name
	}
	if name, ok := strings.CutPrefix(be.source, "dns:"); ok {
		return health.ServerNameOf(name)
	}
	return ""
}

func healthSpec(p *pool) health.Spec {
	hc := p.cfg.Health
	s := health.Spec{
		Kind:     health.Kind(hc.Check),
		Network:  "tcp",
		Interval: hc.Interval,
		Timeout:  hc.Timeout,
		Rise:     hc.Rise,
		Fall:     hc.Fall,
		Port:     hc.Port,
		Path:     hc.Path,
		Host:     hc.Host,
		StatusOK: hc.StatusOK,
		Send:     hc.Send,
		Expect:   hc.Expect,
	}
	if p.protocol == "udp" {
		s.Network = "udp"
	}
	if strings.TrimSpace(hc.Check) == "" {
		s.Kind = health.KindNone
	}
	return s
}
