// Package udpproxy load-balances UDP datagrams in sessions: the session
// table of one listener socket, the per-session backend sockets, batched
// reads and writes, and session expiry.
//
// A session is one client address and port, pinned to one backend for its
// life. The first datagram from a client opens it: the pool picks a backend
// (ip-hash keeps a client's IP on one backend across sessions) and the
// session dials a connected UDP socket of its own to it, so the backend sees
// lbctl's address and an ICMP port unreachable surfaces as ECONNREFUSED.
// Replies are sent back to the client through the listener socket, so they
// come from the address and port the client sent to (on a wildcard bind the
// destination address of the client's datagram is used as the reply's
// source address, on Linux).
//
// A session ends when
//   - no datagram went either way for IdleTimeout;
//   - its backend has not replied once within UnrepliedTimeout of its
//     start, whatever IdleTimeout says: a datagram from a spoofed source
//     address holds a socket that long at most;
//   - Responses is not 0 and the backend has sent Responses replies per
//     datagram the client sent in the session (nginx's proxy_responses: with
//     1, a DNS query and its answer make a session, and a client that sends
//     two queries from one port before the first answer gets both answers);
//   - the backend socket fails to read (ICMP port unreachable): this counts
//     as a passive health failure, and the client's next datagram opens a
//     session on a backend picked afresh;
//   - it is evicted to make room in a full table of clients (below);
//   - its backend's sessions are killed, or its backend was removed from
//     the pool and the drain_timeout passed (see [Registry]);
//   - the listener socket is closed (a drain's deadline, or the caller
//     needs the address back): replies could no longer leave from its
//     address.
//
// Limits. A datagram that would open a session is dropped and counted as
// rejected (reason max_connections) when the sessions of all listeners hold
// their share of the process's descriptors: every session holds one socket,
// and sessions leave DescriptorReserve of RLIMIT_NOFILE to TCP accepts, the
// admin API and health checks (fdbudget.go), so a flood from many source
// addresses cannot starve them. Open sessions keep working; the refusals are
// logged once per episode. Past that check Listener.Admit decides
// (pkg/server: max_connections, access lists, per-client limits); when its
// table of clients is full it may evict one session to make room for a new
// client: of up to 16 open sessions sampled at random, one whose backend has
// never replied if there is one, else the one quiet the longest. A flood of
// new source addresses therefore churns through the sessions nobody answers
// instead of locking new clients out until sessions expire.
//
// Draining. After Listener.Drain, datagrams that would open a session are
// dropped (not counted); open sessions carry on both ways, replies leaving
// through the listener socket, until they end by themselves; the caller
// closes the socket once they have, or at its deadline.
//
// Handover (lbctl upgrade). Listener.Detach takes the open sessions out of
// a Listener, each with a duplicate of its backend socket and its state,
// and Listener.Adopt serves them in another Listener on the same socket (a
// duplicate, in the new process), on the backends they had; Hold and
// Release keep a Listener from reading the socket meanwhile, so that every
// datagram either way is read by the session's owner alone and none is
// lost. handover.go explains the steps.
//
// Typical use, one Listener per bound socket, and one Proxy per listener
// configuration generation:
//
//	p, err := udpproxy.New(udpproxy.Config{Listener: "dns", Pool: pool, ...})
//	...
//	var cur atomic.Pointer[udpproxy.Proxy]
//	cur.Store(p)
//	l := &udpproxy.Listener{Conn: conn, Proxy: cur.Load}
//	go l.Serve()      // returns once conn is closed and every session ended
//	cur.Store(p2)     // a reload: new sessions use p2, open ones keep p
//	<-l.Drain()       // shutdown: no new sessions; wait for the open ones
//	conn.Close()
//
// Cost per datagram. On Linux (engine_linux.go) a listener has one
// goroutine whatever its number of sessions, an event loop over one epoll
// set that holds the listener socket and every session's backend socket: it
// takes client datagrams in batches with recvmmsg(2) and writes each
// straight into its session's backend socket, and sends the replies of
// every ready session in one sendmmsg(2). A busy listener pays one
// goroutine wake-up per batch for both directions, no allocation per
// datagram, and a quiet session costs one descriptor and a few hundred
// bytes (no goroutine, no buffer). Expiry needs no timer per datagram: each
// side stores the time of its last datagram in an atomic, and a sweep every
// idle_timeout/8 (or unreplied_timeout/8, at most every second) ends the
// sessions that have been quiet or unanswered long enough.
// Other systems (engine_other.go) use a goroutine per session with a pooled
// buffer and a read deadline.
//
// What it does not do: it does not bind sockets, resolve names, run health
// checks or read configuration files; pkg/server does, and swaps Proxy
// generations on reload.
package udpproxy

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/metrics"
	"go.uber.org/zap"
)

