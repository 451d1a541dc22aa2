package lbtest

// The load of an upgrade test (cmd/lbctl upgrade_e2e_test.go, cmd/lbsoak
// -upgrades): many long-lived TCP streams, each carrying checksummed data
// both ways, UDP sessions exchanging numbered datagrams, and a steady rate
// of new short connections, through a real lbctl in front of real peers.
// Nothing here needs a *testing.T: lbsoak runs it outside go test.
//
//	pat := lbtest.NewPattern(1)
//	peer, _ := lbtest.NewCheckPeer("127.0.0.1:0", pat)   // lbctl's TCP pool
//	echo, _ := lbtest.NewUDPEchoPeer("127.0.0.1:0")      // lbctl's UDP pool
//	ld := lbtest.NewLoad(lbtest.LoadConfig{TCPAddr: ..., UDPAddr: ..., Streams: 200, ...}, pat)
//	ld.Start()
//	ld.WaitEstablished(30 * time.Second)   // every stream connected
//	... upgrade lbctl ...
//	r := ld.Wait()                         // a Report; r.Failed() says whether lbctl lost anything
//	r.Add(peer.Report())                   // what the peers saw of the client-to-server halves
//
// The wire protocol of a TCP stream (Load's client, CheckPeer's server):
// the client sends a 16-byte header (magic "LBS1", a 32-bit key, a 64-bit
// length L), then exactly L bytes of the pattern's stream 2*key, then FIN;
// the peer verifies every byte as it arrives and answers each read with as
// many bytes of stream 2*key+1, then FIN after L bytes. Each side checks
// that exactly L bytes came, then EOF: a reset, a corrupted byte, a stream
// cut short (an early FIN) or one too long is a failure, counted by kind.
// A long-lived stream is open-ended (L = openEnded): it runs until
// Load.Finish (or its Duration), and its client records its final length
// in the Pattern they share before its FIN, where the peer finds it at EOF
// (both run in one process): a FIN that comes early still looks short.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// patternSize is the length of a Pattern's random table. A stream's bytes
// are a window sliding over it, so any read of up to patternSize bytes is
// compared with one contiguous slice.
const patternSize = 1 << 20

// Pattern is a table of pseudo-random bytes built once, before the load
// starts: the payload of every stream is a slice of it, so neither sending
// nor verifying allocates or computes anything per byte.
type Pattern struct {
	b []byte // 2*patternSize: the table twice, so that windows never wrap
	// finals holds the final length of each open-ended stream whose client
	// has finished (key -> int64), until its peer reads it at EOF.
	finals sync.Map
}

// openEnded is the header length of a stream whose length its client
// records in the Pattern as it finishes.
const openEnded = 1 << 62

// NewPattern builds the table from seed.
func NewPattern(seed uint64) *Pattern {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, 2*patternSize)
	for i := 0; i < patternSize; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	copy(b[patternSize:], b[:patternSize])
	return &Pattern{b: b}
}

// At returns the n bytes (n ≤ 1 MiB) of stream key at offset off. The
// slice is the table itself: callers must not modify it.
func (p *Pattern) At(key uint64, off int64, n int) []byte {
	start := int((key*7919 + uint64(off)) % patternSize)
	return p.b[start : start+n]
}

// Match reports whether b holds the bytes of stream key at offset off.
func (p *Pattern) Match(key uint64, off int64, b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), patternSize)
		if !bytes.Equal(b[:n], p.At(key, off, n)) {
			return false
		}
		b, off = b[n:], off+int64(n)
	}
	return true
}

// streamMagic opens a stream's header.
const streamMagic = "LBS1"

// streamHeader is the header of a stream of length bytes under key.
func streamHeader(key uint32, length int64) []byte {
	h := make([]byte, 16)
	copy(h, streamMagic)
	binary.BigEndian.PutUint32(h[4:], key)
	binary.BigEndian.PutUint64(h[8:], uint64(length))
	return h
}

