package server

import (
	"net/netip"
	"sync"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/metrics"
)

// The per-client table of one listener socket: concurrent connections and
// the rate bucket of each client IP, for max_connections_per_client and
// connection_rate_per_client (checks 3 and 4 of admission.go). It lives on
// the listener (listener.clients), not on a configuration generation, so a
// reload neither forgets who holds connections nor hands a flooding client
// a fresh bucket.
//
// The table is bounded (defaultMaxClients). A client has an entry only
// while it holds a connection or its bucket is refilling; an entry that is
// neither is as good as none and is forgotten (at release when no rate
// applies, else by a sweep at most once a second). When a flood of source
// addresses fills the table anyway, entries without connections are
// dropped (their buckets are forgotten early); if every entry holds a
// connection, the table refuses the new client ("client_limit") rather than
// grow without bound. On a UDP listener the gate first has a session
// evicted to make room (admission.go), so a new client is refused only
// when that frees no entry.

// defaultMaxClients bounds a listener's client table: about 100 bytes an
// entry, so some 7 MB at most per listener with per-client limits.
const defaultMaxClients = 1 << 16

// Sweep periods, in nanotime units.
const (
	clientSweepEvery = int64(1e9)       // forget idle entries at most once a second
	clientEvictEvery = int64(100 * 1e6) // when full of busy clients, rescan at most every 100ms
)

// noRelease is the release of a client that no limit tracks.
func noRelease() {}

// clientTable holds the per-client state of one listener socket. The zero
// value is ready to use.
type clientTable struct {
	mu      sync.Mutex
	clients map[netip.Addr]clientEntry
	max     int          // capacity; 0 = defaultMaxClients
	clock   func() int64 // nanotime; tests replace it
	swept   int64        // last sweep of idle entries
	evicted int64        // last eviction scan when full
	full    bool         // the table refused a client since the last notice
	noticed bool         // the current full episode was logged
}

// clientEntry is one client IP's state.
type clientEntry struct {
	active int     // connections or sessions held
	tokens float64 // rate bucket level
	stamp  int64   // nanotime the bucket level was computed at
	rate   float64 // the rate and burst of the last admission, to tell when
	burst  float64 // the bucket is full again
}

// idle reports whether e is as good as no entry at time now.
func (e *clientEntry) idle(now int64) bool {
	return e.active == 0 && (e.rate <= 0 || e.level(now) >= e.burst)
}

func (e *clientEntry) level(now int64) float64 {
	return min(e.burst, e.tokens+float64(now-e.stamp)/1e9*e.rate)
}

// burstOf is a listener's bucket size: the burst, or else the rate, at
// least 1 so a rate below one per second still admits a connection.
func burstOf(lc *config.Listener) float64 {
	if lc.ConnectionBurstPerClient > 0 {
		return float64(lc.ConnectionBurstPerClient)
	}
	return max(1, lc.ConnectionRatePerClient)
}

// epoch anchors the monotonic clock of the client tables.
var epoch = time.Now()

func nanotime() int64 { return int64(time.Since(epoch)) }

func (t *clientTable) capacity() int {
	if t.max > 0 {
		return t.max
	}
	return defaultMaxClients
}

func (t *clientTable) now() int64 {
	if t.clock != nil {
		return t.clock()
	}
	return nanotime()
}

// admit applies lc's per-client limits to one new connection or session of
// client (already unmapped): ReasonClientLimit when the client holds
// max_connections_per_client or the table is full, ReasonRateLimit when its
// bucket is empty. The caller counts the refusal. An admitted client's
// release must be called when that connection ends (calls after the first
// do nothing); a client refused for its concurrent limit spends no token.
func (t *clientTable) admit(lc *config.Listener, client netip.Addr) (release func(), reason metrics.Reason) {
	maxConns, rate := lc.MaxConnectionsPerClient, lc.ConnectionRatePerClient
	if maxConns <= 0 && rate <= 0 {
		return noRelease, 0
	}
	burst := burstOf(lc)
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if t.clients == nil {
		t.clients = map[netip.Addr]clientEntry{}
	}
	if now-t.swept >= clientSweepEvery {
		t.sweepLocked(now, false)
	}
	e, ok := t.clients[client]
	if !ok {
		if len(t.clients) >= t.capacity() && !t.makeRoomLocked(now) {
			t.full = true
			return nil, metrics.ReasonClientLimit
		}
		e = clientEntry{tokens: burst, stamp: now}
	}
	if maxConns > 0 && e.active >= maxConns {
		return nil, metrics.ReasonClientLimit
	}
	e.rate, e.burst = rate, burst
	if rate > 0 {
		e.tokens, e.stamp = e.level(now), now
		if e.tokens < 1 {
			t.clients[client] = e
			return nil, metrics.ReasonRateLimit
		}
		e.tokens--
	}
	e.active++
	t.clients[client] = e
	var once sync.Once
	return func() { once.Do(func() { t.release(client) }) }, 0
}

// needsRoom reports whether admitting client (already unmapped) under lc
// would need a new entry in a table that is full: lc has per-client limits,
// client has no entry, and the table holds as many as it may.
func (t *clientTable) needsRoom(lc *config.Listener, client netip.Addr) bool {
	if lc.MaxConnectionsPerClient <= 0 && lc.ConnectionRatePerClient <= 0 {
		return false // no per-client state is kept
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	_, known := t.clients[client]
	return !known && len(t.clients) >= t.capacity()
}

func (t *clientTable) release(client netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.clients[client]
	if !ok || e.active == 0 {
		return
	}
	e.active--
	if e.idle(t.now()) {
		delete(t.clients, client)
		return
	}
	t.clients[client] = e
}

// sweepLocked forgets idle entries; with evict, every entry without a
// connection, its bucket with it.
func (t *clientTable) sweepLocked(now int64, evict bool) {
	t.swept = now
	for a, e := range t.clients {
		if e.idle(now) || evict && e.active == 0 {
			delete(t.clients, a)
		}
	}
	if len(t.clients) < t.capacity() {
		t.noticed = false // the next full episode is logged again
	}
}

// makeRoomLocked tries to free an entry in a full table. The scans are
// rate limited, so a table full of busy clients costs O(1) per refusal.
func (t *clientTable) makeRoomLocked(now int64) bool {
	if now-t.evicted < clientEvictEvery {
		return false
	}
	t.evicted = now
	t.sweepLocked(now, true)
	return len(t.clients) < t.capacity()
}

// takeFullNotice reports, once per full episode, that the table refused a
// client for lack of room.
func (t *clientTable) takeFullNotice() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.full || t.noticed {
		return false
	}
	t.full, t.noticed = false, true
	return true
}

// size is the number of clients tracked.
func (t *clientTable) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.clients)
}
