package balancer

import (
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
)

// Sentinel errors, wrapped with context by the functions that return them.
var (
	// ErrUnknownAlgorithm is returned by [New] for an algorithm name it does not know.
	ErrUnknownAlgorithm = errors.New("unknown algorithm")
	// ErrUnknownAdminState is returned by [ParseAdminState] and [AdminState.UnmarshalText].
	ErrUnknownAdminState = errors.New("unknown admin state")
)

// AdminState is the administrative state of a backend, set by an operator.
// Only [Enabled] backends receive new connections; established connections
// are never cut by a change of state.
type AdminState int32

const (
	// Enabled backends take new connections (when healthy and weight > 0).
	Enabled AdminState = iota
	// Draining backends take no new connections and are on their way out.
	Draining
	// Disabled backends take no new connections.
	Disabled
)

// String returns "enabled", "draining" or "disabled".
func (s AdminState) String() string {
	switch s {
	case Enabled:
		return "enabled"
	case Draining:
		return "draining"
	case Disabled:
		return "disabled"
	}
	return "AdminState(" + strconv.Itoa(int(s)) + ")"
}

// ParseAdminState is the inverse of [AdminState.String].
func ParseAdminState(s string) (AdminState, error) {
	switch s {
	case "enabled":
		return Enabled, nil
	case "draining":
		return Draining, nil
	case "disabled":
		return Disabled, nil
	}
	return 0, fmt.Errorf("%w %q (want enabled, draining or disabled)", ErrUnknownAdminState, s)
}

// MarshalText encodes the state as its name, so JSON shows "draining", not 1.
func (s AdminState) MarshalText() ([]byte, error) {
	if s < Enabled || s > Disabled {
		return nil, fmt.Errorf("marshal admin state: %w %d", ErrUnknownAdminState, int32(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText decodes a name written by MarshalText.
func (s *AdminState) UnmarshalText(text []byte) error {
	v, err := ParseAdminState(string(text))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MaxWeight is the largest weight a backend can have in a pool; [New]
// clamps larger values to it (and negative ones to 0).
const MaxWeight = 1_000_000

// fullScale is the slow-start scale of a backend at full weight, in permille.
const fullScale = 1000

// Backend is one upstream server and its run-time state. All methods are safe
// for concurrent use. The zero value is not usable; call [NewBackend].
//
// The same *Backend is meant to be reused across config reloads while its
// address stays in the pool, so health, admin state and counters survive.
// Its weight and whether it is a backup are not run-time state: they belong
// to each [Pool] it is a [Member] of.
type Backend struct {
	address string
	seed    uint64 // hash of address, the per-backend key of ip-hash

	scale   atomic.Int32 // slow-start scale in permille, 0..1000
	healthy atomic.Bool
	admin   atomic.Int32 // AdminState

	active   atomic.Int64
	total    atomic.Uint64
	failures atomic.Uint64
}

// NewBackend returns a healthy, enabled backend at full slow-start scale.
// address is kept as given (it is the backend's name in status and metrics)
// and is the key ip-hash hashes, so it must be the same in every process
// that should agree on a client's backend.
func NewBackend(address string) *Backend {
	b := &Backend{address: address, seed: hashString(address)}
	b.scale.Store(fullScale)
	b.healthy.Store(true)
	return b
}

// Address returns the address given to NewBackend.
func (b *Backend) Address() string { return b.address }

// Healthy reports whether the backend is up. A new backend starts up.
func (b *Backend) Healthy() bool { return b.healthy.Load() }

// SetHealthy marks the backend up or down and reports whether that changed
// its state, so exactly one of several concurrent callers sees a transition.
func (b *Backend) SetHealthy(up bool) (changed bool) {
	return b.healthy.CompareAndSwap(!up, up)
}

// Admin returns the administrative state.
func (b *Backend) Admin() AdminState { return AdminState(b.admin.Load()) }

// SetAdmin sets the administrative state.
func (b *Backend) SetAdmin(s AdminState) { b.admin.Store(int32(s)) }

// SetWeightScale sets the slow-start ramp in permille, clamped to 0..1000;
// 1000 (full weight) is the initial value. The caller owns the clock and
// raises the scale over the slow-start period after the backend comes back up.
// The scale applies to the backend's weight in every pool.
func (b *Backend) SetWeightScale(permille int) {
	b.scale.Store(int32(min(max(permille, 0), fullScale)))
}

// WeightScale returns the slow-start scale in permille.
func (b *Backend) WeightScale() int { return int(b.scale.Load()) }

// Eligible reports whether the backend may take a new connection: healthy
// and admin state Enabled. A pool also skips its members of weight 0.
func (b *Backend) Eligible() bool {
	return b.healthy.Load() && b.Admin() == Enabled
}

// pickWeight is the weight the algorithms use for a member of weight w: 0
// when the backend is not eligible or w is 0, else w*scale (permille
// precision), at least 1. The slow-start scale works at that finer
// precision, so a member of weight 1 at scale 100 really gets a tenth of a
// peer's share.
func (b *Backend) pickWeight(w uint32) uint64 {
	if w == 0 || !b.healthy.Load() || AdminState(b.admin.Load()) != Enabled {
		return 0
	}
	return max(1, uint64(w)*uint64(b.scale.Load()))
}

// Acquire counts a connection to b from the moment b is picked for it,
// while the connect is still in progress: least-connections then sees a
// backend slow to accept as busy, as nginx does. Every Acquire needs
// exactly one Release, whether the connect succeeds or fails.
func (b *Backend) Acquire() { b.active.Add(1) }

// Established counts a connection (or UDP session) that was made: Total.
func (b *Backend) Established() { b.total.Add(1) }

// Release counts the end of a connection counted by Acquire.
func (b *Backend) Release() { b.active.Add(-1) }

// Active returns the number of connections acquired and not yet released:
// established ones and connects in progress.
func (b *Backend) Active() int64 { return b.active.Load() }

// Total returns the number of connections ever established.
func (b *Backend) Total() uint64 { return b.total.Load() }

// AddFailure counts a failed connect attempt.
func (b *Backend) AddFailure() { b.failures.Add(1) }

// Failures returns the number of failed connect attempts counted so far.
func (b *Backend) Failures() uint64 { return b.failures.Load() }

// String returns the address, for logs and test failures.
func (b *Backend) String() string { return b.address }
