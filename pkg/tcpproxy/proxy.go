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
// Bytes move between the two *net.TCPConn directly, never through a
// wrapper, so Linux splices bulk data (see copy_linux.go).
//
// # How a connection ends
//
// Every way out goes through one function (conn.end), which records the
// first reason (an [End]) and closes both sockets, either with FIN or with a
// reset (RST):
//
//   - both sides finished sending (EndDone): FIN, the stream is complete;
//   - a side failed (EndClientError, EndBackendError): the other side gets a
//     reset, so that it cannot mistake a truncated stream for a complete one;
//   - lbctl ends it (idle_timeout, half_close_timeout, the shutdown
//     deadline): a reset on both sides when any byte is still unsent, FIN
//     otherwise. Unsent means: a direction is in the middle of moving bytes
//     (in lbctl's buffer or pipe), or a socket still holds bytes, received
//     and not read by lbctl (SIOCINQ), or written by lbctl and not yet
//     acknowledged by the peer (SIOCOUTQ). A connection with nothing pending
//     anywhere ends with FIN, as a quiet one always did.
//
// Idle means no byte moved either way: every chunk the destination socket
// accepts moves the idle clock and the byte counters; a direction stalled
// on a slow reader retries every second (progressTick), so both advance at
// least every second while the reader drains anything. A reader so slow that
// the kernel accepts nothing new for idle_timeout is checked once more
// before the connection is declared idle: if the sockets' TCP_INFO shows
// bytes acknowledged or received within a second, the kernel is still
// delivering what lbctl handed it and the connection lives on. Only
// connections with unsent bytes pay for this check, and only when the idle
// timer fires.
package tcpproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
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
}

// PassiveObserver learns of every failed connect, for passive health checks.
type PassiveObserver interface {
	ConnectFailed(b *balancer.Backend)
}

// Config is what a Proxy needs. All fields but Passive are required.
type Config struct {
	Listener       string
	PoolName       string
	Pool           *balancer.Pool
	Targets        map[*balancer.Backend]*Target // one for every backend of Pool
	ConnectTimeout time.Duration
	Retries        int
	IdleTimeout    time.Duration // 0 = none
	KeepAlive      time.Duration // TCP keep-alive idle time toward backends; 0 = Go's default (15s)
	Rejections     *metrics.Rejections
	Passive        PassiveObserver
	// HeaderFunc, when set, returns bytes written to the backend before any
	// payload (a PROXY protocol header). It does not count in byte metrics.
	HeaderFunc func(client, local netip.AddrPort) []byte
	Log        *zap.Logger // errors and debug
	Access     *zap.Logger // one line per finished connection; nil = off
}

// Proxy serves client connections for one listener generation.
type Proxy struct {
	cfg    Config
	dialer net.Dialer
}

// New returns a Proxy for cfg.
func New(cfg Config) *Proxy {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	return &Proxy{
		cfg: cfg,
		dialer: net.Dialer{
			Timeout:         cfg.ConnectTimeout,
			KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: cfg.KeepAlive},
		},
	}
}

// Config returns the configuration p was built with.
func (p *Proxy) Config() *Config { return &p.cfg }

// End says how a connection ended: the access log's "end" field.
type End string

const (
	EndDone               End = "done"                // both sides finished normally
	EndClientError        End = "client_error"        // read or write on the client failed (reset)
	EndBackendError       End = "backend_error"       // read or write on the backend failed (reset)
	EndIdle               End = "idle_timeout"        // no bytes either way for IdleTimeout
	EndShutdown           End = "shutdown"            // closed by the shutdown deadline
	EndNoBackend          End = "no_backend"          // no eligible backend
	EndBackendUnavailable End = "backend_unavailable" // every connect attempt failed
)

// Serve proxies client to a backend and returns when the connection is over.
// clientAddr is the client as the rest of lbctl sees it (the PROXY protocol
// source when the listener accepts one). Canceling ctx closes the
// connection at once (the end of a shutdown drain). Serve always closes
// client.
func (p *Proxy) Serve(ctx context.Context, client *net.TCPConn, clientAddr netip.AddrPort) End {
	ended := make(chan End, 1)
	p.Start(ctx, client, clientAddr, func(e End) { ended <- e })
	return <-ended
}

