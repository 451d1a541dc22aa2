package health

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// testServer is a loopback TCP server that runs handle for every connection
// and, on Close, closes the listener and every open connection and waits for
// its goroutines. It is ready to accept when newTestServer returns.
type testServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	once  sync.Once
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func newTestServer(t *testing.T, addr string, handle func(net.Conn)) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	s := &testServer{ln: ln, conns: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go s.accept(handle)
	t.Cleanup(s.Close)
	return s
}

func (s *testServer) accept(handle func(net.Conn)) {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[conn] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, conn)
				s.mu.Unlock()
				conn.Close()
			}()
			handle(conn)
		}()
	}
}

func (s *testServer) Addr() string { return s.ln.Addr().String() }

func (s *testServer) Close() {
	s.once.Do(func() {
		s.ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
}

// closeAtOnce accepts and closes: enough for a tcp check.
func closeAtOnce(net.Conn) {}

// silent accepts and never answers until the peer or the server closes.
func silent(conn net.Conn) { io.Copy(io.Discard, conn) }

// pingPong is a line protocol: "PING" gets "+PONG", anything else "-ERR".
func pingPong(conn net.Conn) {
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		reply := "-ERR unknown command\r\n"
		if strings.TrimSpace(line) == "PING" {
			reply = "+PONG\r\n"
		}
		if _, err := io.WriteString(conn, reply); err != nil {
			return
		}
	}
}

// httpStatus answers every request with the status code status returns
// and hands the parsed request to seen (when not nil).
func httpStatus(status func() int, seen func(*http.Request)) func(net.Conn) {
	return func(conn net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(conn))
		if err != nil {
			return
		}
		if seen != nil {
			seen(req)
		}
		code := status()
		fmt.Fprintf(conn, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", code, http.StatusText(code))
	}
}

// rawReply writes reply to the first bytes of a request, then closes.
func rawReply(reply string) func(net.Conn) {
	return func(conn net.Conn) {
		buf := make([]byte, 1024)
		if _, err := conn.Read(buf); err != nil {
			return
		}
		io.WriteString(conn, reply)
	}
}

// udpServer answers datagrams with reply(payload); a nil reply sends nothing.
type udpServer struct {
	pc   net.PacketConn
	done chan struct{}
}

func newUDPServer(t *testing.T, reply func([]byte) []byte) *udpServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen udp: %v", err)
	}
	s := &udpServer{pc: pc, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out := reply(buf[:n]); out != nil {
				pc.WriteTo(out, from)
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-s.done })
	return s
}

func (s *udpServer) Addr() string { return s.pc.LocalAddr().String() }

// closedAddr returns a loopback address nobody listens on (for the given
// network): a TCP port held bound until the test ends (lbtest.ClosedPort),
// a UDP port bound and released.
func closedAddr(t *testing.T, network string) string {
	t.Helper()
	var addr string
	switch network {
	case "tcp":
		addr = lbtest.ClosedPort(t)
	case "udp":
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = pc.LocalAddr().String()
		pc.Close()
	}
	return addr
}

// recorder collects a Checker's callbacks and lets a test wait on them.
type recorder struct {
	mu      sync.Mutex
	results []result
	events  []Event
	// checkOf[i] is the number of the check (1-based, per target) that
	// caused events[i]: onChange runs before onResult for the same check.
	checkOf []int
	signal  chan struct{} // cap 1: something was recorded
}

type result struct {
	target  string
	outcome Outcome
	err     error
	took    time.Duration // the probe's duration as reported
	at      time.Time
}

func newRecorder() *recorder { return &recorder{signal: make(chan struct{}, 1)} }

func (r *recorder) onResult(target string, o Outcome, err error, took time.Duration) {
	r.mu.Lock()
	r.results = append(r.results, result{target, o, err, took, time.Now()})
	r.mu.Unlock()
	r.notify()
}

func (r *recorder) onChange(ev Event) {
	r.mu.Lock()
	n := 1
	for _, x := range r.results {
		if x.target == ev.Target {
			n++
		}
	}
	r.events = append(r.events, ev)
	r.checkOf = append(r.checkOf, n)
	r.mu.Unlock()
	r.notify()
}

func (r *recorder) notify() {
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

func (r *recorder) checker() *Checker { return NewChecker(r.onResult, r.onChange) }

// snapshot returns copies of what was recorded for target ("" = all).
func (r *recorder) snapshot(target string) ([]result, []Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var res []result
	for _, x := range r.results {
		if target == "" || x.target == target {
			res = append(res, x)
		}
	}
	var evs []Event
	for _, e := range r.events {
		if target == "" || e.Target == target {
			evs = append(evs, e)
		}
	}
	return res, evs
}

// waitUntil waits until cond holds for target's records, or fails the test
// after d, naming what it waited for.
func (r *recorder) waitUntil(t *testing.T, d time.Duration, target, what string, cond func([]result, []Event) bool) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		res, evs := r.snapshot(target)
		if cond(res, evs) {
			return
		}
		select {
		case <-r.signal:
		case <-deadline.C:
			t.Fatalf("%s: not within %v; results %d, events %+v", what, d, len(res), evs)
		}
	}
}

// waitEvents waits for target's n-th event and returns all events so far.
func (r *recorder) waitEvents(t *testing.T, d time.Duration, target string, n int) []Event {
	t.Helper()
	r.waitUntil(t, d, target, fmt.Sprintf("event #%d of %s", n, target), func(_ []result, evs []Event) bool { return len(evs) >= n })
	_, evs := r.snapshot(target)
	return evs
}

// waitResults waits for target's n-th check result.
func (r *recorder) waitResults(t *testing.T, d time.Duration, target string, n int) []result {
	t.Helper()
	r.waitUntil(t, d, target, fmt.Sprintf("result #%d of %s", n, target), func(res []result, _ []Event) bool { return len(res) >= n })
	res, _ := r.snapshot(target)
	return res
}

// resultsThrough waits for the check that caused target's i-th event (0-based)
// to be reported and returns target's results up to and including it.
func (r *recorder) resultsThrough(t *testing.T, target string, i int) []result {
	t.Helper()
	r.mu.Lock()
	n, k := 0, -1
	for j, e := range r.events {
		if e.Target == target {
			if k++; k == i {
				n = r.checkOf[j]
				break
			}
		}
	}
	r.mu.Unlock()
	if n == 0 {
		t.Fatalf("no event #%d for %s", i, target)
	}
	return r.waitResults(t, 10*time.Second, target, n)[:n]
}
