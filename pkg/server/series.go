package server

import "github.com/lbctl/lbctl/pkg/config"

// Metric series follow what is in service. A backend's series end when it
// leaves its pool's set (removal.go) or its listener leaves (apply), and a
// reload that fails deletes the series its build created (targets.go,
// forgetFresh). The listeners' own series (rejections) follow the
// configuration: forgetSeries.

// forgetSeries deletes the rejection series of the listeners of gone that
// kept does not have.
func (s *Server) forgetSeries(gone, kept *config.Config) {
	have := map[string]bool{}
	if kept != nil {
		for _, l := range kept.Listeners {
			have[l.Name] = true
		}
	}
	if gone == nil {
		return
	}
	for _, l := range gone.Listeners {
		if !have[l.Name] {
			s.m.ForgetListener(l.Name)
		}
	}
}
