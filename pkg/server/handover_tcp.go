package server

// handover_tcp.go: established TCP connections move to the new process
// of an upgrade (handover.go).
//
// The old process (DetachTCP) has every connection of its TCP listeners
// detached by tcpproxy (Conn.Detach: stopped at a clean point, where
// lbctl holds none of its bytes) and sends each, its two sockets and its
// state, in batches of up to MaxHandoverFiles descriptors. A detached
// connection moves no byte until the new process has adopted it, so
// DetachTCP detaches only two batches ahead (detachAhead): the next
// connections are stopped only once an earlier batch is sent, and each
// connection pauses for about the time two batches take, not for the whole
// handover (which, for a few thousand connections on a loaded machine,
// takes tens of seconds: long enough for a client waiting on a FIN to
// give up). The send blocks while the new process is behind, which
// holds the next detaches back too.
//
// A connection still before its proxy (reading its PROXY header, its TLS
// hello, or dialing) is not in a backend's registry yet: DetachTCP looks
// again every handoverScan until every connection of its listeners has
// moved or ended, so such a connection moves as soon as it starts
// proxying. One
// that finds no clean point before the context ends (its peer stopped
// reading while lbctl holds bytes for it) stays and finishes here.
//
// The connections are found in the registries of the pools in service
// (their draining backends included). A connection to a pool that an
// earlier reload removed from the configuration is in none: it is not
// moved and finishes here. So that it does not hold the handover until
// the context ends, DetachTCP waits for unseen connections only as long
// as a connection accepted before it began can take to reach its proxy
// (preProxyBound: the PROXY header and TLS hello timeouts, and every
// connect attempt).
//
// The new process (AdoptTCP) finds, for each connection, the listener
// bound to the same socket (its protocol and address; else the listener
// of the same name), the proxy of that listener that serves the pool the
// old process chose (the listener's own, or a route's), and the backend
// of that pool at that address, then counts the connection as admitted
// there (the listener's active connections, its client's slot in the
// per-client table, without a rate token: the old process admitted it)
// and starts it (tcpproxy Proxy.Adopt). A backend the new configuration
// no longer has in that pool is adopted all the same, outside any pool:
// the connection runs to its end in the new process, without metrics,
// rather than being cut. A connection whose listener the new process does
// not have is reset (both sides), never left to look complete.
//
// Meta is JSON (tcpHandoverMeta); its version changes with its meaning.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
	"go.uber.org/zap"
)

// handoverScan is how often DetachTCP looks for connections that reached
// their proxy since its last look.
const handoverScan = 10 * time.Millisecond

// detachAhead is how many connections DetachTCP detaches ahead of what it
// has sent: two batches, so that the next batch is detached while one is
// sent.
const detachAhead = 2 * tcpBatchConns

// handoverStuck is how long DetachTCP waits for one of the connections it
// is detaching to come back before it starts another batch's worth.
const handoverStuck = time.Second

// tcpHandoverVersion is the version of tcpHandoverMeta.
const tcpHandoverVersion = 1

// tcpHandoverMeta is a batch's Meta: connection i's sockets are Files[2i]
// (client) and Files[2i+1] (backend).
type tcpHandoverMeta struct {
	Version int        `json:"version"`
	Conns   []tcpMoved `json:"conns"`
}

// tcpMoved is one connection of a batch.
type tcpMoved struct {
	Socket string         `json:"socket"` // its listener's SocketKey, "tcp|127.0.0.1:80"
	State  tcpproxy.State `json:"state"`
}

// tcpBatch collects detached connections until they are sent.
type tcpBatch struct {
	meta  tcpHandoverMeta
	files []*os.File
}

// tcpBatchConns is how many connections fit in one batch.
const tcpBatchConns = MaxHandoverFiles / 2

func (b *tcpBatch) add(sockets map[string]string, d *tcpproxy.Detached) {
	b.meta.Conns = append(b.meta.Conns, tcpMoved{Socket: sockets[d.State.Listener], State: d.State})
	b.files = append(b.files, d.Client, d.Backend)
}

func (b *tcpBatch) len() int { return len(b.meta.Conns) }

