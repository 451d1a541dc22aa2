package main

// live.go: the live backend set. A third listener, "live", sends to pool
// "live", which has no static backend: its backends come from a file
// source that the soak rewrites every -file-every (replaced by a rename:
// the listed backends rotate, at least one backend that is up stays
// listed from one version to the next, and some versions list the same
// set in another order), and from the admin API, through which one more
// backend is added and removed every -api-every. Live backends are killed
// and restarted like the others.
//
// What counts as a failure lbctl could have served:
//   - a connection served by a backend that had been unlisted for
//     liveMargin already when it started, and stayed so until the
//     backend's first byte came (lbctl missed the removal);
//   - a connection that got its backend's tag and was then cut while that
//     backend was listed (by the file or the API) and alive all along;
//   - a connection cut while its backend was removed, before drain_timeout
//     had passed since the removal;
//   - a connection that got no backend at all (refused, closed, timed out)
//     while some backend had been listed and up for liveMargin before it
//     started and stayed so until it ended, and no live backend was killed
//     meanwhile.
//
// Excused, and counted apart: cut by a killed backend (its generation was
// killed); reset at drain_timeout (its backend was removed at least
// drain_timeout before the cut); refused while no backend had been listed
// and up for liveMargin.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	liveIDBase = 100 // live backends' tag ids: liveIDBase + index
	// liveMargin: how long a backend must have been listed and up before a
	// connection for lbctl to be expected to use it: a file change applies
	// within 2 s, a new or restarted backend passes its first check within
	// an interval (500 ms).
	liveMargin = 3 * time.Second
)

// history is a boolean's changes over time (listed, or up).
type history struct {
	mu      sync.Mutex
	initial bool
	changes []change
}

type change struct {
	at time.Time
	on bool
}

func newHistory(on bool) *history { return &history{initial: on} }

func (h *history) set(on bool, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lastLocked() != on {
		h.changes = append(h.changes, change{at, on})
	}
}

func (h *history) lastLocked() bool {
	if n := len(h.changes); n > 0 {
		return h.changes[n-1].on
	}
	return h.initial
}

func (h *history) now() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lastLocked()
}

// at is the state at t.
func (h *history) atLocked(t time.Time) bool {
	on := h.initial
	for _, c := range h.changes {
		if c.at.After(t) {
			break
		}
		on = c.on
	}
	return on
}

// steady reports whether the state was on from from to to.
func (h *history) steady(from, to time.Time) bool { return h.steadyAs(true, from, to) }

// steadyAs reports whether the state was on (or off) from from to to.
func (h *history) steadyAs(on bool, from, to time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.atLocked(from) != on {
		return false
	}
	for _, c := range h.changes {
		if c.at.After(from) && !c.at.After(to) && c.on != on {
			return false
		}
	}
	return true
}

// offSince returns the earliest moment at which an off period overlapping
// [from, to] began (from itself when it was off then), and whether there
// was one.
func (h *history) offSince(from, to time.Time) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.atLocked(from) {
		start := time.Time{}
		for _, c := range h.changes {
			if c.at.After(from) {
				break
			}
			if !c.on {
				start = c.at
			}
		}
		if start.IsZero() { // off from the beginning
			start = from
		}
		return start, true
	}
	for _, c := range h.changes {
		if c.at.After(from) && !c.at.After(to) && !c.on {
			return c.at, true
		}
	}
	return time.Time{}, false
}

// liveBackend is a TCP echo backend of pool "live" with its listing and
// liveness histories.
type liveBackend struct {
	*tcpBackend
	listed *history // in the file, or added through the API
	up     *history // not killed
	api    bool     // added and removed through the API, never in the file
	weight int      // as last listed
}

// liveOutcome counts the live pool's connections.
type liveOutcome struct {
	ok, killed, drained, refusedNone, failed atomic.Int64
	outlived                                 atomic.Int64 // verified, though their backend was removed meanwhile
	cutListed, cutDraining, refused          atomic.Int64 // the failures, by kind
	unlisted                                 atomic.Int64 // served by a backend unlisted for liveMargin: lbctl missed a removal
	bytes                                    atomic.Int64
}