// MaxDatagram is the largest UDP payload (IPv4: 65,535 - 8 - 20 = 65,507;
// IPv6 without jumbograms: 65,527). Buffers are this large, so no datagram
// is ever truncated.
const MaxDatagram = 65535

// Target is how to reach one backend of the pool, and its metric handles.
type Target struct {
	Addr    string       // resolved "ip:port"
	Metrics *metrics.UDP // nil records nothing
	// Sessions, when not nil, holds the backend's open sessions (shared by
	// every Proxy generation), so they can be killed.
	Sessions *Registry
}

// target is a Target with its address parsed once.
type target struct {
	*Target
	udpAddr *net.UDPAddr
}

// PassiveObserver learns of every backend that refused a session's
// datagrams (ICMP port unreachable), and the socket error, for passive
// health checks.
type PassiveObserver interface {
	ConnectFailed(b *balancer.Backend, err error)
}

// Config is what a Proxy needs. Listener, Pool, Targets and Rejections are
// required.
type Config struct {
	Listener string
	PoolName string
	Pool     *balancer.Pool
	Targets  map[*balancer.Backend]*Target // one for every backend of Pool

	// IdleTimeout ends a session with no datagram either way for this long;
	// 0 = never (sessions then end only by Responses or errors).
	IdleTimeout time.Duration
	// UnrepliedTimeout ends a session whose backend has not replied once
	// within this long of its start, whatever IdleTimeout says; 0 = never.
	UnrepliedTimeout time.Duration
	// Responses ends a session once the backend has sent this many replies
	// per client datagram of the session; 0 = until idle.
	Responses int

	// Header, when set, returns the bytes put in front of every datagram
	// sent to the backend (a PROXY protocol v2 header). It is called once
	// per session; byte metrics count payload only.
	Header func(client, local netip.AddrPort) []byte

	Rejections *metrics.Rejections
	Passive    PassiveObserver // optional
	Log        *zap.Logger     // errors and debug; nil = none
	Access     *zap.Logger     // one line per finished session; nil = off
	// Durations observes the life of every session when it ends; nil
	// records nothing.
	Durations *metrics.Durations
}

// Proxy is one listener generation's forwarding configuration. It is
// immutable and shared by every session it opened.
type Proxy struct {
	cfg     Config
	targets map[*balancer.Backend]*target
}

// New returns a Proxy for cfg. It fails when a target address is not a
// literal IP and port.
func New(cfg Config) (*Proxy, error) {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Pool == nil || cfg.Rejections == nil {
		return nil, fmt.Errorf("udpproxy %s: Pool and Rejections are required", cfg.Listener)
	}
	p := &Proxy{cfg: cfg, targets: make(map[*balancer.Backend]*target, len(cfg.Targets))}
	for _, b := range cfg.Pool.Backends() {
		t := cfg.Targets[b]
		if t == nil {
			return nil, fmt.Errorf("udpproxy %s: no target for backend %s", cfg.Listener, b.Address())
		}
		ap, err := netip.ParseAddrPort(t.Addr)
		if err != nil {
			return nil, fmt.Errorf("udpproxy %s: backend %s: %w", cfg.Listener, b.Address(), err)
		}
		p.targets[b] = &target{Target: t, udpAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))}
	}
	return p, nil
}

// End says how a session ended: the access log's "end" field.
type End string

const (
	EndIdle         End = "idle_timeout"      // no datagram either way for IdleTimeout
	EndUnreplied    End = "unreplied_timeout" // no reply within UnrepliedTimeout of the start
	EndResponses    End = "responses"         // the expected replies were sent back
	EndBackendError End = "backend_error"     // the backend socket failed (ICMP port unreachable)
	EndEvicted      End = "evicted"           // ended to make room for a new client (Listener.Admit)
	EndShutdown     End = "shutdown"          // the listener socket was closed
	EndKilled       End = "killed"            // ended by Registry.Kill (lbctl backend kill)
	EndDrainTimeout End = "drain_timeout"     // its backend was removed from the pool and its drain_timeout passed
)

func (p *Proxy) logAccess(s *session, end End, d time.Duration) {
	if p.cfg.Access == nil {
		return
	}
	p.cfg.Access.Info("session",
		zap.String("listener", p.cfg.Listener),
		zap.String("protocol", "udp"),
		zap.Stringer("client", s.clientLog()),
		zap.String("backend", s.b.Address()),
		zap.Int64("bytes_in", s.bytesIn.Load()),
		zap.Int64("bytes_out", s.bytesOut),
		zap.Int64("datagrams_in", s.dgIn.Load()),
		zap.Int64("datagrams_out", s.dgOut),
		zap.Duration("duration", d),
		zap.String("end", string(end)),
		zap.Int("attempts", s.attempts),
	)
}
