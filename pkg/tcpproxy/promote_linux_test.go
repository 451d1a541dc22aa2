package tcpproxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/tcpproxy"
)

// repeatSink is a backend that checks that it receives chunk over and
// over, and reports how many bytes it got and whether they all matched.
type repeatSink struct {
	chunk []byte
	got   chan repeatResult
}

type repeatResult struct {
	n   int64
	ok  bool
	err error
}

func newRepeatSink(chunk []byte) *repeatSink {
	return &repeatSink{chunk: chunk, got: make(chan repeatResult, 1)}
}

// result waits for the backend's account of the stream.
func (s *repeatSink) result(t *testing.T) repeatResult {
	t.Helper()
	select {
	case r := <-s.got:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("the backend did not see the end of the stream")
		return repeatResult{}
	}
}

func (s *repeatSink) serve(c *net.TCPConn) {
	buf := make([]byte, 256<<10)
	var n int64
	ok := true
	var err error
	for {
		var k int
		k, err = c.Read(buf)
		for i := 0; i < k && ok; {
			off := int(n % int64(len(s.chunk)))
			m := min(k-i, len(s.chunk)-off)
			ok = bytes.Equal(buf[i:i+m], s.chunk[off:off+m])
			i += m
			n += int64(m)
		}
		if err != nil {
			break
		}
	}
	if errors.Is(err, io.EOF) {
		err = nil
	}
	c.CloseWrite()
	s.got <- repeatResult{n, ok, err}
}

// streamUntil writes chunk to c over and over, a few a millisecond
// apart (pacing the transfer, not synchronising), until stop is closed,
// at most max times or for limit, then shuts down its write side. It
// returns how many bytes it wrote.
func streamUntil(c *net.TCPConn, chunk []byte, stop <-chan struct{}, max int, limit time.Duration) <-chan int64 {
	sent := make(chan int64, 1)
	go func() {
		var n int64
		end := time.Now().Add(limit)
		stopped := func() bool {
			select {
			case <-stop:
				return true
			default:
				return false
			}
		}
		for i := 0; i < max && time.Now().Before(end) && !stopped(); i++ {
			k, err := c.Write(chunk)
			n += int64(k)
			if err != nil {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		c.CloseWrite()
		sent <- n
	}()
	return sent
}

// TestLoopBulkOutOfDescriptors: a bulk transfer that cannot leave the
// loop for want of descriptors (its socket cannot become a *net.TCPConn)
// stays in the loop, loses nothing, and splices once descriptors are
// there again.
func TestLoopBulkOutOfDescriptors(t *testing.T) {
	chunk := pattern(1<<20, 11)
	sink := newRepeatSink(chunk)
	c, h, ends := openInLoop(t, sink.serve)
	before := tcpproxy.PromoteFailures()
	lift := tcpproxy.FailDups(t, 0, -1)
	// It tries again after a failed try (a second later). (Tests in this
	// package do not run in parallel: the fault and the count are the
	// process's.)
	bulkThroughShortage(t, c, h, ends, sink, chunk, func() (bool, string) {
		n := tcpproxy.PromoteFailures() - before
		return n >= 2, fmt.Sprintf("%d failed tries to leave the loop, want 2 or more", n)
	}, lift)
}

// openInLoop opens a connection through a proxy to a backend that
// serves it, and skips the test unless an event loop serves it.
func openInLoop(t *testing.T, serve func(*net.TCPConn)) (*net.TCPConn, tcpproxy.Conn, chan tcpproxy.End) {
	t.Helper()
	be := lbtest.NewTCP(t, serve)
	c, h, ends := makeSide(t, be.Addr, 0, 0).open(t)
	if !tcpproxy.InLoop(h) {
		t.Skip("no event loop serves this connection (LBCTL_TCP_ENGINE)")
	}
	return c, h, ends
}

// bulkThroughShortage streams chunk from c, through the connection h,
// to sink while descriptors are short: once failed says the shortage was
// met, the connection must still be in its loop; then end lifts the
// shortage, and the connection must leave the loop. Every byte must reach
// the backend, in order, and the rest must be spliced.
func bulkThroughShortage(t *testing.T, c *net.TCPConn, h tcpproxy.Conn, ends chan tcpproxy.End, sink *repeatSink,
	chunk []byte, failed func() (bool, string), end func()) {
	t.Helper()
	stop := make(chan struct{})
	sent := streamUntil(c, chunk, stop, 20_000, 60*time.Second)
	go io.Copy(io.Discard, c)
	lbtest.Until(t, 20*time.Second, failed)
	if !tcpproxy.InLoop(h) {
		t.Fatal("the connection left the loop though its socket could not be converted")
	}
	end()
	lbtest.Until(t, 20*time.Second, func() (bool, string) {
		return !tcpproxy.InLoop(h), "still in the loop with descriptors to spare again"
	})
	close(stop)
	n := <-sent
	waitEnd(t, ends, tcpproxy.EndDone)
	r := sink.result(t)
	if r.err != nil || !r.ok || r.n != n {
		t.Fatalf("backend got %d bytes (in order: %v, err %v), want the %d sent", r.n, r.ok, r.err, n)
	}
	if in, _ := tcpproxy.Bursts(h); in == 0 {
		t.Fatal("no splice burst after the connection left the loop")
	}
}

// TestDetachOutOfDescriptors: a detach that cannot take the connection
// out of its loop fails as ErrNotDetached, and the connection goes on.
func TestDetachOutOfDescriptors(t *testing.T) {
	c, h, ends := openInLoop(t, lbtest.Echo)
	echo := func(msg string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(c, b); err != nil || string(b) != msg {
			t.Fatalf("echo of %q: %q %v", msg, b, err)
		}
	}
	echo("before")
	before := tcpproxy.PromoteFailures()
	tcpproxy.FailDups(t, 0, 1)
	detachFailsInLoop(t, h, before)
	echo("after")
	c.CloseWrite()
	if rest, err := lbtest.ReadAllTimeout(t, c, 10*time.Second); err != nil || len(rest) != 0 {
		t.Fatalf("end of stream: %q %v", rest, err)
	}
	waitEnd(t, ends, tcpproxy.EndDone)
}

// TestLoopBulkRealEMFILE is TestLoopBulkOutOfDescriptors with the
// process really out of descriptors: in a child process, whose free
// descriptors are taken while the transfer starts, then given back. With
// none left the duplicate fails; with one, net.FileConn's own does, and
// the duplicate made must be closed without touching the socket.
func TestLoopBulkRealEMFILE(t *testing.T) {
	if os.Getenv("LBCTL_TEST_EMFILE") == "" {
		if testing.Short() {
			t.Skip("runs in a child process")
		}
		cmd := exec.Command(os.Args[0], "-test.run", "^TestLoopBulkRealEMFILE$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "LBCTL_TEST_EMFILE=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestLoopBulkRealEMFILE") {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	t.Run("none free", func(t *testing.T) { bulkRealEMFILE(t, 0) })
	t.Run("one free", func(t *testing.T) { bulkRealEMFILE(t, 1) })
}

func bulkRealEMFILE(t *testing.T, spare int) {
	chunk := pattern(1<<20, 12)
	sink := newRepeatSink(chunk)
	c, h, ends := openInLoop(t, sink.serve)
	// Take every free descriptor (a low limit bounds how many).
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(lbtest.OpenFDs(t)) + 64
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) })
	var held []int
	release := func() {
		for _, fd := range held {
			syscall.Close(fd)
		}
		held = nil
	}
	defer release()
	for {
		fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatal(err)
			}
			break
		}
		held = append(held, fd)
	}
	for range spare {
		syscall.Close(held[len(held)-1])
		held = held[:len(held)-1]
	}
	before := tcpproxy.PromoteFailures()
	bulkThroughShortage(t, c, h, ends, sink, chunk, func() (bool, string) {
		return tcpproxy.PromoteFailures() > before, "no failed try to leave the loop yet"
	}, release)
}

