package health

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/lbctl/lbctl/localerr"
)

// ErrStopped is returned by Checker.Set after Checker.Stop.
var ErrStopped = errors.New("health checker stopped")

const (
	// firstSpreadFraction and firstSpreadCap bound the random delay before a
	// new target's first check: at most Interval/10, at most 200ms. The first
	// check runs "at once", yet 500 targets added together do not all dial in
	// the same millisecond.
	firstSpreadFraction = 10
	firstSpreadCap      = 200 * time.Millisecond
	// jitterFraction: each later check starts Interval minus up to
	// Interval/jitterFraction after the previous one started, so targets
	// that happen to line up drift apart again.
	jitterFraction = 10
)

// Outcome is what one completed check says about its target.
type Outcome uint8

const (
	// Success: the target answered as the check expects.
	Success Outcome = iota
	// Failure: it did not (refused, timed out, wrong answer); a verdict
	// against the target, counted toward Spec.Fall.
	Failure
	// NoVerdict: the check could not be made for a local reason, lbctl
	// being out of descriptors, buffers or ports (localerr.Is). It says
	// nothing about the target, so it is neither a success nor a failure:
	// the target's state and its consecutive-result counters stay as they
	// were.
	NoVerdict
)

// String returns "success", "failure" or "no_verdict".
func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Failure:
		return "failure"
	case NoVerdict:
		return "no_verdict"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// outcomeOf classifies a check's error.
func outcomeOf(err error) Outcome {
	switch {
	case err == nil:
		return Success
	case localerr.Is(err):
		return NoVerdict
	}
	return Failure
}

// Event is a state transition of one target.
type Event struct {
	Target string // the key given to Checker.Set
	Addr   string // the address that was checked (before any Spec.Port override)
	Up     bool   // the new state
	// Reason says why: the failing check's error text ("HTTP 500",
	// "expect not seen after 0 bytes: EOF", "dial tcp ...: connection
	// refused") on the way down; "first check passed" or "2 consecutive
	// checks passed" on the way up.
	Reason string
	// Err is the failing check's error on the way down, nil on the way up.
	Err error
}

// Checker runs the checks of a changing set of targets, one goroutine each,
// and reports results and transitions through the callbacks given to
// NewChecker. The zero value is not usable; the methods are safe for
// concurrent use.
type Checker struct {
	onResult func(target string, o Outcome, err error, took time.Duration)
	onChange func(Event)
	// newProber builds a target's Prober and pickFirstDelay draws the wait
	// before a target's first check; tests replace them.
	newProber      func(Spec) (Prober, error)
	pickFirstDelay func(interval time.Duration) time.Duration

	mu      sync.Mutex
	targets map[string]*target
	stopped bool
	wg      sync.WaitGroup
}

// target is one checked address and its state. The first fields are set
// before the goroutine starts and never change; the rest are guarded by
// Checker.mu.
type target struct {
	key, addr string
	cancel    context.CancelFunc
	done      chan struct{} // closed when the goroutine (and any predecessor) returned
	wake      chan struct{} // cap 1: the spec changed

	// guarded by Checker.mu
	spec   Spec
	prober Prober
	up     bool
	known  bool // at least one check has completed
	succ   int  // consecutive successes
	fail   int  // consecutive failures
}

// NewChecker returns a Checker with no targets. onResult is called after
// every completed check with its outcome, its error (nil for a Success)
// and how long the probe took (dial to verdict); a
// NoVerdict outcome changes nothing but is reported too, so a caller can
// tell a running checker from a stuck one. When a check changed the
// target's state, onChange is called just before onResult, so whoever has
// seen a result has seen its transition. Either may be nil. A check cut
// short by Remove or Stop is not reported.
//
// The callbacks run on the targets' goroutines: concurrently for different
// targets, in order for one target. They must be quick and must not call
// Set, Remove or Stop, which wait for those goroutines (State is fine).
func NewChecker(onResult func(target string, o Outcome, err error, took time.Duration), onChange func(Event)) *Checker {
	return &Checker{
		onResult:       onResult,
		onChange:       onChange,
		newProber:      NewProber,
		pickFirstDelay: firstDelay,
		targets:        make(map[string]*target),
	}
}

