// Package tcpproxy runs one proxied TCP connection's life: pick a backend,
// dial it (failing over to others), move bytes both ways, honour half-close,
// enforce the idle and half-close timeouts, and close both sides.
//
// A Proxy is immutable and shared by every connection of one listener
// generation; a config reload builds a new Proxy while connections served by
// the old one run to completion.
//
//	p := tcpproxy.New(tcpproxy.Config{Listener: "web", Pool: pool, ...})
//	for {
//		c, err := ln.AcceptTCP()
//		...
//		p.Start(ctx, c, c.RemoteAddr().(*net.TCPAddr).AddrPort(), func(e tcpproxy.End) { ... })
//	}
//
// Start owns the client connection from the call on and closes it. It does
// not accept connections, apply access lists or count listener limits: that
// is the listener's job (pkg/server).
//
// On Linux an established connection first joins an event loop
// (engine_linux.go): one per two Ps, each an epoll set of many connections'
// sockets, moving a small message with one read and one write and holding
// no goroutine for an idle connection. A connection whose reads fill the
// loop's buffer (bulk) moves to a goroutine per direction, which splices
// between the two *net.TCPConn directly (copy_linux.go); so does one being
// detached for an upgrade. Elsewhere every connection runs on the
// goroutine path.
//
// # How a connection ends
//
// Every way out goes through one function (conn.end), which records the
// first reason (an [End]) and closes both sockets, either with FIN or with a
// reset (RST):
//
//   - both sides finished sending (EndDone): FIN, the stream is complete;
//   - a side failed (EndClientError, EndBackendError), or lbctl could not
//     go on with the connection for want of descriptors (EndLocalResource):
//     the side still open gets a reset, so that it cannot mistake a
//     truncated stream for a complete one;
//   - the operator kills the backend's connections, a backend removed
//     from the pool reaches its drain_timeout, or the shutdown drain time
//     (shutdown_timeout) is over (EndKilled, EndDrainTimeout, EndShutdown;
//     see [Registry]): a reset on both sides, even when nothing is pending
//     at that instant: neither peer finished, and a FIN would make a
//     stream cut between two messages look complete;
//   - lbctl ends it for being quiet (idle_timeout, half_close_timeout): a
//     reset on both sides when any byte is still unsent, FIN
//     otherwise. Unsent means: a direction is in the middle of moving bytes
//     (in lbctl's buffer or pipe), or a socket still holds bytes, received
//     and not read by lbctl (SIOCINQ), or written by lbctl and not yet
//     acknowledged by the peer (SIOCOUTQ). A connection with nothing pending
//     anywhere ends with FIN, as a quiet one always did;
//   - it moves to another process (EndMoved, lbctl upgrade; detach.go):
//     neither FIN nor reset, since duplicates of its sockets live on there.
//
// Idle means no byte moved either way: every chunk the destination socket
// accepts moves the idle clock and the byte counters; on the goroutine
// path a direction stalled on a slow reader retries every second
// (progressTick), so both advance at least every second while the reader
// drains anything (in an event loop, holding at most one read's 16 KiB, a
// stalled direction waits for the socket to say it is writable). A reader so slow that
// the kernel accepts nothing new for idle_timeout is checked once more
// before the connection is declared idle: if the sockets' TCP_INFO shows
// bytes acknowledged or received within a second, the kernel is still
// delivering what lbctl handed it and the connection lives on. Only
// connections with unsent bytes pay for this check, and only when the idle
// timer fires.
package tcpproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/localerr"
	"github.com/lbctl/lbctl/pkg/metrics"
	"go.uber.org/zap"
)

// Target is how to reach one backend of the pool, and its metric handles.
type Target struct {
	Addr    string       // resolved "ip:port" to dial
	Metrics *metrics.TCP // nil records nothing
	// Conns, when not nil, holds the backend's established connections
	// (shared by every Proxy generation), so they can be killed.
	Conns *Registry
}

// PassiveObserver learns of every failed connect and why, for passive
// health checks.
type PassiveObserver interface {
	ConnectFailed(b *balancer.Backend, err error)
}