// Outcome counts how TCP streams or connections ended.
type Outcome struct {
	OK      atomic.Int64 // every byte, then EOF
	Refused atomic.Int64 // connect refused (no listening socket)
	Reset   atomic.Int64 // reset or broken pipe
	Corrupt atomic.Int64 // a byte other than the pattern's
	Short   atomic.Int64 // EOF before every byte came
	Long    atomic.Int64 // more bytes than announced
	Failed  atomic.Int64 // anything else: timeouts, other errors
}

// Failures is the number of streams that did not end OK.
func (o *Outcome) Failures() int64 {
	return o.Refused.Load() + o.Reset.Load() + o.Corrupt.Load() + o.Short.Load() + o.Long.Load() + o.Failed.Load()
}

func (o *Outcome) String() string {
	return fmt.Sprintf("ok %d, refused %d, reset %d, corrupt %d, short %d, long %d, failed %d",
		o.OK.Load(), o.Refused.Load(), o.Reset.Load(), o.Corrupt.Load(), o.Short.Load(), o.Long.Load(), o.Failed.Load())
}

// count adds one to the counter of err's kind (nil: OK).
func (o *Outcome) count(err error) {
	switch {
	case err == nil:
		o.OK.Add(1)
	case errors.Is(err, syscall.ECONNREFUSED):
		o.Refused.Add(1)
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		o.Reset.Add(1)
	case errors.Is(err, errCorrupt):
		o.Corrupt.Add(1)
	case errors.Is(err, errShort):
		o.Short.Add(1)
	case errors.Is(err, errLong):
		o.Long.Add(1)
	default:
		o.Failed.Add(1)
	}
}

var (
	errCorrupt = errors.New("corrupted byte")
	errShort   = errors.New("stream ended early")
	errLong    = errors.New("more bytes than announced")
)

// errorLog keeps the first few failures' descriptions.
type errorLog struct {
	mu   sync.Mutex
	msgs []string
	more int
}

func (e *errorLog) add(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.msgs) < 20 {
		e.msgs = append(e.msgs, fmt.Sprintf(format, args...))
		return
	}
	e.more++
}

func (e *errorLog) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := append([]string(nil), e.msgs...)
	if e.more > 0 {
		out = append(out, fmt.Sprintf("... and %d more", e.more))
	}
	return out
}

// CheckPeer is a TCP backend speaking the stream protocol: it verifies
// every byte a client sends and answers with the client's reply stream.
// What it saw is in Report.
type CheckPeer struct {
	Addr string
	ln   *net.TCPListener
	pat  *Pattern
	wg   sync.WaitGroup

	mu     sync.Mutex
	conns  map[*net.TCPConn]struct{}
	closed bool

	streams Outcome // client-to-server halves as the peer saw them
	errs    errorLog
}

// NewCheckPeer listens on addr ("127.0.0.1:0") and serves until Close.
func NewCheckPeer(addr string, pat *Pattern) (*CheckPeer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("check peer listen %s: %w", addr, err)
	}
	p := &CheckPeer{Addr: ln.Addr().String(), ln: ln.(*net.TCPListener), pat: pat, conns: map[*net.TCPConn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *CheckPeer) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // EMFILE and the like: the client will count its failure
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go func() {
			defer p.wg.Done()
			if err := p.handle(c); err != nil {
				p.errs.add("peer %s: %v", c.RemoteAddr(), err)
				p.streams.count(err)
				c.SetLinger(0) // the client must see a failure, not a clean end
			} else {
				p.streams.OK.Add(1)
			}
			c.Close()
			p.mu.Lock()
			delete(p.conns, c)
			p.mu.Unlock()
		}()
	}
}