// Set adds the target named key, checked at addr according to s, or updates it.
//
//   - A new target (or one whose addr changed) starts unknown, counting as
//     initialUp, and its first check runs at once; that check alone decides
//     its state.
//   - A target already checked at addr keeps its state, its counters and its
//     rhythm; initialUp is ignored and the next check uses s. A changed
//     Interval takes effect from the last check's start.
//   - s.Kind "none" (or empty) removes the target, as Remove(key) does.
//
// Set returns an error, and changes nothing, when s is invalid or after Stop.
func (c *Checker) Set(key, addr string, s Spec, initialUp bool) error {
	if s.Kind == KindNone || s.Kind == "" {
		c.Remove(key)
		return nil
	}
	s = s.withDefaults()
	if err := s.validate(); err != nil {
		return fmt.Errorf("target %s: health check: %w", key, err)
	}
	p, err := c.newProber(s)
	if err != nil {
		return fmt.Errorf("target %s: %w", key, err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return ErrStopped
	}
	old := c.targets[key]
	if old != nil && old.addr == addr {
		old.spec, old.prober = s, p
		select {
		case old.wake <- struct{}{}:
		default: // a wake-up is already pending; it will read the new spec
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &target{
		key:    key,
		addr:   addr,
		cancel: cancel,
		done:   make(chan struct{}),
		wake:   make(chan struct{}, 1),
		spec:   s,
		prober: p,
		up:     initialUp,
	}
	c.targets[key] = t
	var prev <-chan struct{}
	if old != nil {
		old.cancel()
		prev = old.done
	}
	c.wg.Add(1)
	go c.run(ctx, t, prev, c.pickFirstDelay(s.Interval))
	return nil
}

// Remove stops checking the target named key and returns once its goroutine has returned:
// no callback runs for it afterwards. Removing an unknown target is a no-op.
func (c *Checker) Remove(key string) {
	c.mu.Lock()
	t := c.targets[key]
	delete(c.targets, key)
	c.mu.Unlock()
	if t != nil {
		t.cancel()
		<-t.done
	}
}

// Stop stops every target and waits for their goroutines. Checks in flight
// are cut short. Later calls to Set return ErrStopped; Stop may be called
// more than once.
func (c *Checker) Stop() {
	c.mu.Lock()
	c.stopped = true
	for key, t := range c.targets {
		t.cancel()
		delete(c.targets, key)
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// State returns the current state of the target named key: up, and whether a check has
// completed yet (before that, up is the initialUp given to Set). An unknown
// target returns false, false.
func (c *Checker) State(key string) (up, known bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.targets[key]
	if t == nil {
		return false, false
	}
	return t.up, t.known
}

// run is one target's goroutine; its first check runs after first. prev,
// when not nil, is the done channel of the goroutine this one replaces:
// waiting for it first keeps the callbacks of one target key strictly
// ordered and makes done mean "all returned".
func (c *Checker) run(ctx context.Context, t *target, prev <-chan struct{}, first time.Duration) {
	defer c.wg.Done()
	defer close(t.done)
	if prev != nil {
		<-prev // already cancelled: returns promptly
	}

	c.mu.Lock()
	interval := t.spec.Interval
	c.mu.Unlock()
	timer := time.NewTimer(first)
	defer timer.Stop()
	var last time.Time // start of the last check; zero before the first
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
			c.mu.Lock()
			changed := t.spec.Interval != interval
			interval = t.spec.Interval
			c.mu.Unlock()
			if changed && !last.IsZero() {
				timer.Reset(time.Until(last.Add(interval)))
			}
		case <-timer.C:
			last = time.Now()
			c.mu.Lock()
			p, timeout := t.prober, t.spec.Timeout
			c.mu.Unlock()
			err := probe(ctx, p, t.addr, timeout)
			took := time.Since(last)
			if ctx.Err() != nil {
				return // removed or stopped: the result means nothing
			}
			c.report(t, err, took)
			timer.Reset(time.Until(last.Add(nextDelay(interval))))
		}
	}
}

// probe runs one check bounded by timeout, whatever the Prober does.
func probe(ctx context.Context, p Prober, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return p.Probe(ctx, addr)
}

// report records one result, whose probe took took, and runs the
// callbacks outside the lock.
func (c *Checker) report(t *target, err error, took time.Duration) {
	o := outcomeOf(err)
	var (
		ev      Event
		changed bool
	)
	if o != NoVerdict {
		c.mu.Lock()
		ev, changed = t.observe(err)
		c.mu.Unlock()
	}
	if changed && c.onChange != nil {
		c.onChange(ev)
	}
	if c.onResult != nil {
		c.onResult(t.key, o, err, took)
	}
}

// observe applies one verdict (a Success or a Failure, never a NoVerdict)
// to the counters and the rise/fall rules and returns the transition it
// caused, if any. The caller holds Checker.mu.
func (t *target) observe(err error) (Event, bool) {
	ok := err == nil
	first := !t.known
	t.known = true
	if ok {
		t.succ, t.fail = t.succ+1, 0
	} else {
		t.succ, t.fail = 0, t.fail+1
	}
	was := t.up
	switch {
	case first:
		t.up = ok
	case ok && t.succ >= t.spec.Rise:
		t.up = true
	case !ok && t.fail >= t.spec.Fall:
		t.up = false
	}
	if t.up == was {
		return Event{}, false
	}
	ev := Event{Target: t.key, Addr: t.addr, Up: t.up, Err: err}
	switch {
	case !ok:
		ev.Reason = err.Error()
	case first:
		ev.Reason = "first check passed"
	default:
		ev.Reason = strconv.Itoa(t.succ) + " consecutive checks passed"
	}
	return ev, true
}

// firstDelay is the random wait before a target's first check: in
// [0, min(interval/10, 200ms)).
func firstDelay(interval time.Duration) time.Duration {
	spread := min(interval/firstSpreadFraction, firstSpreadCap)
	if spread <= 0 {
		return 0
	}
	return rand.N(spread)
}

// nextDelay is the wait between the starts of two checks: in
// (interval - interval/10, interval]. Never more than interval, so a dead
// backend is marked down within Fall*Interval plus one Timeout.
func nextDelay(interval time.Duration) time.Duration {
	j := interval / jitterFraction
	if j <= 0 {
		return interval
	}
	return interval - rand.N(j)
}
