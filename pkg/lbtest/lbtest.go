// Package lbtest has httptest-style helpers for lbctl's tests: TCP backends
// on loopback that are ready when returned, and waits that poll a condition
// with a deadline instead of sleeping.
//
//	be := lbtest.NewTCP(t, lbtest.Echo)      // listening on 127.0.0.1:port
//	... dial be.Addr ...
//	lbtest.Eventually(t, 2*time.Second, func() bool { return be.Accepted() == 3 })
//
// Backends close, and wait for their goroutines, in t.Cleanup.
package lbtest

import (
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Handler serves one backend connection. It must return when the
// connection is closed.
type Handler func(c *net.TCPConn)

// Backend is a TCP server on loopback running a Handler per connection.
type Backend struct {
	Addr     string
	ln       *net.TCPListener
	handler  Handler
	accepted atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[*net.TCPConn]struct{}
	closed   bool
}

// NewTCP starts a backend on 127.0.0.1 with an ephemeral port.
func NewTCP(t testing.TB, h Handler) *Backend {
	t.Helper()
	return NewTCPAt(t, "127.0.0.1:0", h)
}

// NewTCPAt starts a backend on addr (e.g. to restart one on its old port).
func NewTCPAt(t testing.TB, addr string, h Handler) *Backend {
	t.Helper()
	var ln net.Listener
	var err error
	// A port just released may linger briefly; retry within a deadline.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err = net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("backend listen %s: %v", addr, err)
	}
	b := &Backend{Addr: ln.Addr().String(), ln: ln.(*net.TCPListener), handler: h, conns: map[*net.TCPConn]struct{}{}}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(b.Close)
	return b
}

func (b *Backend) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.AcceptTCP()
		if err != nil {
			return
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			c.Close()
			return
		}
		b.conns[c] = struct{}{}
		b.wg.Add(1)
		b.mu.Unlock()
		b.accepted.Add(1)
		go func() {
			defer b.wg.Done()
			b.handler(c)
			c.Close()
			b.mu.Lock()
			delete(b.conns, c)
			b.mu.Unlock()
		}()
	}
}

// Accepted is the number of connections accepted so far.
func (b *Backend) Accepted() int64 { return b.accepted.Load() }

// Port is the backend's port.
func (b *Backend) Port() int {
	_, p, _ := net.SplitHostPort(b.Addr)
	n, _ := strconv.Atoi(p)
	return n
}

// Close stops the backend: the listener and every open connection (with a
// reset, as a crashed server would), then waits for the handlers.
func (b *Backend) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	b.ln.Close()
	for c := range b.conns {
		c.SetLinger(0)
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// Echo writes back everything it reads; at EOF it shuts its write side.
func Echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
	io.Copy(io.Discard, c)
}

// Named answers every connection with its name and closes: a way to see
// which backend served a connection.
func Named(name string) Handler {
	return func(c *net.TCPConn) {
		c.Write([]byte(name))
		c.CloseWrite()
		io.Copy(io.Discard, c)
	}
}

// Silent accepts and holds the connection open without reading or writing
// until the peer closes it.
func Silent(c *net.TCPConn) {
	var b [1]byte
	c.Read(b[:])
	io.Copy(io.Discard, c)
}

// HashingEcho echoes like Echo and, at EOF, reports the SHA-256 of what it
// received and the byte count on sums.
func HashingEcho(sums chan<- Sum) Handler {
	return func(c *net.TCPConn) {
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(c, h), c)
		c.CloseWrite()
		var s Sum
		copy(s.SHA256[:], h.Sum(nil))
		s.N, s.Err = n, err
		sums <- s
	}
}

// Sum is a digest of a stream.
type Sum struct {
	SHA256 [32]byte
	N      int64
	Err    error
}

// Eventually polls cond every few milliseconds until it is true or timeout
// passes, then fails the test. msgAndArgs, a format and its arguments, are
// formatted only then, but the arguments were evaluated when Eventually
// was called: to report values read while polling, use Until.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msgAndArgs ...any) {
	t.Helper()
	if poll(timeout, cond) {
		return
	}
	if len(msgAndArgs) > 0 {
		t.Fatalf("condition not met within %v: "+msgAndArgs[0].(string), append([]any{timeout}, msgAndArgs[1:]...)...)
	}
	t.Fatalf("condition not met within %v", timeout)
}

// Until polls check every few milliseconds until it reports done or
// timeout passes, then fails the test with the state the last check
// described: the values seen at the end of the wait, not at its start.
//
//	lbtest.Until(t, 2*time.Second, func() (bool, string) {
//		in, out := counter(m.BytesIn), counter(m.BytesOut)
//		return in == 5 && out == 5, fmt.Sprintf("bytes in %v out %v, want 5 each way", in, out)
//	})
func Until(t testing.TB, timeout time.Duration, check func() (done bool, state string)) {
	t.Helper()
	var last string
	if !poll(timeout, func() (done bool) {
		done, last = check()
		return done
	}) {
		t.Fatalf("condition not met within %v: %s", timeout, last)
	}
}

// poll calls cond until it is true (then returns true) or timeout has
// passed (false). cond runs at least once, and once at or after the
// deadline, so a test descheduled during the wait still gets a last look.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		late := time.Now().After(deadline)
		if cond() {
			return true
		}
		if late {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// OpenFDs counts this process's open file descriptors.
func OpenFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// ReadAllTimeout reads c until EOF or error, failing the test if that takes
// longer than timeout.
func ReadAllTimeout(t testing.TB, c net.Conn, timeout time.Duration) ([]byte, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read did not end within %v (got %d bytes)", timeout, len(b))
	}
	return b, err
}
