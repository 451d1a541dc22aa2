package server

// checks.go: the glue between the health package's Checker and the
// server: it registers each backend's active checks, counts their results
// in lbctl_health_checks_total and hands their verdicts to the backend's
// state (backendstate.go).

import (
	"strings"
	"sync"

	"github.com/lbctl/lbctl/health"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// healthMonitor connects the health package's checker to backends, metrics
// and logs.
type healthMonitor struct {
	log     *zap.Logger
	m       *metrics.Metrics
	checker *health.Checker

	mu       sync.Mutex
	backends map[string]*backend // by key
	results  map[string][2]prometheus.Counter
}

func newHealthMonitor(log *zap.Logger, m *metrics.Metrics) *healthMonitor {
	h := &healthMonitor{log: log, m: m, backends: map[string]*backend{}, results: map[string][2]prometheus.Counter{}}
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
	h.mu.Lock()
	h.backends[k] = be
	if _, ok := h.results[k]; !ok {
		h.results[k] = [2]prometheus.Counter{
			h.m.HealthChecks.WithLabelValues(be.pool, be.b.Address(), "success"),
			h.m.HealthChecks.WithLabelValues(be.pool, be.b.Address(), "failure"),
		}
	}
	h.mu.Unlock()
	if spec.Kind == health.KindNone {
		h.checker.Remove(k)
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
	_, had := h.results[k]
	delete(h.backends, k)
	delete(h.results, k)
	h.mu.Unlock()
	if had {
		h.m.HealthChecks.DeleteLabelValues(be.pool, be.b.Address(), "success")
		h.m.HealthChecks.DeleteLabelValues(be.pool, be.b.Address(), "failure")
	}
}

func (h *healthMonitor) stop() { h.checker.Stop() }

func (h *healthMonitor) onResult(key string, err error) {
	h.mu.Lock()
	c, ok := h.results[key]
	h.mu.Unlock()
	if !ok {
		return
	}
	if err == nil {
		c[0].Inc()
	} else {
		c[1].Inc()
	}
}

func (h *healthMonitor) onChange(ev health.Event) {
	h.mu.Lock()
	be := h.backends[ev.Target]
	h.mu.Unlock()
	if be == nil {
		return
	}
	be.mu.Lock()
	be.activeUp = ev.Up
	be.publishLocked("active", ev.Reason)
	be.mu.Unlock()
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
