package balancer

import (
	"fmt"
	"testing"
)

func TestTried(t *testing.T) {
	var nilTried *Tried
	if nilTried.Has(NewBackend("a:1")) || nilTried.Len() != 0 {
		t.Error("a nil *Tried must be an empty set")
	}

	bs := make([]*Backend, 20)
	for i := range bs {
		bs[i] = NewBackend(fmt.Sprintf("b%d:1", i))
	}
	var tr Tried
	for i, b := range bs {
		if tr.Has(b) {
			t.Fatalf("Has(%s) before Add", b)
		}
		tr.Add(b)
		tr.Add(b) // duplicates keep one entry
		if !tr.Has(b) || tr.Len() != i+1 {
			t.Fatalf("after Add(%s): Has = %v, Len = %d; want true, %d", b, tr.Has(b), tr.Len(), i+1)
		}
	}
	tr.Add(nil)
	if tr.Len() != len(bs) || tr.Has(nil) {
		t.Errorf("Add(nil) changed the set: Len = %d", tr.Len())
	}
	for _, b := range bs {
		if !tr.Has(b) {
			t.Errorf("Has(%s) = false after adding all", b)
		}
	}
	tr.Reset()
	if tr.Len() != 0 || tr.Has(bs[0]) || tr.Has(bs[15]) {
		t.Errorf("after Reset: Len = %d", tr.Len())
	}
}

func TestTriedDoesNotAllocateUpToEight(t *testing.T) {
	bs := backendsOf(members(1, 1, 1, 1, 1, 1, 1, 1, 1))
	allocs := testing.AllocsPerRun(100, func() {
		var tr Tried
		for _, b := range bs[:8] {
			tr.Add(b)
		}
		if !tr.Has(bs[7]) || tr.Has(bs[8]) {
			panic("wrong set")
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocs per run, want 0", allocs)
	}
}