// liveState is the soak's side of the live pool: what it has listed.
type liveState struct {
	backends    []*liveBackend
	file        string // the file source's path
	drain       time.Duration
	fileWrites  atomic.Int64
	reorders    atomic.Int64 // writes of the same set in another order
	apiAdds     atomic.Int64
	apiRemoves  atomic.Int64
	apiFailures atomic.Int64
	long, short liveOutcome
}

func (s *soak) liveByTag(t tag) *liveBackend {
	i := int(t.id) - liveIDBase
	if i < 0 || i >= len(s.live.backends) {
		return nil
	}
	return s.live.backends[i]
}

type fileEntry struct {
	Address string `json:"address"`
	Weight  int    `json:"weight"`
	Backup  bool   `json:"backup"`
}

// writeFile lists bs in the file source, replacing it by a rename, and
// records the listing.
func (ls *liveState) writeFile(bs []*liveBackend) error {
	entries := make([]fileEntry, 0, len(bs))
	for _, b := range bs {
		entries = append(entries, fileEntry{Address: b.addr, Weight: b.weight})
	}
	data, err := json.MarshalIndent(entries, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(ls.file), ".live.json.tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	// Listed or unlisted from the rename on: recorded just before it, as
	// lbctl may see the new version at once.
	now := time.Now()
	for _, b := range ls.backends {
		if !b.api {
			b.listed.set(slices.Contains(bs, b), now)
		}
	}
	if err := os.Rename(tmp, ls.file); err != nil {
		return err
	}
	ls.fileWrites.Add(1)
	return nil
}

// rotate writes the next version of the file: each listed backend stays
// with probability 2/3, each other one joins with probability 1/3, and at
// least one backend that is up and listed now stays; one version in four
// lists the same set in another order.
func (s *soak) rotate(rng *rand.Rand) error {
	ls := &s.live
	var current, next []*liveBackend
	for _, b := range ls.backends {
		if !b.api && b.listed.now() {
			current = append(current, b)
		}
	}
	if rng.IntN(4) == 0 && len(current) > 1 {
		next = slices.Clone(current)
		for slices.Equal(next, current) {
			rng.Shuffle(len(next), func(i, j int) { next[i], next[j] = next[j], next[i] })
		}
		ls.reorders.Add(1)
		return ls.writeFile(next)
	}
	var anchors []*liveBackend
	for _, b := range current {
		if !b.isDown() {
			anchors = append(anchors, b)
		}
	}
	var anchor *liveBackend
	if len(anchors) > 0 {
		anchor = anchors[rng.IntN(len(anchors))]
	}
	for _, b := range ls.backends {
		if b.api {
			continue
		}
		stay := b.listed.now() && rng.IntN(3) != 0
		join := !b.listed.now() && rng.IntN(3) == 0
		if b == anchor || stay || join {
			if rng.IntN(5) == 0 {
				b.weight = 1 + rng.IntN(3)
			}
			next = append(next, b)
		}
	}
	if anchor == nil && len(next) == 0 { // nothing up was listed: list an up one
		for _, b := range ls.backends {
			if !b.api && !b.isDown() {
				next = append(next, b)
				break
			}
		}
	}
	rng.Shuffle(len(next), func(i, j int) { next[i], next[j] = next[j], next[i] })
	return ls.writeFile(next)
}

// apiToggle adds the API backend when it is out of the pool, removes it
// when it is in.
func (s *soak) apiToggle(rng *rand.Rand) {
	ls := &s.live
	for _, b := range ls.backends {
		if !b.api {
			continue
		}
		base := "http://" + s.lb.admin + "/api/v1/pools/live/backends"
		c := http.Client{Timeout: 5 * time.Second}
		if b.listed.now() {
			req, _ := http.NewRequest(http.MethodDelete, base+"/"+b.addr, nil)
			req.Header.Set("Content-Type", "application/json") // else 403
			req.Close = true                                   // no idle connection left in lbctl
			resp, err := c.Do(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %s", resp.Status)
				}
			}
			if err != nil {
				ls.apiFailures.Add(1)
				s.led.note("api remove %s: %v", b.addr, err)
				continue
			}
			// Unlisted from the answer on: lbctl removed it by then, and
			// a busy lbctl may take a while to get to the request.
			b.listed.set(false, time.Now())
			ls.apiRemoves.Add(1)
			continue
		}
		b.weight = 1 + rng.IntN(3)
		body := fmt.Sprintf(`{"address": %q, "weight": %d}`, b.addr, b.weight)
		req, _ := http.NewRequest(http.MethodPost, base, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Close = true
		// Listed from the request on: lbctl may use it before it answers.
		b.listed.set(true, time.Now())
		resp, err := c.Do(req)
		if err == nil {
			msg, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				err = fmt.Errorf("status %s: %s", resp.Status, bytes.TrimSpace(msg))
			}
		}
		if err != nil {
			b.listed.set(false, time.Now())
			ls.apiFailures.Add(1)
			s.led.note("api add %s: %v", b.addr, err)
			continue
		}
		ls.apiAdds.Add(1)
	}
}

