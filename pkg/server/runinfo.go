package server

import (
	"math"
	"sync"
	"time"
)

// runInfo is what status tells about the process rather than its
// listeners and pools: the version, when it started, and how its last
// reload went.
type runInfo struct {
	mu      sync.Mutex
	started time.Time     // zero before Start
	last    *ReloadStatus // nil before the first reload
}

// ReloadStatus is the outcome of the last reload, in status.
type ReloadStatus struct {
	Time   time.Time `json:"time"`
	Result string    `json:"result"` // "ok" | "failed"
	Error  string    `json:"error"`  // why it failed; "" when ok
}

func (ri *runInfo) start(now time.Time) {
	ri.mu.Lock()
	ri.started = now
	ri.mu.Unlock()
}

func (ri *runInfo) reloaded(now time.Time, err error) {
	r := &ReloadStatus{Time: now, Result: "ok"}
	if err != nil {
		r.Result, r.Error = "failed", err.Error()
	}
	ri.mu.Lock()
	ri.last = r
	ri.mu.Unlock()
}

// fill sets the process fields of st.
func (ri *runInfo) fill(st *Status, version, file string, now time.Time) {
	ri.mu.Lock()
	defer ri.mu.Unlock()
	st.Version, st.ConfigFile = version, file
	if !ri.started.IsZero() {
		st.Started = ri.started
		st.UptimeSeconds = math.Round(now.Sub(ri.started).Seconds()*1000) / 1000
	}
	if ri.last != nil {
		r := *ri.last
		st.LastReload = &r
	}
}

// ReloadRejected records a reload that failed before the server saw a
// configuration (the file did not load, or could not be applied around the
// server), as Reload records its own failures: status shows it as the last
// reload, and lbctl_config_reloads_total{result="failure"} counts it.
func (s *Server) ReloadRejected(err error) {
	now := time.Now()
	s.info.reloaded(now, err)
	s.m.ReloadResult(false, now)
}
