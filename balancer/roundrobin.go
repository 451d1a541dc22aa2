package balancer

import "sync"

// roundRobin is nginx's smooth weighted round-robin. On each pick, every
// eligible untried candidate's current weight grows by its weight; the
// candidate with the largest current weight wins and loses the sum of the
// weights. Over any run of picks with stable weights each candidate gets its
// exact share, spread out: weights 5,1,1 give a a b a c a a.
//
// Ineligible and tried candidates sit the round out with their current weight
// unchanged. A short critical section under a mutex is cheaper than any
// lock-free scheme for this read-modify-write of n values (see BenchmarkPick).
type roundRobin struct {
	cands   []candidate
	mu      sync.Mutex
	current []int64 // guarded by mu; current[i] belongs to cands[i]
}

func newRoundRobin(candidates []candidate) *roundRobin {
	return &roundRobin{
		cands:   candidates,
		current: make([]int64, len(candidates)),
	}
}

func (r *roundRobin) pick(tried *Tried) *Backend {
	r.mu.Lock()
	defer r.mu.Unlock()
	best := -1
	var total int64
	for i, c := range r.cands {
		w := int64(c.pickWeight())
		if w == 0 || tried.Has(c.b) {
			continue
		}
		r.current[i] += w
		total += w
		if best < 0 || r.current[i] > r.current[best] {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	r.current[best] -= total
	return r.cands[best].b
}