// handle serves one stream: nil when every announced byte came intact,
// then EOF, and the reply was written whole.
func (p *CheckPeer) handle(c *net.TCPConn) error {
	var h [16]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return fmt.Errorf("header: %w", errShort)
		}
		return fmt.Errorf("header: %w", err)
	}
	if string(h[:4]) != streamMagic {
		return fmt.Errorf("header %q: %w", h[:], errCorrupt)
	}
	key := uint64(binary.BigEndian.Uint32(h[4:]))
	length := int64(binary.BigEndian.Uint64(h[8:]))
	buf := make([]byte, 32<<10)
	var off int64
	for {
		// One byte more than is due, to see a stream that is too long.
		n, err := c.Read(buf[:min(int64(len(buf)), length-off+1)])
		if n > 0 {
			if off+int64(n) > length {
				return fmt.Errorf("%d bytes after %d: %w", n, off, errLong)
			}
			if !p.pat.Match(2*key, off, buf[:n]) {
				return fmt.Errorf("key %d bytes %d-%d: %w", key, off, off+int64(n), errCorrupt)
			}
			if _, werr := c.Write(p.pat.At(2*key+1, off, n)); werr != nil {
				return fmt.Errorf("write at %d: %w", off, werr)
			}
			off += int64(n)
		}
		if err == io.EOF {
			if length == openEnded {
				final, ok := p.pat.finals.LoadAndDelete(uint32(key))
				if !ok || final.(int64) != off {
					return fmt.Errorf("key %d: EOF after %d bytes, the client sent %v (finished %v): %w", key, off, final, ok, errShort)
				}
				break
			}
			if off < length {
				return fmt.Errorf("key %d: %d of %d bytes: %w", key, off, length, errShort)
			}
			break
		}
		if err != nil {
			return fmt.Errorf("key %d read at %d of %d: %w", key, off, length, err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		return fmt.Errorf("key %d close write: %w", key, err)
	}
	// The client closes once it has read the reply: wait for that, so that
	// closing here never resets bytes still unread in flight.
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.Copy(io.Discard, c); err != nil {
		return fmt.Errorf("key %d after reply: %w", key, err)
	}
	return nil
}

// Report is what the peer saw: each stream's client-to-server half.
func (p *CheckPeer) Report() *Report {
	r := &Report{}
	r.PeerStreams.add(&p.streams)
	r.Errors = p.errs.list()
	return r
}

// Close stops the peer: the listener, then every connection, then waits.
func (p *CheckPeer) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// UDPEchoPeer is a UDP backend that sends every datagram back unchanged,
// without a *testing.T (NewUDP needs one).
type UDPEchoPeer struct {
	Addr string
	conn *net.UDPConn
	done chan struct{}
}

// NewUDPEchoPeer listens on addr ("127.0.0.1:0") until Close.
func NewUDPEchoPeer(addr string) (*UDPEchoPeer, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("udp echo listen %s: %w", addr, err)
	}
	c.SetReadBuffer(8 << 20)
	c.SetWriteBuffer(8 << 20)
	p := &UDPEchoPeer{Addr: c.LocalAddr().String(), conn: c, done: make(chan struct{})}
	// Several readers on the one socket: a single one, descheduled on a
	// busy machine, lets its receive buffer overflow at a few thousand
	// datagrams a second, and the load would count that against lbctl.
	var wg sync.WaitGroup
	for range udpEchoReaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 65535)
			for {
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				c.WriteToUDPAddrPort(buf[:n], from)
			}
		}()
	}
	go func() {
		wg.Wait()
		close(p.done)
	}()
	return p, nil
}

// udpEchoReaders is the number of goroutines reading an UDPEchoPeer.
const udpEchoReaders = 4

// Close stops the peer and waits for its readers.
func (p *UDPEchoPeer) Close() {
	p.conn.Close()
	<-p.done
}

