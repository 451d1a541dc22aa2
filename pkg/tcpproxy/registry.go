package tcpproxy

import "sync"

// Registry holds the established connections of one backend, so that they
// can be ended together: a kill from the admin API, or the end of a
// removed backend's drain_timeout. The server keeps one per backend and
// hands it to every Proxy generation through Target.Conns.
//
// A connection joins when its backend connection is made and leaves when
// it ends. The list is intrusive (the links live in the connection), so
// joining costs no allocation, and nothing is done per read or write. The
// zero value is an empty registry.
type Registry struct {
	mu   sync.Mutex
	head *conn
	n    int
}

// add links c in. c is not running yet.
func (r *Registry) add(c *conn) {
	r.mu.Lock()
	c.reg, c.next = r, r.head
	if r.head != nil {
		r.head.prev = c
	}
	r.head = c
	r.n++
	r.mu.Unlock()
}

// remove unlinks c, once it has ended.
func (r *Registry) remove(c *conn) {
	r.mu.Lock()
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		r.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	}
	c.prev, c.next = nil, nil
	r.n--
	r.mu.Unlock()
}

// Len returns the number of connections in the registry.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// Kill ends every connection in the registry with a reset on both sides,
// why (EndKilled or EndDrainTimeout) being the reason the access log
// shows, and returns how many it ended (a connection already ending for
// another reason is not counted). It does not wait for them to finish.
func (r *Registry) Kill(why End) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for c := r.head; c != nil; c = c.next {
		if c.end(why) {
			n++
		}
	}
	return n
}
