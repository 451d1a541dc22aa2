package tcpproxy

import "strconv"

// End says how a connection ended. Its String is the access log's "end"
// field. The zero value is no End: a connection still running.
type End int32

const (
	EndDone               End = iota + 1 // both sides finished normally
	EndClientError                       // read or write on the client failed (reset)
	EndBackendError                      // read or write on the backend failed (reset)
	EndIdle                              // no byte moved either way for IdleTimeout
	EndHalfClose                         // one side finished, the other did not within HalfCloseTimeout
	EndShutdown                          // closed by the shutdown deadline
	EndNoBackend                         // no eligible backend
	EndBackendUnavailable                // every connect attempt failed
	EndKilled                            // reset by Registry.Kill (lbctl backend kill)
	EndDrainTimeout                      // reset at the drain_timeout of a backend removed from the pool
	EndMoved                             // detached: it goes on in another process (detach.go); no access line
	EndLocalResource                     // lbctl itself was out of descriptors (or the like) for it; both sides reset
)

var endNames = [...]string{
	EndDone:               "done",
	EndClientError:        "client_error",
	EndBackendError:       "backend_error",
	EndIdle:               "idle_timeout",
	EndHalfClose:          "half_close_timeout",
	EndShutdown:           "shutdown",
	EndNoBackend:          "no_backend",
	EndBackendUnavailable: "backend_unavailable",
	EndKilled:             "killed",
	EndDrainTimeout:       "drain_timeout",
	EndMoved:              "moved",
	EndLocalResource:      "local_resource",
}

// String returns the access log's word for e.
func (e End) String() string {
	if e > 0 && int(e) < len(endNames) {
		return endNames[e]
	}
	return "End(" + strconv.Itoa(int(e)) + ")"
}

// failure reports whether e is a failure, a side's or lbctl's own: the
// sides still open then get a reset whatever is pending, as the peer that
// failed did, so that neither mistakes the cut for a complete stream.
func (e End) failure() bool {
	return e == EndClientError || e == EndBackendError || e == EndLocalResource
}