// LoadConfig sizes a Load.
type LoadConfig struct {
	TCPAddr string // lbctl's TCP listener, in front of CheckPeers
	UDPAddr string // lbctl's UDP listener, in front of UDPEchoPeers ("" = no UDP)

	Streams     int           // long-lived TCP streams
	StreamChunk int           // bytes each stream sends per tick (default 4 KiB)
	StreamTick  time.Duration // default 100ms
	UDPSessions int           // UDP sessions, each one client socket
	UDPTick     time.Duration // time between a session's datagrams (default 50ms)
	ConnRate    int           // new short connections per second
	ConnBytes   int           // bytes each way of a short connection (default 512)

	// Duration is how long streams send and connections and datagrams
	// start, unless Finish ends them sooner.
	Duration time.Duration
	// Deadline bounds the whole run: a stream or session still open then
	// fails (default Duration + 60s).
	Deadline time.Duration
	// Ramp spreads the streams' connects over this time (default 2s).
	Ramp time.Duration
}

// Load runs a LoadConfig's traffic. Start it, then Wait for its Report.
type Load struct {
	cfg LoadConfig
	pat *Pattern

	established atomic.Int64 // streams connected
	streamBytes atomic.Int64 // bytes received by stream clients
	udpReplies  atomic.Int64
	report      Report
	wg          sync.WaitGroup
	start       time.Time
	stop        context.CancelFunc
	finish      chan struct{} // closed by Finish
	finishOnce  sync.Once
}

// NewLoad prepares the load: defaults filled in, nothing started.
func NewLoad(cfg LoadConfig, pat *Pattern) *Load {
	if cfg.StreamChunk <= 0 {
		cfg.StreamChunk = 4 << 10
	}
	if cfg.StreamTick <= 0 {
		cfg.StreamTick = 100 * time.Millisecond
	}
	if cfg.UDPTick <= 0 {
		cfg.UDPTick = 50 * time.Millisecond
	}
	if cfg.ConnBytes <= 0 {
		cfg.ConnBytes = 512
	}
	if cfg.Deadline <= 0 {
		cfg.Deadline = cfg.Duration + time.Minute
	}
	if cfg.Ramp <= 0 {
		cfg.Ramp = 2 * time.Second
	}
	return &Load{cfg: cfg, pat: pat, finish: make(chan struct{})}
}

// Finish ends the long-lived streams: each sends what is due, records its
// length and sends FIN. Without it they end after Duration.
func (l *Load) Finish() { l.finishOnce.Do(func() { close(l.finish) }) }

// Start starts every stream, session and the connection generator.
func (l *Load) Start() {
	l.start = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.Deadline)
	l.stop = cancel
	perTick := int64(l.cfg.StreamChunk)
	ticks := int64(l.cfg.Duration / l.cfg.StreamTick)
	for i := 0; i < l.cfg.Streams; i++ {
		l.wg.Add(1)
		delay := l.cfg.Ramp * time.Duration(i) / time.Duration(max(l.cfg.Streams, 1))
		go func(key uint32) {
			defer l.wg.Done()
			time.Sleep(delay)
			err := l.stream(ctx, key, perTick*ticks)
			l.report.Streams.count(err)
			if err != nil {
				l.report.errs.add("stream %d (at %.1fs): %v", key, time.Since(l.start).Seconds(), err)
			}
		}(uint32(i))
	}
	if l.cfg.UDPAddr != "" {
		l.report.UDP.Sessions = l.cfg.UDPSessions
		for i := 0; i < l.cfg.UDPSessions; i++ {
			l.wg.Add(1)
			delay := l.cfg.Ramp * time.Duration(i) / time.Duration(max(l.cfg.UDPSessions, 1))
			go func(id uint32) {
				defer l.wg.Done()
				time.Sleep(delay)
				l.session(ctx, id, int(l.cfg.Duration/l.cfg.UDPTick))
			}(uint32(i))
		}
	}
	if l.cfg.ConnRate > 0 {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.connections(ctx)
		}()
	}
}