// restoreLive lists every file backend and takes the API backend out, as
// at the start, so that idle is compared with idle.
func (s *soak) restoreLive() error {
	var all []*liveBackend
	for _, b := range s.live.backends {
		if !b.api {
			all = append(all, b)
		} else if b.listed.now() {
			s.apiToggle(rand.New(rand.NewPCG(0, 0)))
		}
	}
	return s.live.writeFile(all)
}

// anyServable reports whether some live backend was listed and up from
// liveMargin before start until end.
func (s *soak) anyServable(start, end time.Time) bool {
	for _, b := range s.live.backends {
		if b.listed.steady(start.Add(-liveMargin), end) && b.up.steady(start.Add(-liveMargin), end) {
			return true
		}
	}
	return false
}

// anyKilled reports whether a live backend was down at some moment
// between from and to.
func (s *soak) anyKilled(from, to time.Time) bool {
	for _, b := range s.live.backends {
		if _, down := b.up.offSince(from, to); down {
			return true
		}
	}
	return false
}

// liveWorker runs streams through the live listener until ctx is done.
func (s *soak) liveWorker(ctx context.Context, o *liveOutcome, kind string, lo, hi int64, timeout time.Duration, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 4))
	for ctx.Err() == nil {
		size := lo + rng.Int64N(hi-lo+1)
		start := time.Now()
		r := stream(s.liveAddr, size, rng.Uint64(), timeout)
		s.classifyLive(o, kind, size, start, time.Now(), r)
	}
}