// take returns the batch as a HandoverBatch and empties b.
func (b *tcpBatch) take() (HandoverBatch, error) {
	b.meta.Version = tcpHandoverVersion
	meta, err := json.Marshal(&b.meta)
	hb := HandoverBatch{Meta: meta, Files: b.files}
	b.meta.Conns, b.files = nil, nil
	return hb, err
}

// DetachTCP runs in the old process, once its listeners stopped accepting
// (StopAccepting). It brings every established TCP connection to a clean
// point (no byte held by lbctl), and passes each to send with its state, in
// batches of at most MaxHandoverFiles descriptors; the connection is then
// gone from this process. At most two batches' connections are stopped
// at a time (detachAhead, see the top of this file). A connection still in
// its PROXY-header, TLS inspection or dial phase is passed once it reaches
// its backend. One that cannot reach a clean point before ctx ends stays
// and finishes here.
// It returns how many connections were passed.
//
// send must not keep the batch's files after it returns (DetachTCP closes
// them). When send fails, the connections of that batch, and of those
// detached after, are adopted back here (AdoptTCP): they go on in this
// process, and DetachTCP returns the error with the count passed before.
func (s *Server) DetachTCP(ctx context.Context, send func(HandoverBatch) error) (moved int, err error) {
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sockets := s.tcpSockets()
	results := make(chan *tcpproxy.Detached)
	tried := map[tcpproxy.Conn]struct{}{}
	inflight := 0
	var (
		batch    tcpBatch
		sendErr  error
		handles  []tcpproxy.Conn
		notMoved int
	)
	flush := func() {
		if batch.len() == 0 {
			return
		}
		n := batch.len()
		hb, merr := batch.take()
		if merr == nil && sendErr == nil {
			if sendErr = send(hb); sendErr == nil {
				closeFiles(hb.Files)
				moved += n
				return
			}
			cancel() // no more detaches: what is detached already comes back
		}
		if merr != nil {
			// Cannot happen (plain fields); keep the connections here.
			sendErr = errors.Join(sendErr, merr)
			closeFiles(hb.Files)
			return
		}
		if aerr := s.AdoptTCP(hb); aerr != nil {
			s.log.Error("connections detached for the upgrade could not be taken back", zap.Error(aerr))
		}
	}
	tick := time.NewTicker(handoverScan)
	defer tick.Stop()
	done := dctx.Done()
	unseenUntil := time.Now().Add(preProxyBound(s.cfg.Load()))
	var queue []tcpproxy.Conn // seen, not yet tried
	// limit bounds the connections detaching or waiting to be sent. It
	// grows by a batch when none of them has come back for handoverStuck:
	// those wait for a clean point (a peer that stopped reading), and
	// must not hold up the others until ctx ends.
	limit, lastBack := detachAhead, time.Now()
	for {
		if dctx.Err() == nil {
			if len(queue) == 0 {
				handles = s.tcpHandles(handles[:0])
				for _, h := range handles {
					if _, ok := tried[h]; !ok {
						queue = append(queue, h)
					}
				}
			}
			// At most two batches are on their way at a time (one sent
			// while the next is detached): a detached connection moves
			// no byte until the new process adopts it, so each one is
			// stopped only while its own batch is detached and sent,
			// not for the whole handover.
			for len(queue) > 0 && inflight+batch.len() < limit {
				h := queue[0]
				queue = queue[1:]
				tried[h] = struct{}{}
				inflight++
				go func() {
					d, _ := h.Detach(dctx) // on error it runs on here, untouched
					results <- d
				}()
			}
		}
		if inflight == 0 && (dctx.Err() != nil ||
			len(queue) == 0 && (s.tcpActive() == 0 || time.Now().After(unseenUntil))) {
			break
		}
		select {
		case d := <-results:
			inflight--
			lastBack = time.Now()
			if d == nil {
				notMoved++
				continue
			}
			batch.add(sockets, d)
			// Take what else is ready, then send: a batch waits for no
			// connection still on its way to a clean point.
		more:
			for batch.len() < tcpBatchConns {
				select {
				case d := <-results:
					inflight--
					if d == nil {
						notMoved++
					} else {
						batch.add(sockets, d)
					}
				default:
					break more
				}
			}
			flush()
			lastBack = time.Now() // a slow send is no stuck detach
		case <-tick.C:
			if len(queue) > 0 && inflight+batch.len() >= limit && time.Since(lastBack) > handoverStuck {
				limit += tcpBatchConns
				lastBack = time.Now()
			}
		case <-done:
			done = nil
		}
	}
	flush()
	left := s.tcpActive()
	s.log.Info("established TCP connections handed over", zap.Int("moved", moved), zap.Int("left", left), ErrorField(sendErr))
	return moved, sendErr
}