// WaitEstablished waits until every stream has connected (and sent its
// header), or timeout.
func (l *Load) WaitEstablished(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for l.established.Load() < int64(l.cfg.Streams) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d streams connected within %v (%s)", l.established.Load(), l.cfg.Streams, timeout, l.report.Streams.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// Progress returns the bytes received by stream clients and the UDP
// replies received so far: both grow while lbctl serves.
func (l *Load) Progress() (streamBytes, udpReplies int64) {
	return l.streamBytes.Load(), l.udpReplies.Load()
}

// Stop ends the load at once: every stream, session and connection still
// open fails with a timeout. For a test's cleanup after a failure.
func (l *Load) Stop() {
	if l.stop != nil {
		l.stop()
	}
}

// Wait waits for every stream, session and connection to end and returns
// the clients' report.
func (l *Load) Wait() *Report {
	l.wg.Wait()
	l.stop()
	l.report.Elapsed = time.Since(l.start)
	l.report.Errors = append(l.report.Errors, l.report.errs.list()...)
	return &l.report
}

// dial connects to TCPAddr within 10s. Until stop is called, the end of
// ctx puts the connection's deadline in the past, so that a blocked read
// or write returns; the caller calls stop, then closes the connection.
func (l *Load) dial(ctx context.Context) (c *net.TCPConn, stop func() bool, err error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", l.cfg.TCPAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("dial: %w", err)
	}
	c = nc.(*net.TCPConn)
	return c, context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) }), nil
}

// stream runs one long-lived, open-ended stream: at most limit bytes each
// way, fewer when Finish comes first.
func (l *Load) stream(ctx context.Context, key uint32, limit int64) error {
	c, stop, err := l.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write(streamHeader(key, openEnded)); err != nil {
		return fmt.Errorf("header: %w", err)
	}
	l.established.Add(1)
	type sent struct {
		n   int64
		err error
	}
	sc := make(chan sent, 1)
	go func() {
		n, err := l.send(c, key, limit)
		sc <- sent{n, err}
	}()
	got, rerr := l.receive(c, uint64(key), openEnded)
	w := <-sc
	switch {
	case rerr != nil:
		err = rerr
	case w.err != nil:
		err = w.err
	case got < w.n:
		err = fmt.Errorf("reply: %d of %d bytes: %w", got, w.n, errShort)
	case got > w.n:
		err = fmt.Errorf("reply: %d bytes, %d sent: %w", got, w.n, errLong)
	}
	if err != nil {
		c.SetLinger(0)
	}
	return err
}

// send writes a stream's bytes, StreamChunk per StreamTick since it
// started (a late tick on a busy machine sends what is due), until limit
// or Finish; then it records the length it sent and sends FIN.
func (l *Load) send(c *net.TCPConn, key uint32, limit int64) (int64, error) {
	tick := time.NewTicker(l.cfg.StreamTick)
	defer tick.Stop()
	start := time.Now()
	var off int64
	for off < limit {
		select {
		case <-tick.C:
		case <-l.finish:
			limit = off
			continue
		}
		due := min(limit, int64(time.Since(start)/l.cfg.StreamTick)*int64(l.cfg.StreamChunk))
		for off < due {
			n := int(min(due-off, 256<<10))
			if _, err := c.Write(l.pat.At(2*uint64(key), off, n)); err != nil {
				return off, fmt.Errorf("write at %d: %w", off, err)
			}
			off += int64(n)
		}
	}
	l.pat.finals.Store(key, off)
	if err := c.CloseWrite(); err != nil {
		return off, fmt.Errorf("close write: %w", err)
	}
	return off, nil
}