// Start is Serve without the wait: it dials a backend, starts the two
// copying goroutines and returns; done is called once, from whichever
// goroutine ends the connection (before Start returns when no backend
// could be reached). The caller's goroutine, whose stack grew while
// dialing, can then exit, so an idle connection costs two shallow
// goroutines and nothing more.
func (p *Proxy) Start(ctx context.Context, client *net.TCPConn, clientAddr netip.AddrPort, done func(End)) {
	start := time.Now()
	backend, b, t, end := p.dial(ctx, client, clientAddr)
	if backend == nil {
		client.Close()
		switch end {
		case EndNoBackend:
			p.cfg.Rejections.Inc(metrics.ReasonNoBackend)
		case EndBackendUnavailable:
			p.cfg.Rejections.Inc(metrics.ReasonBackendUnavailable)
		}
		p.logAccess(clientAddr, "", 0, 0, start, end)
		done(end)
		return
	}
	b.Acquire()
	t.Metrics.ConnOpened()
	c := newConn(p, client, backend, t)
	c.onEnd = func(end End) {
		t.Metrics.ConnClosed()
		b.Release()
		p.logAccess(clientAddr, b.Address(), c.in.bytes, c.out.bytes, start, end)
		done(end)
	}
	c.start(ctx)
}

// dial connects to a backend, trying up to Retries others when a connect
// fails.
// With HeaderFunc set, a connect counts as made once the PROXY header is
// written: a backend that accepts and then fails the write is one more
// failed connect, retried on another backend.
func (p *Proxy) dial(ctx context.Context, client *net.TCPConn, clientAddr netip.AddrPort) (*net.TCPConn, *balancer.Backend, *Target, End) {
	var (
		tried balancer.Tried
		hdr   []byte
	)
	for attempt := 0; attempt <= p.cfg.Retries; attempt++ {
		b := p.cfg.Pool.Pick(clientAddr.Addr(), &tried)
		if b == nil {
			break
		}
		tried.Add(b)
		t := p.cfg.Targets[b]
		start := time.Now()
		nc, err := p.dialer.DialContext(ctx, "tcp", t.Addr)
		if err == nil && p.cfg.HeaderFunc != nil {
			if hdr == nil {
				local, _ := client.LocalAddr().(*net.TCPAddr)
				hdr = p.cfg.HeaderFunc(clientAddr, local.AddrPort())
			}
			if _, err = nc.Write(hdr); err != nil {
				nc.Close()
				err = fmt.Errorf("write PROXY header: %w", err)
			}
		}
		if err != nil {
			// Out of descriptors, buffers or ports here is not the
			// backend's fault (package localerr), nor is a dial cut short by the
			// end of a shutdown drain: no failure is held against it.
			if !localerr.Is(err) && ctx.Err() == nil {
				t.Metrics.ConnectFailed()
				b.AddFailure()
				if p.cfg.Passive != nil {
					p.cfg.Passive.ConnectFailed(b)
				}
			}
			// Debug only: a dead backend is reported once, by the health
			// state change, not once per connection.
			p.cfg.Log.Debug("connect to backend failed",
				zap.String("pool", p.cfg.PoolName), zap.String("backend", b.Address()), zap.Error(err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		t.Metrics.ConnectSucceeded(time.Since(start))
		return nc.(*net.TCPConn), b, t, ""
	}
	switch {
	case ctx.Err() != nil:
		return nil, nil, nil, EndShutdown // the drain ended: not a rejection
	case tried.Len() == 0:
		return nil, nil, nil, EndNoBackend
	}
	return nil, nil, nil, EndBackendUnavailable
}

func (p *Proxy) logAccess(client netip.AddrPort, backend string, in, out int64, start time.Time, end End) {
	if p.cfg.Access == nil {
		return
	}
	p.cfg.Access.Info("connection",
		zap.String("listener", p.cfg.Listener),
		zap.Stringer("client", client),
		zap.String("backend", backend),
		zap.Int64("bytes_in", in),
		zap.Int64("bytes_out", out),
		zap.Duration("duration", time.Since(start)),
		zap.String("end", string(end)),
	)
}

// smallBufSize is the read buffer of the copy loop. On Linux a read that
// fills it switches the direction to splicing (copy_linux.go).
const smallBufSize = 16 << 10

var bufPool = sync.Pool{New: func() any {
	b := make([]byte, smallBufSize)
	return &b
}}

// epoch anchors the monotonic clock used for idle tracking.
var epoch = time.Now()

func nanotime() int64 { return int64(time.Since(epoch)) }

// conn is one client connection joined to one backend connection.
type conn struct {
	client, backend *net.TCPConn
	in, out         direction // in: client to backend; out: backend to client
	idleTimeout     time.Duration
	last            atomic.Int64 // nanotime of the last byte moved either way
	idle            *time.Timer
	reason          atomic.Pointer[End] // set once, by whoever ends the connection first
	closeOnce       sync.Once
	running         atomic.Int32 // directions still copying
	eofs            atomic.Int32 // directions that ended with a clean EOF
	ended           atomic.Bool  // end() has run
	stopCtx         func() bool  // unregisters the shutdown callback
	onEnd           func(End)
}

// direction is one half of a connection: bytes from src to dst.
type direction struct {
	c        *conn
	src, dst *net.TCPConn
	bytes    int64 // moved so far; owned by the direction's goroutine until it ends
	m        *metrics.TCP
	dir      metrics.Direction
	platformCopier
}

func newConn(p *Proxy, client, backend *net.TCPConn, t *Target) *conn {
	c := &conn{client: client, backend: backend, idleTimeout: p.cfg.IdleTimeout}
	c.in = direction{c: c, src: client, dst: backend, m: t.Metrics, dir: metrics.In}
	c.out = direction{c: c, src: backend, dst: client, m: t.Metrics, dir: metrics.Out}
	return c
}

func (d *direction) account(n int) {
	d.bytes += int64(n)
	d.m.AddBytes(d.dir, n)
	d.c.last.Store(nanotime())
}

var (
	endDone        = EndDone
	endClientError = EndClientError
	endBackendErr  = EndBackendError
	endIdle        = EndIdle
	endShutdown    = EndShutdown
)

// start runs both directions, each on a goroutine of its own; the last one
// to finish ends the connection.
func (c *conn) start(ctx context.Context) {
	if err := c.in.initPlatform(); err != nil {
		c.abort(&endClientError, true)
		c.end()
		return
	}
	if err := c.out.initPlatform(); err != nil {
		c.abort(&endBackendErr, true)
		c.end()
		return
	}
	c.last.Store(nanotime())
	if c.idleTimeout > 0 {
		c.idle = time.AfterFunc(c.idleTimeout, c.checkIdle)
	}
	c.stopCtx = context.AfterFunc(ctx, func() { c.abort(&endShutdown, false) })
	c.running.Store(2)
	go c.in.copy(&endClientError, &endBackendErr)
	go c.out.copy(&endBackendErr, &endClientError)
}

// copy is one direction's goroutine.
func (d *direction) copy(srcFailed, dstFailed *End) {
	d.finish(d.run(), srcFailed, dstFailed)
	if d.c.running.Add(-1) == 0 {
		d.c.end()
	}
}

// end runs once both directions are over.
func (c *conn) end() {
	c.ended.Store(true)
	if c.stopCtx != nil {
		c.stopCtx()
	}
	if c.idle != nil {
		c.idle.Stop()
	}
	c.reason.CompareAndSwap(nil, &endDone)
	c.closeBoth(false)
	c.onEnd(*c.reason.Load())
}

// finish ends one direction. After a clean EOF the peer's write side is shut
// (half-close) and the other direction goes on. After an error both
// connections are torn down, so the other direction stops waiting at once.
func (d *direction) finish(err error, srcFailed, dstFailed *End) {
	if err == nil {
		if d.c.eofs.Add(1) == 2 {
			return // the other direction is over too: closing both follows at once
		}
		// If the peer is already gone this fails; the other direction then
		// sees the failure itself and ends the connection.
		d.dst.CloseWrite()
		return
	}
	if errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
		// Closed by abort (idle, shutdown or the other direction's failure).
		d.c.abort(dstFailed, false)
		return
	}
	end := srcFailed
	if isWriteErr(err) {
		end = dstFailed
	}
	d.c.abort(end, true)
}

// isWriteErr reports whether err came from writing (the destination failed)
// rather than reading.
func isWriteErr(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) {
		// readfrom is the splice into dst: it moves only bytes already
		// queued in src, so its failures are dst's.
		return op.Op == "write" || op.Op == "readfrom"
	}
	return errors.Is(err, syscall.EPIPE)
}

// abort records why the connection ends (the first reason wins) and closes
// both sides. reset sends RST instead of FIN, so that a peer whose
// counterpart failed mid-stream cannot mistake a truncated stream for a
// complete one.
func (c *conn) abort(why *End, reset bool) {
	c.reason.CompareAndSwap(nil, why)
	c.closeBoth(reset)
}

func (c *conn) closeBoth(reset bool) {
	c.closeOnce.Do(func() {
		if reset {
			c.client.SetLinger(0)
			c.backend.SetLinger(0)
		}
		c.client.Close()
		c.backend.Close()
	})
}

func (c *conn) checkIdle() {
	if c.ended.Load() {
		return // end() stopped the timer while this ran: do not re-arm it
	}
	quiet := time.Duration(nanotime() - c.last.Load())
	if quiet >= c.idleTimeout {
		c.abort(&endIdle, false)
		return
	}
	c.idle.Reset(c.idleTimeout - quiet)
}