// preProxyBound is the longest a TCP connection of cfg can take from
// its accept to its proxy: its PROXY header, its TLS hello, and every
// connect attempt of the slowest pool, plus a second's margin.
func preProxyBound(cfg *config.Config) time.Duration {
	var first, dial time.Duration
	for _, lc := range cfg.Listeners {
		if lc.Protocol != "tcp" {
			continue
		}
		d := time.Duration(0)
		if lc.AcceptProxyProtocol {
			d += lc.ProxyProtocolTimeout
		}
		if lc.Routes != nil {
			d += lc.TLSInspectTimeout
		}
		first = max(first, d)
	}
	for _, pc := range cfg.Pools {
		dial = max(dial, pc.ConnectTimeout*time.Duration(pc.Retries+1))
	}
	return first + dial + time.Second
}

// tcpSockets maps each TCP listener's name to its socket's key.
func (s *Server) tcpSockets() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.listeners))
	for _, l := range s.listeners {
		if st := l.state.Load(); l.tcp != nil && st != nil {
			out[st.name] = tcpSocketKey(l)
		}
	}
	return out
}

func tcpSocketKey(l *listener) string {
	a, _ := l.tcp.Addr().(*net.TCPAddr)
	if a == nil {
		return ""
	}
	return NewSocketKey("tcp", a.AddrPort()).String()
}

// tcpHandles appends a handle on every established TCP connection to dst.
func (s *Server) tcpHandles(dst []tcpproxy.Conn) []tcpproxy.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, lp := range s.pools {
		for _, be := range lp.byAddr {
			dst = be.tcpConns.Conns(dst)
		}
	}
	return dst
}

// tcpActive counts the open connections of the TCP listeners, those not
// yet at their proxy included.
func (s *Server) tcpActive() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := int64(0)
	for _, l := range s.listeners {
		if l.tcp != nil {
			n += l.active.Load()
		}
	}
	return int(n)
}

// AdoptTCP runs in the new process, after Start: it serves the connections
// of one batch that DetachTCP sent, as if they had been accepted here. It
// owns b.Files. A connection it cannot serve is reset on both sides and
// named in the error; the others are served all the same.
func (s *Server) AdoptTCP(b HandoverBatch) error {
	defer closeFiles(b.Files) // every socket is duplicated by net.FileConn
	var meta tcpHandoverMeta
	if err := json.Unmarshal(b.Meta, &meta); err != nil {
		return fmt.Errorf("adopt TCP connections: %w", err)
	}
	if meta.Version != tcpHandoverVersion {
		return fmt.Errorf("adopt TCP connections: meta version %d, this lbctl reads %d", meta.Version, tcpHandoverVersion)
	}
	if len(b.Files) != 2*len(meta.Conns) {
		return fmt.Errorf("adopt TCP connections: %d descriptors for %d connections", len(b.Files), len(meta.Conns))
	}
	var errs []error
	for i, m := range meta.Conns {
		if err := s.adoptTCP(m, b.Files[2*i], b.Files[2*i+1]); err != nil {
			errs = append(errs, fmt.Errorf("connection of %s to %s: %w", m.State.Client, m.State.Backend, err))
		}
	}
	return errors.Join(errs...)
}