// receive reads and verifies a reply stream until EOF: length bytes
// (openEnded: any number, returned for the caller to check).
func (l *Load) receive(c *net.TCPConn, key uint64, length int64) (int64, error) {
	buf := make([]byte, 32<<10)
	var off int64
	for {
		n, err := c.Read(buf[:min(int64(len(buf)), length-off+1)])
		if n > 0 {
			if off+int64(n) > length {
				return off, fmt.Errorf("%d bytes after %d: %w", n, off, errLong)
			}
			if !l.pat.Match(2*key+1, off, buf[:n]) {
				return off, fmt.Errorf("reply bytes %d-%d: %w", off, off+int64(n), errCorrupt)
			}
			off += int64(n)
			l.streamBytes.Add(int64(n))
		}
		if err == io.EOF {
			if length != openEnded && off < length {
				return off, fmt.Errorf("reply: %d of %d bytes: %w", off, length, errShort)
			}
			return off, nil
		}
		if err != nil {
			return off, fmt.Errorf("read reply at %d: %w", off, err)
		}
	}
}

// connections starts ConnRate short connections a second for Duration,
// each on its own goroutine (a late tick starts every connection due); at
// most 8 seconds' worth are open at once (more are counted as Skipped:
// the generator, not lbctl, fell behind).
func (l *Load) connections(ctx context.Context) {
	tick := time.NewTicker(time.Second / time.Duration(l.cfg.ConnRate))
	defer tick.Stop()
	sem := make(chan struct{}, 8*l.cfg.ConnRate)
	var wg sync.WaitGroup
	defer wg.Wait()
	key := uint32(1 << 24)
	start := time.Now()
	started := int64(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.finish:
			return
		case <-tick.C:
		}
		elapsed := min(time.Since(start), l.cfg.Duration)
		due := int64(elapsed) * int64(l.cfg.ConnRate) / int64(time.Second)
		for ; started < due; started++ {
			select {
			case sem <- struct{}{}:
			default:
				l.report.Skipped.Add(1)
				continue
			}
			key++
			wg.Add(1)
			go func(key uint32) {
				defer wg.Done()
				defer func() { <-sem }()
				began := time.Since(l.start).Seconds()
				err := l.short(ctx, key)
				l.report.Conns.count(err)
				if err != nil {
					l.report.errs.add("connection %d (started at %.1fs): %v", key, began, err)
				}
			}(key)
		}
		if elapsed >= l.cfg.Duration {
			return
		}
	}
}

// short is one short connection: its bytes out, FIN, its reply, EOF.
func (l *Load) short(ctx context.Context, key uint32) error {
	c, stop, err := l.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	defer stop()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	length := int64(l.cfg.ConnBytes)
	msg := append(streamHeader(key, length), l.pat.At(2*uint64(key), 0, int(length))...)
	if _, err := c.Write(msg); err != nil {
		c.SetLinger(0)
		return fmt.Errorf("write: %w", err)
	}
	if err := c.CloseWrite(); err != nil {
		c.SetLinger(0)
		return fmt.Errorf("close write: %w", err)
	}
	if _, err := l.receive(c, uint64(key), length); err != nil {
		c.SetLinger(0)
		return err
	}
	return nil
}

// udpHeader is a datagram's session id and sequence number; the rest is
// the pattern's bytes for that pair.
const (
	udpHeader  = 12
	udpPayload = 64
)