// Config is what a Proxy needs. All fields but Passive are required.
type Config struct {
	Listener         string
	PoolName         string
	Pool             *balancer.Pool
	Targets          map[*balancer.Backend]*Target // one for every backend of Pool
	ConnectTimeout   time.Duration
	Retries          int
	IdleTimeout      time.Duration // 0 = none
	HalfCloseTimeout time.Duration // after one side's EOF, end the connection this much later; 0 = none
	Rejections       *metrics.Rejections
	Passive          PassiveObserver
	// AuthorityTLV: HeaderFunc writes a PROXY v2 header, which then
	// carries the Prelude's SNI as a PP2_TYPE_AUTHORITY TLV.
	AuthorityTLV bool
	// HeaderFunc, when set, returns bytes written to the backend before any
	// payload (a PROXY protocol header). It does not count in byte metrics.
	HeaderFunc func(client, local netip.AddrPort) []byte
	Log        *zap.Logger // errors and debug
	Access     *zap.Logger // one line per finished connection; nil = off
	// Durations observes the life of every connection that reached a
	// backend, when it ends; nil records nothing.
	Durations *metrics.Durations
}

// Proxy serves client connections for one listener generation.
type Proxy struct {
	cfg    Config
	dialer net.Dialer
	// addrs holds each target's address, parsed, for the connects an
	// event loop makes (StartInLoop); nil when a target's Addr is not
	// ip:port, and StartInLoop then declines.
	addrs map[*Target]netip.AddrPort
}

// New returns a Proxy for cfg.
func New(cfg Config) *Proxy {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	addrs := make(map[*Target]netip.AddrPort, len(cfg.Targets))
	for _, t := range cfg.Targets {
		ap, err := netip.ParseAddrPort(t.Addr)
		if err != nil || ap.Addr().Zone() != "" { // a zone is left to Go's dialer
			addrs = nil
			break
		}
		addrs[t] = ap
	}
	return &Proxy{
		addrs: addrs,
		cfg:   cfg,
		// No TCP keep-alive toward backends, as HAProxy (option
		// srvtcpka) and nginx (so_keepalive) by default: Go's keep-alive
		// costs four setsockopt per connection (13 % of the syscalls of a
		// short connection), and idle_timeout (10m by default) bounds a
		// connection whose backend vanished. TCP_NODELAY stays (Go sets
		// it on every TCP socket). docs/reference.md says so.
		dialer: net.Dialer{
			Timeout:   cfg.ConnectTimeout,
			KeepAlive: -1,
		},
	}
}

// Start proxies client to a backend. It dials a backend, hands the
// connection to an event loop (or starts the two copying goroutines) and
// returns; done is called once, from whichever goroutine ends the
// connection (before Start returns when no backend could be reached). The
// caller's goroutine, whose stack grew while dialing, can then exit.
//
// clientAddr is the client as the rest of lbctl sees it (the PROXY protocol
// source when the listener accepts one). Canceling ctx ends the connection
// at once (the end of a shutdown drain). Start always closes client.
func (p *Proxy) Start(ctx context.Context, client *net.TCPConn, clientAddr netip.AddrPort, done func(End)) {
	p.StartWith(ctx, client, clientAddr, nil, done)
}

// StartWith is Start for a connection whose first bytes the listener has
// read already (pre, see Prelude; nil = none).
func (p *Proxy) StartWith(ctx context.Context, client *net.TCPConn, clientAddr netip.AddrPort, pre *Prelude, done func(End)) {
	start := nanotime()
	var att attempts
	backend, b, t, end := p.dial(ctx, client, clientAddr, pre, &att)
	if backend == nil {
		p.refused(client, clientAddr, pre, start, end, att, done)
		return
	}
	c := newConn(p, client, backend, t)
	if pre != nil {
		c.in.account(len(pre.Data)) // written by dial
	}
	p.established(c, b, t, clientAddr, pre, att, start, done)
	c.start(ctx)
}

