package server

// sources.go: the discovery sources of a pool. Each [[pools.X.discover]]
// entry runs one source on a goroutine of its own; every answer it gives
// replaces its last good set and refreshes the pool (pool.go), every
// failure keeps that set: a failing source never empties a pool.

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"github.com/lbctl/lbctl/discovery"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/metrics"
	"go.uber.org/zap"
)

// sourceRun is one running discovery source of a pool. Guarded by
// Server.mu.
type sourceRun struct {
	lp      *livePool
	d       config.Discover
	name    string // d.Source(): "dns:NAME", ...
	set     []entry
	cancel  context.CancelFunc
	started bool
	stopped bool
	failing bool // in a failure episode (logged once)
	m       *metrics.Discovery
}

// planSources matches the discover entries of pc with lp's running
// sources: an identical entry keeps its running source and its last good
// set; any other is new, and starts empty.
func (s *Server) planSources(lp *livePool, pc *config.Pool) []*sourceRun {
	var out []*sourceRun
	for _, d := range pc.Discover {
		var kept *sourceRun
		for _, r := range lp.srcs {
			if sameDiscover(r.d, d) {
				kept = r
				break
			}
		}
		if kept == nil {
			kept = &sourceRun{lp: lp, d: d, name: d.Source()}
		}
		out = append(out, kept)
	}
	return out
}

func sameDiscover(a, b config.Discover) bool {
	a.Line, b.Line = 0, 0
	return reflect.DeepEqual(a, b)
}

// swapSources puts srcs in service for lp: the sources lp no longer has
// stop, the new ones start. Called with s.mu held.
func (s *Server) swapSources(lp *livePool, srcs []*sourceRun) {
	keep := make(map[*sourceRun]bool, len(srcs))
	for _, r := range srcs {
		keep[r] = true
	}
	for _, r := range lp.srcs {
		if !keep[r] {
			s.stopSource(r)
		}
	}
	lp.srcs = srcs
	for _, r := range srcs {
		if !r.started {
			s.startSource(r)
		}
	}
}

// startSource starts r's goroutine. A source that cannot be made (a bad
// option) is logged and stays empty. Called with s.mu held.
func (s *Server) startSource(r *sourceRun) {
	r.started = true
	src, err := s.newSource(r.d)
	if err != nil {
		s.log.Error("discovery source not started", zapPool(r.lp.name), zapString("source", r.name), zap.Error(err))
		return
	}
	r.m = s.m.ForDiscovery(r.lp.name, r.name)
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		src.Run(ctx, func(set []discovery.Entry, err error) { s.sourceUpdate(r, set, err) })
	}()
}

// newSource makes the discovery source of d.
func (s *Server) newSource(d config.Discover) (discovery.Source, error) {
	if s.opts.NewSource != nil {
		return s.opts.NewSource(d)
	}
	switch d.Type {
	case "dns":
		return discovery.NewDNS(discovery.DNSOptions{Name: d.Name, Port: uint16(d.Port), Weight: d.Weight,
			Backup: d.Backup, Resolver: d.Resolver, Interval: d.Interval}), nil
	case "srv":
		return discovery.NewSRV(discovery.SRVOptions{Name: d.Name, Resolver: d.Resolver, Interval: d.Interval}), nil
	case "file":
		return discovery.NewFile(discovery.FileOptions{Path: d.Path}), nil
	case "etcd":
		return discovery.NewEtcd(discovery.EtcdOptions{Endpoints: d.Endpoints, Prefix: d.Prefix}), nil
	}
	return nil, fmt.Errorf("unknown discover type %q", d.Type)
}

// sourceUpdate is r's update callback: a set replaces r's last good set
// and refreshes the pool; an error keeps the set, and is logged once per
// failure episode.
func (s *Server) sourceUpdate(r *sourceRun, set []discovery.Entry, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.stopped || s.stopping.Load() {
		return
	}
	if err != nil {
		r.m.Failed()
		if !r.failing {
			r.failing = true
			s.log.Warn("discovery source failed, the pool keeps its last good set", zapPool(r.lp.name),
				zapString("source", r.name), zap.Int("backends", len(r.set)), zap.Error(err))
		}
		return
	}
	r.m.Succeeded(len(set), time.Now())
	if r.failing {
		r.failing = false
		s.log.Info("discovery source answers again", zapPool(r.lp.name), zapString("source", r.name), zap.Int("backends", len(set)))
	}
	r.set = r.set[:0]
	for _, e := range set {
		r.set = append(r.set, entry{ap: unmap(e.Addr), weight: clampWeight(e.Weight), backup: e.Backup, source: r.name})
	}
	if err := s.refresh(r.lp); err != nil {
		s.log.Error("pool not refreshed", zapPool(r.lp.name), zapString("source", r.name), zap.Error(err))
	}
}

// stopSource stops r's goroutine (it may still be returning: Shutdown
// waits for it) and deletes its series. Called with s.mu held.
func (s *Server) stopSource(r *sourceRun) {
	if r.stopped {
		return
	}
	r.stopped = true
	if r.cancel != nil {
		r.cancel()
	}
	if r.m != nil {
		s.m.ForgetDiscovery(r.lp.name, r.name)
	}
}
