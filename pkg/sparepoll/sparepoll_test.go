//go:build linux

package sparepoll

import (
	"os"
	"testing"
	"time"
)

// startedBy returns how many spare pollers l started in f.
func startedBy(l *Loop, f func()) int64 {
	before := l.Started()
	f()
	return l.Started() - before
}

// TestLoop: a busy loop starts a spare poller when a parked loop's
// descriptor is ready, once it has been busy its After, and again every
// After while it stays busy and the parked loop stays ready; none when the
// parked loop's descriptor is not ready, when no loop is parked, when the
// other loop runs or has closed, in a turn shorter than After, or when
// turned off.
func TestLoop(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	idle, idleW, err := os.Pipe() // never written: never ready
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	defer idleW.Close()

	// turn runs a turn of a: one batch every step of a clock of the
	// test's, from 1 s.
	var a, b Loop
	step := After
	turn := func(batches int) int64 {
		return startedBy(&a, func() {
			now := int64(time.Second)
			a.Resume(now)
			for range batches {
				now += step
				a.Busy(now)
			}
			a.Park(999) // not looked at by a itself
		})
	}
	if n := turn(3); n != 0 {
		t.Fatalf("no other loop: %d spare pollers, want 0", n)
	}
	b.Park(int(idle.Fd()))
	if n := turn(3); n != 0 {
		t.Fatalf("the parked loop is not ready: %d spare pollers, want 0", n)
	}
	b.Park(int(r.Fd()))
	w.Write([]byte("x"))
	if n := turn(1); n != 1 {
		t.Fatalf("the parked loop is ready: %d spare pollers, want 1", n)
	}
	if n := turn(3); n != 3 {
		t.Fatalf("three looks in a turn, the parked loop ready at each: %d spare pollers, want 3", n)
	}
	if n := turn(0); n != 0 {
		t.Fatalf("a turn with no batch: %d spare pollers, want 0", n)
	}
	step = After - 1
	if n := turn(1); n != 0 {
		t.Fatalf("a turn shorter than After: %d spare pollers, want 0", n)
	}
	step = After
	a.SetAfter(-1) // as LBCTL_SPARE_POLLER=off
	if n := turn(3); n != 0 {
		t.Fatalf("turned off: %d spare pollers, want 0", n)
	}
	a.SetAfter(After)
	// A loop entered again without having parked (a UDP loop after 64
	// passes) goes on with its turn: its clock does not start again.
	a.Resume(0) // back from the park above: looks at After
	if n := startedBy(&a, func() { a.Resume(After - 1); a.Busy(After) }); n != 1 {
		t.Fatalf("entered again within a turn: %d spare pollers at the turn's After, want 1 (its clock started again?)", n)
	}
	a.Park(999)
	b.Resume(0)
	if n := turn(3); n != 0 {
		t.Fatalf("the other loop runs: %d spare pollers, want 0", n)
	}
	// Parked on a descriptor since closed: POLLNVAL is not ready.
	dead, deadW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	deadFd := int(dead.Fd())
	dead.Close()
	deadW.Close()
	b.Park(deadFd)
	if n := turn(3); n != 0 {
		t.Fatalf("the other loop parked on a closed descriptor: %d spare pollers, want 0", n)
	}
	b.Resume(0)
	b.Park(int(r.Fd()))
	b.Close()
	if n := turn(3); n != 0 {
		t.Fatalf("the other loop closed: %d spare pollers, want 0", n)
	}
	a.Close()
	for i := range high.Load() {
		if used[i] || waitOn[i].Load() != -1 {
			t.Fatalf("slot %d still used (%v) or parked (%d) after both closed", i, used[i], waitOn[i].Load())
		}
	}
}

// TestDefaultAfter: a loop that was never told otherwise waits After.
func TestDefaultAfter(t *testing.T) {
	var l Loop
	l.Resume(1)
	if l.after != After && !off {
		t.Fatalf("after %v, want %v", l.after, After)
	}
}