// detachFailsInLoop checks that a detach of h, with conversions failing,
// fails as ErrNotDetached after one failed try (since before) and leaves
// h in its loop.
func detachFailsInLoop(t *testing.T, h tcpproxy.Conn, before int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := h.Detach(ctx); !errors.Is(err, tcpproxy.ErrNotDetached) {
		t.Fatalf("detach without spare descriptors: %v, want ErrNotDetached", err)
	}
	if n := tcpproxy.PromoteFailures() - before; n != 1 || !tcpproxy.InLoop(h) {
		t.Fatalf("%d failed tries, in the loop %v: want 1 and still in the loop", n, tcpproxy.InLoop(h))
	}
}

// TestLoopAcceptedOutOfDescriptors: a connection whose client socket the
// loop accepted converts its client socket, then fails on the backend's:
// the client's duplicate is closed without touching the socket, the
// connection stays in the loop and goes on, and a bulk transfer leaves
// the loop once descriptors are there again.
func TestLoopAcceptedOutOfDescriptors(t *testing.T) {
	echo := lbtest.NewTCP(t, lbtest.Echo)
	r := newLoopRig(t, 5*time.Second, 0, nil, echo.Addr)
	a := newAcceptRig(t, r)
	base := openSockets(t)
	c := a.dial(t)
	roundTrip := func(msg []byte) {
		t.Helper()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		errc := make(chan error, 1)
		go func() {
			_, err := c.Write(msg)
			errc <- err
		}()
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo of %d bytes: %v (equal %v)", len(msg), err, bytes.Equal(got, msg))
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	roundTrip([]byte("hello"))
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		return r.reg.Len() == 1, fmt.Sprintf("%d connections in the registry, want 1", r.reg.Len())
	})
	h := r.reg.Conns(nil)[0]
	if !tcpproxy.InLoop(h) {
		t.Fatal("a connection the loop accepted is not served by it")
	}
	settled := openSockets(t)

	before := tcpproxy.PromoteFailures()
	lift := tcpproxy.FailDups(t, 1, -1) // the client's converts, the backend's does not
	detachFailsInLoop(t, h, before)
	if n := openSockets(t); n > settled { // fewer: another test's socket closed meanwhile
		t.Fatalf("%d sockets open after the failed try, %d before: the client's duplicate was not closed", n, settled)
	}
	roundTrip([]byte("still here"))

	// A failed try holds the next one off for a second (promoteRetry):
	// bulk echoes go on through the loop until then.
	lift()
	bulk := pattern(1<<20, 13)
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; tcpproxy.InLoop(h); i++ {
		if i == 300 || time.Now().After(deadline) {
			t.Fatalf("still in the loop after %d bulk echoes with descriptors to spare", i)
		}
		roundTrip(bulk)
	}
	roundTrip(bulk)
	c.CloseWrite()
	if rest, err := lbtest.ReadAllTimeout(t, c, 10*time.Second); err != nil || len(rest) != 0 {
		t.Fatalf("end of stream: %q %v", rest, err)
	}
	waitEnd(t, a.ends, tcpproxy.EndDone)
	c.Close()
	lbtest.Until(t, 5*time.Second, func() (bool, string) {
		n := openSockets(t)
		return n <= base, fmt.Sprintf("%d sockets open, %d before", n, base)
	})
}
