package server

// runtime.go: the changes an operator makes to a pool's backends at run
// time through the admin API and the control socket: backends added and
// removed (source "api"), weight overrides and kills. The admin state
// (SetBackendAdmin) is in status.go.

import (
	"errors"
	"fmt"
	"time"
)

// BackendSpec is a backend added at run time (source "api").
type BackendSpec struct {
	// Address is the backend's "IP:port"; host names are not accepted.
	Address string
	// Weight is 0..1,000,000 (the admin API fills in its default, 1).
	Weight int
	// Backup backends take connections only while no primary is eligible.
	Backup bool
}

// Errors of the run-time changes, beside ErrUnknownPool and
// ErrUnknownBackend (status.go).
var (
	// ErrBackendExists is returned by AddBackend for an address already in
	// the pool, whatever its source.
	ErrBackendExists = errors.New("backend already in the pool")
	// ErrNotAPIBackend is returned by RemoveBackend for a backend whose
	// source is not "api" (the config file or a discovery source owns it).
	ErrNotAPIBackend = errors.New("backend not added through the API")
)

// BadRequestError is a run-time change that cannot be made as asked: an
// address that is not IP:port, a weight out of range. The admin API answers
// it with 400.
type BadRequestError struct {
	Field  string // "address", "weight"
	Reason string
}

func (e *BadRequestError) Error() string { return fmt.Sprintf("bad %s: %s", e.Field, e.Reason) }

func badRequest(field, format string, args ...any) error {
	return &BadRequestError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// CheckStatus is the outcome of a backend's last active check, in status.
type CheckStatus struct {
	Result          string    `json:"result"` // "success" | "failure"
	Reason          string    `json:"reason"`
	DurationSeconds float64   `json:"duration_seconds"`
	At              time.Time `json:"at"` // RFC 3339
}