// adoptTCP serves one connection of a batch.
func (s *Server) adoptTCP(m tcpMoved, cf, bf *os.File) error {
	client, err := fileTCPConn(cf)
	if err != nil {
		return fmt.Errorf("client socket: %w", err)
	}
	backend, err := fileTCPConn(bf)
	if err != nil {
		resetTCP(client)
		return fmt.Errorf("backend socket: %w", err)
	}
	s.mu.Lock()
	l, st := s.adoptListener(m)
	var proxy *tcpproxy.Proxy
	var b *balancer.Backend
	if st != nil {
		proxy = st.proxyFor(m.State.Pool)
		b = s.poolBackend(m.State.Pool, m.State.Backend)
	}
	if proxy == nil || s.stopping.Load() {
		s.mu.Unlock()
		resetTCP(client)
		resetTCP(backend)
		switch {
		case l == nil:
			return fmt.Errorf("no listener on %s (%s)", m.Socket, m.State.Listener)
		case proxy == nil:
			return fmt.Errorf("listener %s serves no pool", m.State.Listener)
		}
		return ErrNotRunning
	}
	// Counted under s.mu, so that Shutdown (which takes it) sees it.
	l.active.Add(1)
	s.conns.Add(1)
	s.mu.Unlock()
	release := l.clients.hold(st.cfg, m.State.Client.Addr())
	done := func(tcpproxy.End) {
		release()
		l.active.Add(-1)
		s.conns.Done()
	}
	proxy.Adopt(s.killCtx, client, backend, b, m.State, done)
	return nil
}

// adoptListener finds the TCP listener of a moved connection: the one on
// the same socket, else the one of the same name. Called with s.mu held.
func (s *Server) adoptListener(m tcpMoved) (*listener, *listenerState) {
	var byName *listener
	for _, l := range s.listeners {
		st := l.state.Load()
		if l.tcp == nil || st == nil {
			continue
		}
		if m.Socket != "" && tcpSocketKey(l) == m.Socket {
			return l, st
		}
		if st.name == m.State.Listener {
			byName = l
		}
	}
	if byName == nil {
		return nil, nil
	}
	return byName, byName.state.Load()
}

// proxyFor is the proxy of st that serves pool: the listener's own, a
// route's, else any (the connection is then adopted outside its pool).
func (st *listenerState) proxyFor(pool string) *tcpproxy.Proxy {
	if st.pool != nil && st.pool.name == pool {
		return st.proxy
	}
	var other *tcpproxy.Proxy
	if st.routes != nil {
		for _, r := range st.routes.routes {
			if r.pool.name == pool {
				return r.proxy
			}
			other = r.proxy
		}
	}
	if st.proxy != nil {
		return st.proxy
	}
	return other
}

// poolBackend is the balancer backend of pool at addr ("ip:port"), nil
// when the pool has none there. Called with s.mu held.
func (s *Server) poolBackend(pool, addr string) *balancer.Backend {
	lp := s.pools[pool]
	ap, err := netip.ParseAddrPort(addr)
	if lp == nil || err != nil {
		return nil
	}
	if be := lp.byAddr[unmap(ap)]; be != nil {
		return be.b
	}
	return nil
}

// hold counts one more connection of client on the table, as admit does,
// but under no limit and without a rate token: a connection that another
// process admitted and passed on (AdoptTCP).
func (t *clientTable) hold(lc *config.Listener, client netip.Addr) (release func()) {
	rate := lc.ConnectionRatePerClient
	if lc.MaxConnectionsPerClient <= 0 && rate <= 0 {
		return noRelease
	}
	client = client.Unmap().WithZone("")
	burst := burstOf(lc)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.clients == nil {
		t.clients = map[netip.Addr]clientEntry{}
	}
	e, ok := t.clients[client]
	if !ok {
		e = clientEntry{tokens: burst, stamp: t.now()}
	}
	e.rate, e.burst = rate, burst
	e.active++
	t.clients[client] = e
	var once sync.Once
	return func() { once.Do(func() { t.release(client) }) }
}

// fileTCPConn makes a connection of a received socket; f stays the
// caller's to close.
func fileTCPConn(f *os.File) (*net.TCPConn, error) {
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("not a TCP socket: %T", c)
	}
	return tc, nil
}

// resetTCP closes c with a reset: its peer must not take the stream for
// complete.
func resetTCP(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
