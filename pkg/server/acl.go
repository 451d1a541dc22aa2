package server

import (
	"net/netip"
	"sync"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/metrics"
	"go.uber.org/zap"
)

// Admission: who may open a connection (TCP) or a session (UDP) on a
// listener. Three gates, in this order, each counted under its own
// rejection reason:
//
//  1. the access list, allow/deny ("acl"): deny wins, an empty allow
//     admits everyone, an IPv4-mapped IPv6 address matches IPv4 rules;
//  2. concurrent connections per client IP, max_connections_per_client
//     ("client_limit");
//  3. new connections per second per client IP,
//     connection_rate_per_client with connection_burst_per_client: a token
//     bucket holding up to burst tokens, refilled at rate per second, one
//     token per connection ("rate_limit").
//
// The access list and the limits in force are those of the listener's
// configuration generation (listenerState). The per-client counters live on
// the listener socket (listener.clients), so a reload neither forgets who
// holds connections nor hands a flooding client a fresh bucket.
//
// The client table is bounded. A client has an entry only while it holds a
// connection or its bucket is refilling; an entry that is neither is as
// good as none and is forgotten (at release when no rate applies, else by
// a sweep at most once a second). When a flood of source addresses fills
// the table anyway, entries without connections are dropped (their buckets
// are forgotten early); if every entry holds a connection, new clients are
// refused ("client_limit") until some leave: lbctl fails closed rather than
// grow without bound.

// defaultMaxClients bounds a listener's client table: about 100 bytes an
// entry, so some 7 MB at most per listener with per-client limits.
const defaultMaxClients = 1 << 16

// Sweep periods, in nanotime units.
const (
	clientSweepEvery = int64(1e9)       // forget idle entries at most once a second
	clientEvictEvery = int64(100 * 1e6) // when full of busy clients, rescan at most every 100ms
)

// admits reports whether the listener's access list lets addr in.
func admits(lc *config.Listener, addr netip.Addr) bool {
	if config.Match(lc.Deny, addr) {
		return false
	}
	return len(lc.Allow) == 0 || config.Match(lc.Allow, addr)
}

// noRelease is the release of a client that no limit tracks.
func noRelease() {}

// admit decides whether client may open a new connection or session on l
// under the configuration generation st (l.state.Load() at accept time).
// When refused, the rejection is counted and reason is one of
// metrics.ReasonACL, ReasonClientLimit or ReasonRateLimit. When admitted,
// reason is 0 and release must be called when that connection or session
// ends (calls after the first do nothing).
//
// TCP calls it from the accept loop, or after the PROXY header
// (proxyproto.go); UDP once per new session, never per datagram (udp.go).
func (s *Server) admit(l *listener, st *listenerState, client netip.Addr) (release func(), reason metrics.Reason) {
	client = client.Unmap().WithZone("")
	if !admits(st.cfg, client) {
		reason = metrics.ReasonACL
	} else if release, reason = l.clients.admit(st.cfg, client); reason == 0 {
		return release, 0
	}
	st.rej.Inc(reason)
	if reason == metrics.ReasonClientLimit && l.clients.takeFullNotice() {
		s.log.Warn("client table full: new clients refused until some leave",
			zap.String("listener", st.name), zap.Int("clients", l.clients.capacity()))
	}
	return nil, reason
}

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

// admit applies lc's per-client limits to one new connection of client
// (already unmapped).
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
