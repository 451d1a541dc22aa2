package server

import "github.com/lbctl/lbctl/pkg/config"

// Metric series follow the configuration: a reload deletes the series of
// the listeners, pools and backends it removed, and a reload that fails
// deletes the series its build created for names that never went live. The
// label values are the configured names and addresses, so the sets are
// computed from the configurations alone.

// seriesSet is the label values of the metric series one configuration
// uses.
type seriesSet struct {
	triples   map[[3]string]bool // listener, pool, backend
	backends  map[[2]string]bool // pool, backend
	listeners map[string]bool
}

func seriesOf(cfg *config.Config) seriesSet {
	s := seriesSet{triples: map[[3]string]bool{}, backends: map[[2]string]bool{}, listeners: map[string]bool{}}
	if cfg == nil {
		return s
	}
	for name, p := range cfg.Pools {
		for _, b := range p.Backends {
			s.backends[[2]string{name, b.Address}] = true
		}
	}
	for _, l := range cfg.Listeners {
		s.listeners[l.Name] = true
		if p := cfg.Pools[l.Pool]; p != nil {
			for _, b := range p.Backends {
				s.triples[[3]string{l.Name, l.Pool, b.Address}] = true
			}
		}
	}
	return s
}

// forgetSeries deletes the series of gone that kept does not use.
func (s *Server) forgetSeries(gone, kept *config.Config) {
	g, k := seriesOf(gone), seriesOf(kept)
	for t := range g.triples {
		if !k.triples[t] {
			s.m.ForgetBackend(t[0], t[1], t[2])
		}
	}
	for b := range g.backends {
		if !k.backends[b] {
			s.m.ForgetPoolBackend(b[0], b[1])
		}
	}
	for l := range g.listeners {
		if !k.listeners[l] {
			s.m.ForgetListener(l)
		}
	}
}