// session runs one UDP session: count numbered datagrams, one per UDPTick,
// from one client socket; then waits up to 2s for the last replies.
func (l *Load) session(ctx context.Context, id uint32, count int) {
	u := &l.report.UDP
	ra, err := net.ResolveUDPAddr("udp", l.cfg.UDPAddr)
	if err != nil {
		u.Failed.Add(1)
		l.report.errs.add("udp session %d: %v", id, err)
		return
	}
	c, err := net.DialUDP("udp", nil, ra)
	if err != nil {
		u.Failed.Add(1)
		l.report.errs.add("udp session %d: %v", id, err)
		return
	}
	defer c.Close()
	c.SetReadBuffer(1 << 20)
	seen := make([]bool, count)
	sentAt := make([]uint16, count) // second of the load each datagram was sent in
	// The sender sets graceEnd when it has sent its last datagram; the
	// reader stops at count replies or, after graceEnd, at a read timeout.
	var graceEnd atomic.Int64
	readDone := make(chan struct{})
	c.SetReadDeadline(time.Now().Add(time.Second))
	go func() {
		defer close(readDone)
		buf := make([]byte, 2048)
		last := int64(-1)
		for got := 0; got < count; {
			n, err := c.Read(buf)
			if err != nil {
				var ne net.Error
				switch {
				case errors.As(err, &ne) && ne.Timeout():
					if g := graceEnd.Load(); g != 0 && time.Now().UnixNano() >= g || ctx.Err() != nil {
						return
					}
					c.SetReadDeadline(time.Now().Add(time.Second))
				case errors.Is(err, syscall.ECONNREFUSED):
					u.Refused.Add(1) // ICMP: no socket where lbctl was
				default:
					l.report.errs.add("udp session %d read: %v", id, err)
					return
				}
				continue
			}
			if n != udpHeader+udpPayload || binary.BigEndian.Uint32(buf) != id {
				u.Corrupt.Add(1)
				continue
			}
			seq := binary.BigEndian.Uint64(buf[4:])
			if seq >= uint64(count) || !l.pat.Match(uint64(id)<<32|seq, 0, buf[udpHeader:n]) {
				u.Corrupt.Add(1)
				continue
			}
			if seen[seq] {
				u.Duplicates.Add(1)
				continue
			}
			seen[seq] = true
			got++
			u.Received.Add(1)
			l.udpReplies.Add(1)
			if int64(seq) < last {
				u.Reordered.Add(1)
			}
			last = max(last, int64(seq))
		}
	}()
	tick := time.NewTicker(l.cfg.UDPTick)
	buf := make([]byte, udpHeader+udpPayload)
	sent := 0
	for seq := 0; seq < count && ctx.Err() == nil; seq++ {
		select {
		case <-tick.C:
		case <-l.finish:
			seq = count // the loop ends
			continue
		}
		binary.BigEndian.PutUint32(buf, id)
		binary.BigEndian.PutUint64(buf[4:], uint64(seq))
		copy(buf[udpHeader:], l.pat.At(uint64(id)<<32|uint64(seq), 0, udpPayload))
		sentAt[seq] = uint16(time.Since(l.start) / time.Second)
		sent = seq + 1
		u.Sent.Add(1) // a datagram lbctl did not take is lost too
		if _, err := c.Write(buf); err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				u.Refused.Add(1)
			} else {
				u.SendErrors.Add(1)
			}
		}
	}
	tick.Stop()
	graceEnd.Store(time.Now().Add(2 * time.Second).UnixNano())
	<-readDone
	u.mu.Lock()
	defer u.mu.Unlock()
	for seq := range sent {
		if !seen[seq] {
			if u.lostAt == nil {
				u.lostAt = map[int]int64{}
			}
			u.lostAt[int(sentAt[seq])]++
		}
	}
}

// UDPOutcome counts the datagrams of UDP sessions.
type UDPOutcome struct {
	Sessions   int
	Sent       atomic.Int64 // datagrams sent
	Received   atomic.Int64 // distinct replies received
	Duplicates atomic.Int64 // replies received twice
	Reordered  atomic.Int64 // replies received after a later one
	Corrupt    atomic.Int64 // replies with other bytes than sent
	Refused    atomic.Int64 // ICMP port unreachable seen by a client
	SendErrors atomic.Int64 // other send errors
	Failed     atomic.Int64 // sessions that could not start

	mu     sync.Mutex
	lostAt map[int]int64 // lost datagrams by the second of the load they were sent in
}

// LostBySecond describes when the lost datagrams were sent: "12s: 40, 13s:
// 2" (seconds since the load started), or "" when none was lost.
func (u *UDPOutcome) LostBySecond() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	secs := make([]int, 0, len(u.lostAt))
	for s := range u.lostAt {
		secs = append(secs, s)
	}
	sort.Ints(secs)
	var parts []string
	for _, s := range secs {
		parts = append(parts, fmt.Sprintf("%ds: %d", s, u.lostAt[s]))
	}
	return strings.Join(parts, ", ")
}

