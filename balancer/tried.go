package balancer

// Tried is the set of backends already attempted for one client connection,
// so that a retry picks another one. The zero value is an empty set, ready to
// use; keep it on the caller's stack and pass a pointer to [Pool.Pick]. It
// does not allocate for up to 8 entries. A nil *Tried is an empty set.
//
// A Tried belongs to one connection and is not safe for concurrent use.
type Tried struct {
	n      int
	inline [8]*Backend
	more   []*Backend
}

// Add puts b in the set. Adding a backend twice keeps one entry.
func (t *Tried) Add(b *Backend) {
	if b == nil || t.Has(b) {
		return
	}
	if t.n < len(t.inline) {
		t.inline[t.n] = b
	} else {
		t.more = append(t.more, b)
	}
	t.n++
}

// Has reports whether b is in the set.
func (t *Tried) Has(b *Backend) bool {
	if t == nil || t.n == 0 {
		return false
	}
	for _, x := range t.inline[:min(t.n, len(t.inline))] {
		if x == b {
			return true
		}
	}
	for _, x := range t.more {
		if x == b {
			return true
		}
	}
	return false
}

// Len returns the number of backends in the set.
func (t *Tried) Len() int {
	if t == nil {
		return 0
	}
	return t.n
}

// Reset empties the set, keeping any storage beyond the first 8 entries.
func (t *Tried) Reset() {
	clear(t.inline[:])
	clear(t.more)
	t.more = t.more[:0]
	t.n = 0
}
