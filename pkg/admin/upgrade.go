package admin

import (
	"errors"
	"net/http"
	"time"
)

// POST /api/v1/upgrade: start a new lbctl binary and hand the listening
// sockets, the run-time state, the connections and the sessions over to
// it (cmd/lbctl orchestrates it through Options.Upgrade). The request
// waits for the outcome, for as long as the upgrade takes (the new
// process's start, then the handover, bounded by shutdown_timeout).
//
// Answers: 200 with an UpgradeResult once the new process is ready and
// the handover done; 400 for a bad body; 409 when an upgrade is already
// in progress; 502 with the reason when the new process failed to start,
// exited, or was not ready in time, or when the handover failed (the old
// process keeps serving what it has not handed over); 501 when this
// process cannot upgrade.

// UpgradeRequest is the optional body of POST /api/v1/upgrade.
type UpgradeRequest struct {
	// Binary is the executable to start; empty: the one lbctl was started
	// from, as it is on disk now.
	Binary string `json:"binary,omitempty"`
	// Timeout bounds the new process's start, until it is ready (Go
	// duration, e.g. "30s"; empty: DefaultUpgradeTimeout).
	Timeout string `json:"timeout,omitempty"`
}

// DefaultUpgradeTimeout is how long the new process of an upgrade has to
// become ready when the request gives no timeout.
const DefaultUpgradeTimeout = 30 * time.Second

// UpgradeResult is the answer of a successful upgrade.
type UpgradeResult struct {
	OldPID   int `json:"old_pid"`
	NewPID   int `json:"new_pid"`
	TCPMoved int `json:"tcp_moved"` // established connections handed over
	UDPMoved int `json:"udp_moved"` // UDP sessions handed over
	TCPLeft  int `json:"tcp_left"`  // connections that finish in the old process
}

// ErrUpgradeInProgress is returned by Options.Upgrade while another
// upgrade runs (409).
var ErrUpgradeInProgress = errors.New("an upgrade is already in progress")

func (s *Server) upgrade(w http.ResponseWriter, r *http.Request) {
	if s.opts.Upgrade == nil {
		writeError(w, http.StatusNotImplemented, "this process cannot upgrade")
		return
	}
	var req UpgradeRequest
	if r.ContentLength != 0 {
		if err := decodeBody(r, w, &req); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	if req.Timeout != "" {
		if d, err := time.ParseDuration(req.Timeout); err != nil || d <= 0 {
			writeError(w, http.StatusBadRequest, "timeout: not a positive duration: "+req.Timeout)
			return
		}
	}
	// The answer comes when the upgrade is over, which may be after the
	// server's write timeout.
	http.NewResponseController(w).SetWriteDeadline(time.Time{})
	res, err := s.opts.Upgrade(req)
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, res)
	case errors.Is(err, ErrUpgradeInProgress):
		writeError(w, http.StatusConflict, err.Error())
	default:
		writeError(w, http.StatusBadGateway, err.Error())
	}
}