// Lost is the number of datagrams sent without a reply.
func (u *UDPOutcome) Lost() int64 { return u.Sent.Load() - u.Received.Load() }

// LossRate is Lost over Sent (0 without datagrams).
func (u *UDPOutcome) LossRate() float64 {
	if u.Sent.Load() == 0 {
		return 0
	}
	return float64(u.Lost()) / float64(u.Sent.Load())
}

func (u *UDPOutcome) String() string {
	return fmt.Sprintf("%d sessions: sent %d, replies %d, lost %d (%.4f%%), duplicates %d, reordered %d, corrupt %d, refused %d, send errors %d, failed sessions %d",
		u.Sessions, u.Sent.Load(), u.Received.Load(), u.Lost(), 100*u.LossRate(), u.Duplicates.Load(), u.Reordered.Load(),
		u.Corrupt.Load(), u.Refused.Load(), u.SendErrors.Load(), u.Failed.Load())
}

// Report is the outcome of a Load (clients' view) and of its CheckPeers
// (PeerStreams): every count of a failure kind should be zero.
type Report struct {
	Streams     Outcome // long-lived streams, as their clients saw them
	PeerStreams Outcome // streams and short connections, as the peers saw them
	Conns       Outcome // short connections
	Skipped     atomic.Int64
	UDP         UDPOutcome
	Elapsed     time.Duration
	Errors      []string // the first failures, described
	errs        errorLog
}

// Add merges a peer's report into r.
func (r *Report) Add(o *Report) {
	r.PeerStreams.add(&o.PeerStreams)
	r.Errors = append(r.Errors, o.Errors...)
}

func (o *Outcome) add(p *Outcome) {
	o.OK.Add(p.OK.Load())
	o.Refused.Add(p.Refused.Load())
	o.Reset.Add(p.Reset.Load())
	o.Corrupt.Add(p.Corrupt.Load())
	o.Short.Add(p.Short.Load())
	o.Long.Add(p.Long.Load())
	o.Failed.Add(p.Failed.Load())
}

// Failed reports whether lbctl lost anything: a failed stream or
// connection on either side, a corrupt or duplicated datagram, a session
// that could not start, or UDP loss at maxLoss (a fraction) or more.
func (r *Report) Failed(maxLoss float64) bool {
	u := &r.UDP
	return r.Streams.Failures() > 0 || r.PeerStreams.Failures() > 0 || r.Conns.Failures() > 0 ||
		u.Corrupt.Load() > 0 || u.Duplicates.Load() > 0 || u.Failed.Load() > 0 ||
		(u.Sent.Load() > 0 && u.LossRate() >= maxLoss)
}

func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "streams (clients):     %s\n", r.Streams.String())
	fmt.Fprintf(&b, "streams + conns (peers): %s\n", r.PeerStreams.String())
	fmt.Fprintf(&b, "short connections:     %s; skipped by the generator %d\n", r.Conns.String(), r.Skipped.Load())
	fmt.Fprintf(&b, "udp:                   %s\n", r.UDP.String())
	if lost := r.UDP.LostBySecond(); lost != "" {
		fmt.Fprintf(&b, "udp lost, by second of the load they were sent in: %s\n", lost)
	}
	fmt.Fprintf(&b, "elapsed:               %v\n", r.Elapsed.Round(time.Millisecond))
	for _, e := range r.Errors {
		fmt.Fprintf(&b, "  %s\n", e)
	}
	return b.String()
}

// RaiseFileLimit raises this process's RLIMIT_NOFILE soft limit to its
// hard limit (a load of thousands of streams needs several descriptors
// each) and returns the new soft limit.
func RaiseFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, fmt.Errorf("raise RLIMIT_NOFILE: %w", err)
		}
	}
	return rl.Cur, nil
}