func (s *soak) classifyLive(o *liveOutcome, kind string, size int64, start, end time.Time, r streamResult) {
	fail := func(n *atomic.Int64, format string, args ...any) {
		n.Add(1)
		o.failed.Add(1)
		s.led.note("live %s stream of %d bytes: "+format, append([]any{kind, size}, args...)...)
	}
	if r.corrupt != "" {
		o.failed.Add(1)
		s.led.note("live %s stream CORRUPT via %v: %s", kind, r.tag, r.corrupt)
		return
	}
	if b := s.liveByTag(r.tag); r.gotTag && b != nil && b.listed.steadyAs(false, start.Add(-liveMargin), r.tagAt) {
		// A removed backend takes no new connection once the removal
		// applies (within 2 s for the file, at once for the API). lbctl
		// chose the backend between the dial and the tag's arrival (it
		// may accept late on a busy machine): unlisted all that time.
		fail(&o.unlisted, "served by backend %d, unlisted since %v before the connection at least", r.tag.id, liveMargin)
		return
	}
	if r.err == nil {
		o.ok.Add(1)
		o.bytes.Add(2 * size)
		if b := s.liveByTag(r.tag); b != nil {
			if _, removed := b.listed.offSince(start, end); removed {
				o.outlived.Add(1)
			}
		}
		return
	}
	if !r.gotTag {
		switch {
		case s.anyKilled(start, end):
			o.killed.Add(1)
		case !s.anyServable(start, end):
			o.refusedNone.Add(1)
		default:
			fail(&o.refused, "no backend while one was listed and up: %v", r.err)
		}
		return
	}
	b := s.liveByTag(r.tag)
	switch {
	case b == nil:
		fail(&o.cutListed, "unknown tag %v: %v", r.tag, r.err)
	case b.killed(r.tag.gen):
		o.killed.Add(1)
	default:
		off, removed := b.listed.offSince(start, end)
		switch {
		case !removed:
			fail(&o.cutListed, "cut while backend %d was listed and up (%.1fs in): %v",
				r.tag.id, end.Sub(start).Seconds(), r.err)
		case end.Sub(off) >= s.live.drain-2*time.Second:
			o.drained.Add(1)
		default:
			fail(&o.cutDraining, "cut %.1fs after backend %d was removed (drain_timeout %v): %v",
				end.Sub(off).Seconds(), r.tag.id, s.live.drain, r.err)
		}
	}
}

// discoveryCount is lbctl's count of the live pool's file refreshes.
type discoveryCount struct {
	success, failure float64
	err              error
}

func (s *soak) discoveryRefreshes() discoveryCount {
	text, err := s.lb.metrics()
	if err != nil {
		return discoveryCount{err: err}
	}
	return discoveryCount{
		success: sumMetric(text, "lbctl_discovery_refreshes_total", `pool="live",result="success"`),
		failure: sumMetric(text, "lbctl_discovery_refreshes_total", `pool="live",result="failure"`),
	}
}

// reportLive prints the live pool's table and says whether it passed.
func (s *soak) reportLive(refreshes discoveryCount) bool {
	ls := &s.live
	pass := true
	fmt.Println()
	fmt.Println("| live pool | verified | of which their backend was removed meanwhile | cut by a killed backend | reset at drain_timeout | refused, nothing listed and up | failed (cut while listed and up / cut while draining / refused / served by a removed backend) |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, w := range []struct {
		name string
		o    *liveOutcome
	}{{"long TCP transfers (4-32 MiB)", &ls.long}, {"short TCP connections", &ls.short}} {
		o := w.o
		fmt.Printf("| %s | %d (%s) | %d | %d | %d | %d | %d (%d / %d / %d / %d) |\n", w.name, o.ok.Load(), human(o.bytes.Load()),
			o.outlived.Load(), o.killed.Load(), o.drained.Load(), o.refusedNone.Load(), o.failed.Load(),
			o.cutListed.Load(), o.cutDraining.Load(), o.refused.Load(), o.unlisted.Load())
		if o.failed.Load() != 0 {
			pass = false
		}
		if o.ok.Load() == 0 {
			fmt.Printf("FAIL: no live %s completed\n", w.name)
			pass = false
		}
	}
	fmt.Printf("\nlive pool: file rewritten %d times (%d the same set reordered), lbctl counted %.0f refreshes ok, %.0f failed; API: %d adds, %d removes, %d errors\n",
		ls.fileWrites.Load(), ls.reorders.Load(), refreshes.success, refreshes.failure,
		ls.apiAdds.Load(), ls.apiRemoves.Load(), ls.apiFailures.Load())
	switch {
	case refreshes.err != nil:
		fmt.Printf("FAIL: discovery metrics: %v\n", refreshes.err)
		pass = false
	case refreshes.failure != 0:
		fmt.Printf("FAIL: %.0f failed refreshes of a file that was always valid\n", refreshes.failure)
		pass = false
	case refreshes.success == 0 && ls.fileWrites.Load() > 1:
		fmt.Println("FAIL: the file changed and lbctl counted no refresh")
		pass = false
	}
	if ls.apiFailures.Load() != 0 {
		pass = false
	}
	return pass
}