// StartInLoop is Start for a connection whose backend an event loop
// connects to (Linux): the caller hands the client over and goes on at
// once, the loop makes the connect without blocking (a socket, connect(2),
// and the socket's event in the loop's epoll set, with the same retries,
// connect timeout, metrics and passive checks as Start), and the
// connection joins that loop when it is made. No goroutine waits for the
// connect, and none takes the connection over from the caller's.
//
// It reports false, having done nothing, when there is no event loop, or
// a target's address is not ip:port: the caller then uses Start.
func (p *Proxy) StartInLoop(ctx context.Context, client *net.TCPConn, clientAddr netip.AddrPort, done func(End)) bool {
	return p.StartInLoopWith(ctx, client, clientAddr, nil, done)
}

// StartInLoopWith is StartInLoop for a connection whose first bytes the
// listener has read already (pre, see Prelude; nil = none). It also
// reports false for a prelude longer than maxLoopPrelude: the loop writes
// the first bytes to a socket that has just connected in one write, which
// a hello of common size always fits in; StartWith writes any size.
func (p *Proxy) StartInLoopWith(ctx context.Context, client *net.TCPConn, clientAddr netip.AddrPort, pre *Prelude, done func(End)) bool {
	if p.addrs == nil || (pre != nil && len(pre.Data) > maxLoopPrelude) {
		return false
	}
	e := pickDialEngine()
	if e == nil {
		return false
	}
	c := &conn{client: client, p: p, peer: clientAddr, started: nanotime(),
		idleTimeout: p.cfg.IdleTimeout, halfClose: p.cfg.HalfCloseTimeout}
	e.connect(c, ctx, pre, done)
	return true
}

// maxLoopPrelude is the longest prelude a loop writes to a backend (see
// StartInLoopWith): a new socket's send buffer (tcp_wmem's default, 16
// KiB) takes it whole, with a PROXY header.
const maxLoopPrelude = 8 << 10

// LoopConnects reports whether StartInLoop, and a Listener's Admit, can
// serve p's connections from an event loop: there is one, and every
// target's address is ip:port.
func (p *Proxy) LoopConnects() bool { return p.addrs != nil && loopsConnect() }

// LoopsConnect reports whether event loops connect to backends on this
// system (a Listener can serve a proxy from its loop).
func LoopsConnect() bool { return loopsConnect() }

// localAddr is c's local address.
func localAddr(c *net.TCPConn) netip.AddrPort {
	a, _ := c.LocalAddr().(*net.TCPAddr)
	return a.AddrPort()
}

// refused ends a connection that reached no backend (end says why): it
// closes the client and counts and logs the refusal.
func (p *Proxy) refused(client *net.TCPConn, clientAddr netip.AddrPort, pre *Prelude, start int64, end End, att attempts, done func(End)) {
	if client != nil { // nil: a socket a loop accepted, closed by it
		client.Close()
	}
	switch end {
	case EndNoBackend:
		p.cfg.Rejections.Inc(metrics.ReasonNoBackend)
	case EndBackendUnavailable:
		p.cfg.Rejections.Inc(metrics.ReasonBackendUnavailable)
	}
	if p.cfg.Access != nil {
		p.logAccess(pre, clientAddr, "", 0, 0, time.Duration(nanotime()-start), end, att)
	}
	done(end)
}

// established records a connection whose backend connect succeeded (b is
// acquired): its metrics, its end (onEnd) and its place in the backend's
// Registry.
func (p *Proxy) established(c *conn, b *balancer.Backend, t *Target, clientAddr netip.AddrPort, pre *Prelude, att attempts, start int64, done func(End)) {
	t.Metrics.ConnOpened()
	c.peer, c.pre, c.attempts, c.started = clientAddr, pre, att.n, start
	tries := att // the closure holds this copy, so att stays on the stack
	c.onEnd = func(end End) {
		t.Metrics.ConnClosed()
		b.Release()
		if end != EndMoved { // a moved connection is logged where it ends (detach.go)
			d := time.Duration(nanotime() - start) // one clock read for the histogram and the log
			p.cfg.Durations.Observe(d)
			p.logAccess(pre, clientAddr, b.Address(), c.in.bytes, c.out.bytes, d, end, tries)
		}
		done(end)
	}
	if t.Conns != nil {
		t.Conns.add(c)
	}
}

