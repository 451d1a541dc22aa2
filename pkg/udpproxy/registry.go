package udpproxy

import "sync"

// Registry holds the open sessions of one backend, so that they can be
// ended together: a kill from the admin API, or the end of a removed
// backend's drain_timeout. The server keeps one per backend and hands it
// to every Proxy generation through Target.Sessions.
//
// A session joins once its backend socket is connected and leaves when it
// is accounted for. The list is intrusive (the links live in the session),
// so joining costs no allocation, and nothing is done per datagram. The
// zero value is an empty registry.
type Registry struct {
	mu   sync.Mutex
	head *session
	n    int
}

// add links s in, unless it has already left (finish ran first).
func (r *Registry) add(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.regLeft {
		return
	}
	s.reg, s.regNext = r, r.head
	if r.head != nil {
		r.head.regPrev = s
	}
	r.head = s
	r.n++
}

// remove unlinks s, once it is accounted for.
func (r *Registry) remove(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s.regLeft = true
	if s.reg != r {
		return // never linked
	}
	if s.regPrev != nil {
		s.regPrev.regNext = s.regNext
	} else {
		r.head = s.regNext
	}
	if s.regNext != nil {
		s.regNext.regPrev = s.regPrev
	}
	s.reg, s.regPrev, s.regNext = nil, nil, nil
	r.n--
}

// Len returns the number of sessions in the registry.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// Kill ends every session in the registry, why (EndKilled or
// EndDrainTimeout) being the reason the access log shows, and returns how
// many it ended (one already ending is not counted). The sessions' sockets
// close and they are accounted for shortly after; it does not wait.
func (r *Registry) Kill(why End) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for s := r.head; s != nil; s = s.regNext {
		if s.l.kill(s, why) {
			n++
		}
	}
	return n
}

// kill ends s from any goroutine, unless it has ended already. Lock
// order: Registry.mu, then l.mu.
func (l *Listener) kill(s *session, why End) bool {
	l.mu.Lock()
	dead := s.dead
	l.mu.Unlock()
	return !dead && l.retire(s, why)
}
