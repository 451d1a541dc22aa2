package discovery

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// result is one call of a source's update.
type result struct {
	set []Entry
	err error
	at  time.Time
}

// recorder runs a source and keeps every result it reports, checking the
// Run contract on each call (in the source's goroutine: violations are kept
// and reported by the test goroutine).
type recorder struct {
	src    Source
	inside atomic.Bool // update running: a second one at once is a violation

	mu         sync.Mutex
	results    []result
	violations []string
}

// run starts src.Run; the test's cleanup cancels it and fails the test if
// Run does not return within 10s or broke the contract.
func run(t *testing.T, src Source) *recorder {
	t.Helper()
	r := &recorder{src: src}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Run(ctx, r.update)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s: Run did not return within 10s of its context's end", src.Name())
		}
		r.mu.Lock()
		n := len(r.results)
		r.mu.Unlock()
		r.checkContract(t)
		r.mu.Lock()
		if len(r.results) != n {
			t.Errorf("%s: update called after Run returned", src.Name())
		}
		r.mu.Unlock()
	})
	return r
}

func (r *recorder) update(set []Entry, err error) {
	if !r.inside.CompareAndSwap(false, true) {
		r.violate("update called concurrently")
	}
	defer r.inside.Store(false)
	switch {
	case err != nil && set != nil:
		r.violate(fmt.Sprintf("a set of %d with the error %v", len(set), err))
	case err == nil && set == nil:
		r.violate("a nil set without an error")
	}
	for i := 1; i < len(set); i++ {
		if set[i-1].Addr.Compare(set[i].Addr) >= 0 {
			r.violate(fmt.Sprintf("set not sorted or with a duplicate: %v", set))
			break
		}
	}
	for _, e := range set {
		if e.Addr.Addr().Is4In6() || e.Addr.Port() == 0 || e.Weight < 0 {
			r.violate(fmt.Sprintf("bad entry %+v", e))
		}
	}
	r.mu.Lock()
	r.results = append(r.results, result{slices.Clone(set), err, time.Now()})
	r.mu.Unlock()
}

func (r *recorder) violate(s string) {
	r.mu.Lock()
	r.violations = append(r.violations, s)
	r.mu.Unlock()
}

func (r *recorder) checkContract(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, v := range r.violations {
		t.Errorf("%s: %s", r.src.Name(), v)
	}
	r.violations = nil
}

// mark is the number of results so far: since(mark) are the later ones.
func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.results)
}

func (r *recorder) since(mark int) []result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.results[mark:])
}

func (r *recorder) last() (result, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.results) == 0 {
		return result{}, false
	}
	return r.results[len(r.results)-1], true
}

// waitSet waits until the last result is a set equal to want (entries as
// "addr w=N [backup]") and returns how long it took.
func (r *recorder) waitSet(t *testing.T, timeout time.Duration, want ...string) time.Duration {
	t.Helper()
	start := time.Now()
	lbtest.Until(t, timeout, func() (bool, string) {
		res, ok := r.last()
		switch {
		case !ok:
			return false, "no result yet"
		case res.err != nil:
			return false, fmt.Sprintf("last result is the error %v; want %v", res.err, want)
		}
		got := show(res.set)
		return slices.Equal(got, want), fmt.Sprintf("last set %v, want %v", got, want)
	})
	r.checkContract(t)
	return time.Since(start)
}

// waitErr waits for an error reported after mark whose text holds substr,
// and returns it and its mark: since(at) starts with it.
func (r *recorder) waitErr(t *testing.T, timeout time.Duration, mark int, substr string) (err error, at int) {
	t.Helper()
	lbtest.Until(t, timeout, func() (bool, string) {
		rs := r.since(mark)
		for i, res := range rs {
			if res.err != nil && strings.Contains(res.err.Error(), substr) {
				err, at = res.err, mark+i
				return true, ""
			}
		}
		return false, fmt.Sprintf("results since the mark: %v; want an error with %q", showResults(rs), substr)
	})
	r.checkContract(t)
	return err, at
}

// errorsOnly fails the test if a set was reported after mark.
func (r *recorder) errorsOnly(t *testing.T, mark int) {
	t.Helper()
	for _, res := range r.since(mark) {
		if res.err == nil {
			t.Fatalf("%s: a set %v was reported while the source was failing", r.src.Name(), show(res.set))
		}
	}
}

// noEmptySet fails the test if an empty set was reported after mark.
func (r *recorder) noEmptySet(t *testing.T, mark int) {
	t.Helper()
	for _, res := range r.since(mark) {
		if res.err == nil && len(res.set) == 0 {
			t.Fatalf("%s: an empty set was reported", r.src.Name())
		}
	}
}

func show(set []Entry) []string {
	out := make([]string, 0, len(set))
	for _, e := range set {
		s := fmt.Sprintf("%s w=%d", e.Addr, e.Weight)
		if e.Backup {
			s += " backup"
		}
		out = append(out, s)
	}
	return out
}

func showResults(rs []result) string {
	var b strings.Builder
	for _, res := range rs {
		if res.err != nil {
			fmt.Fprintf(&b, "[error %v] ", res.err)
		} else {
			fmt.Fprintf(&b, "%v ", show(res.set))
		}
	}
	return b.String()
}