// dial connects to a backend, trying up to Retries others when a connect
// fails. The backend it returns is acquired (counted as active): the
// caller releases it when the connection ends.
//
// A backend counts as active from the moment it is picked, as in nginx:
// a backend slow to accept would otherwise keep the lowest count of a
// least-connections pool while its connects are pending, and draw every new
// connection for up to connect_timeout. A failed connect releases it.
// (lbctl_connections_active counts established connections only.)
//
// With HeaderFunc set, a connect counts as made once the PROXY header is
// written: a backend that accepts and then fails the write is one more
// failed connect, retried on another backend.
//
// att counts the connects tried and, with the access log on, names the
// backends whose connect failed.
func (p *Proxy) dial(ctx context.Context, client *net.TCPConn, clientAddr netip.AddrPort, pre *Prelude, att *attempts) (*net.TCPConn, *balancer.Backend, *Target, End) {
	var (
		tried balancer.Tried
		hdr   []byte
	)
	for attempt := 0; attempt <= p.cfg.Retries; attempt++ {
		b := p.cfg.Pool.Pick(clientAddr, &tried)
		if b == nil {
			break
		}
		b.Acquire()
		tried.Add(b)
		att.n++
		t := p.cfg.Targets[b]
		start := time.Now()
		nc, err := p.dialer.DialContext(ctx, "tcp", t.Addr)
		if err == nil && (p.cfg.HeaderFunc != nil || pre != nil) {
			if hdr == nil {
				hdr = p.first(func() netip.AddrPort { return localAddr(client) }, clientAddr, pre) // prelude.go
			}
			if _, err = nc.Write(hdr); err != nil {
				nc.Close()
				err = fmt.Errorf("write PROXY header or first bytes: %w", err)
			}
		}
		if err != nil {
			p.connectFailed(b, t, err, ctx.Err() != nil, att)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		t.Metrics.ConnectSucceeded(time.Since(start))
		b.Established()
		return nc.(*net.TCPConn), b, t, 0
	}
	switch {
	case ctx.Err() != nil:
		return nil, nil, nil, EndShutdown // the drain ended: not a rejection
	case tried.Len() == 0:
		return nil, nil, nil, EndNoBackend
	}
	return nil, nil, nil, EndBackendUnavailable
}

// connectFailed records a failed connect to b (acquired, released here).
// Out of descriptors, buffers or ports is not the backend's fault
// (package localerr), nor is a connect cut short by the end of a shutdown
// drain (shutdown): no failure is held against it then.
func (p *Proxy) connectFailed(b *balancer.Backend, t *Target, err error, shutdown bool, att *attempts) {
	b.Release()
	if p.cfg.Access != nil {
		att.failed = append(att.failed, b.Address())
	}
	if !localerr.Is(err) && !shutdown {
		t.Metrics.ConnectFailed()
		b.AddFailure()
		if p.cfg.Passive != nil {
			p.cfg.Passive.ConnectFailed(b, err)
		}
	}
	// Debug only: a dead backend is reported once, by the health state
	// change, not once per connection.
	p.cfg.Log.Debug("connect to backend failed",
		zap.String("pool", p.cfg.PoolName), zap.String("backend", b.Address()), zap.Error(err))
}

// attempts are the connects one client connection tried: how many, and
// the backends that failed (collected only for the access log).
type attempts struct {
	n      int
	failed []string
}

// logAccess writes the access log line of a finished connection. attempts
// is the number of backends tried (1 without a retry, 0 when none was
// eligible); failed, present only after a failed connect, names the
// backends that failed, in order.
func (p *Proxy) logAccess(pre *Prelude, client netip.AddrPort, backend string, in, out int64, d time.Duration, end End, att attempts) {
	if p.cfg.Access == nil {
		return
	}
	fields := []zap.Field{
		zap.String("listener", p.cfg.Listener),
		sniField(pre),
		zap.Stringer("client", client),
		zap.String("backend", backend),
		zap.Int64("bytes_in", in),
		zap.Int64("bytes_out", out),
		zap.Duration("duration", d),
		zap.String("end", end.String()),
		zap.Int("attempts", att.n),
	}
	if len(att.failed) > 0 {
		fields = append(fields, zap.Strings("failed", att.failed))
	}
	p.cfg.Access.Info("connection", fields...)
}
