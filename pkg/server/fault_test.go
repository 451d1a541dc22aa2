package server

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// Faults lbctl must survive: backends that stall, reset, close or never
// answer a SYN; clients that hold connections and send nothing; running out
// of file descriptors.

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestBackendNeverReads: a backend that accepts and never reads. TCP flow
// control stops the client (lbctl buffers nothing beyond one small read
// buffer: its memory stays flat), and the idle timeout ends the connection.
func TestBackendNeverReads(t *testing.T) {
	stop := make(chan struct{})
	be := lbtest.NewTCP(t, func(c *net.TCPConn) { <-stop })
	t.Cleanup(func() { close(stop) }) // runs before the backend's Close
	// The idle clock starts when lbctl last moves a byte, while the client
	// still fills its own buffers: the timeout must outlast that, and the
	// 300ms that prove the stall, on a loaded machine too.
	const idle = 3 * time.Second
	h := startServer(t, listenerTOML("l", "p", fmt.Sprintf("idle_timeout = %q", idle))+poolTOML("p", "", be.Addr)+noHealth)
	heapBefore := heapInUse()

	c := h.dial("l")
	opened := time.Now()
	chunk := make([]byte, 256<<10)
	var written int64
	for {
		// A write that can't finish within 300ms means the window is shut
		// all the way back to the client.
		c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Write(chunk)
		written += int64(n)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("write failed after %d bytes before flow control stopped it: %v", written, err)
		}
		if written > 256<<20 {
			t.Fatalf("%d bytes accepted toward a backend that reads nothing: lbctl is buffering", written)
		}
	}
	stalled := time.Now()
	// What the client got rid of sits in socket buffers (client send,
	// lbctl receive and send, backend receive), not in lbctl's heap.
	if grown := int64(heapInUse()) - int64(heapBefore); grown > 8<<20 {
		t.Errorf("lbctl's heap grew by %d bytes while %d bytes were stuck", grown, written)
	}
	t.Logf("flow control stopped the client after %d KiB", written>>10)
	if written > 128<<20 {
		t.Errorf("%d bytes in flight toward a stalled backend", written)
	}

	// Nothing moves, so the idle timeout closes both sides.
	c.SetWriteDeadline(time.Now().Add(idle + 5*time.Second))
	for {
		if _, err := c.Write(chunk); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the stalled connection was not closed within the idle timeout")
			}
			break
		}
	}
	// lbctl's idle clock starts when it last moved a byte, which may be a
	// while before the client's buffers filled up and its writes stopped.
	if d := time.Since(stalled); d > idle+3*time.Second {
		t.Errorf("stalled connection closed %v after it stalled, want within the idle timeout %v", d, idle)
	}
	if d := time.Since(opened); d < idle {
		t.Errorf("connection closed %v after it opened, before the idle timeout %v", d, idle)
	}
	lbtest.Eventually(t, 10*time.Second, func() bool { return h.srv.Status().Listeners[0].Active == 0 })
}

// TestSlowloris: clients that open connections and send nothing hold a
// slot until the idle timeout, and no more than max_connections_per_client
// of them at once.
func TestSlowloris(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	// The silent connections must outlast the seven dials and the round
	// trip below, however loaded the machine.
	const idle = 3 * time.Second
	h := startServer(t, listenerTOML("l", "p", fmt.Sprintf("idle_timeout = %q\nmax_connections_per_client = 4", idle))+
		poolTOML("p", "", be.Addr)+noHealth)
	addr := h.addr("l")
	start := time.Now()
	var silent []*net.TCPConn
	for i := 0; i < 4; i++ {
		silent = append(silent, dialFrom(t, "127.0.0.2", addr))
	}
	for i := 0; i < 3; i++ {
		closedAtOnce(t, dialFrom(t, "127.0.0.2", addr)) // over the limit
	}
	if !served(t, dialFrom(t, "127.0.0.3", addr)) {
		t.Fatal("another client was not served while one held its slots")
	}
	for _, c := range silent {
		got, _ := lbtest.ReadAllTimeout(t, c, idle+10*time.Second)
		if len(got) != 0 {
			t.Fatalf("silent connection got %q", got)
		}
	}
	if d := time.Since(start); d < idle || d > idle+3*time.Second {
		t.Fatalf("silent connections closed after %v, want about idle_timeout %v", d, idle)
	}
	// The client sees the close a moment before lbctl gives the slot back:
	// a dial in that moment would be refused, one rejection too many.
	lbtest.Eventually(t, 10*time.Second, func() bool { return h.srv.Status().Listeners[0].Active == 0 },
		"the silent connections are still active")
	lbtest.Eventually(t, 10*time.Second, func() bool {
		c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		return served(t, c)
	}, "the slots of the silent connections were not freed")
	if got := h.rejected("l", "client_limit"); got != 3 {
		t.Fatalf("client_limit rejections %v, want 3", got)
	}
}

// outcome of one request through a pool with a faulty backend.
type outcome struct {
	ok  bool // the full echo came back
	err string
	d   time.Duration
}

// request sends one line through addr and reads the echo; a close or a
// reset is an outcome too, as long as it comes promptly.
func request(addr string, i int) outcome {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return outcome{err: "dial: " + err.Error(), d: time.Since(start)}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line := fmt.Sprintf("request %d\n", i)
	c.Write([]byte(line))
	got, err := bufio.NewReader(c).ReadString('\n')
	o := outcome{ok: got == line, d: time.Since(start)}
	if err != nil {
		o.err = err.Error()
	}
	return o
}

func TestBackendFaults(t *testing.T) {
	// Long enough that a connect to the live backend never times out on a
	// loaded machine: the test would lose a request that must succeed.
	const connectTimeout = time.Second
	for _, tc := range []struct {
		name string
		bad  func(t *testing.T) string // the faulty backend's address
		// wantOK is how many of 20 round-robin requests must succeed: the
		// faulty backend's share is lost when the fault strikes after the
		// connect (nothing can be retried once bytes flowed), saved by
		// failover when the connect itself fails.
		wantOK int
	}{
		{"resets mid-stream", func(t *testing.T) string {
			return lbtest.NewTCP(t, func(c *net.TCPConn) {
				c.Read(make([]byte, 4))
				c.Write([]byte("req"))
				c.SetLinger(0)
				c.Close()
			}).Addr
		}, 10},
		{"accepts and closes at once", func(t *testing.T) string {
			return lbtest.NewTCP(t, func(c *net.TCPConn) {}).Addr
		}, 10},
		{"blackholes SYNs", func(t *testing.T) string { return lbtest.Blackhole(t) }, 20},
		{"refuses connections", func(t *testing.T) string { return lbtest.ClosedPort(t) }, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			good := lbtest.NewTCP(t, lbtest.Echo)
			bad := tc.bad(t)
			h := startServer(t, listenerTOML("l", "p", "")+
				poolTOML("p", fmt.Sprintf("connect_timeout = %q\nretries = 1\nmax_fails = 0", connectTimeout), bad, good.Addr)+noHealth)
			var wg sync.WaitGroup
			results := make([]outcome, 20)
			for i := range results {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					results[i] = request(h.addr("l"), i)
				}(i)
			}
			wg.Wait()
			ok := 0
			for i, r := range results {
				if r.ok {
					ok++
				}
				// Prompt: a failed connect costs one connect_timeout before
				// the failover; anything else is immediate.
				if r.d > connectTimeout+3*time.Second {
					t.Errorf("request %d took %v (ok %v, %s)", i, r.d, r.ok, r.err)
				}
			}
			if ok != tc.wantOK {
				t.Errorf("%d of 20 requests succeeded, want %d; results %+v", ok, tc.wantOK, results)
			}
			if n := good.Accepted(); n < 10 {
				t.Errorf("the good backend carried %d connections", n)
			}
			lbtest.Eventually(t, 10*time.Second, func() bool { return h.srv.Status().Listeners[0].Active == 0 })
		})
	}

	t.Run("the only backend blackholes SYNs", func(t *testing.T) {
		h := startServer(t, listenerTOML("l", "p", "")+
			poolTOML("p", fmt.Sprintf("connect_timeout = %q\nretries = 1\nmax_fails = 0", connectTimeout), lbtest.Blackhole(t))+noHealth)
		r := request(h.addr("l"), 0)
		if r.ok || r.d < connectTimeout || r.d > 2*connectTimeout+time.Second {
			t.Fatalf("outcome %+v, want a close after the connect timeout", r)
		}
		lbtest.Eventually(t, 10*time.Second, func() bool { return h.rejected("l", "backend_unavailable") == 1 })
	})
}

// The descriptor exhaustion test runs lbctl's server in a child process
// (this test binary, re-executed) whose RLIMIT_NOFILE is low and whose
// spare descriptors are used up, so the parent can drive it into EMFILE and
// measure its CPU time meanwhile.
const fdChildEnv = "LBCTL_TEST_FD_CHILD"

// fdChild is the child's side: it serves a TCP listener in front of the
// backend named by the environment, prints its address, leaves exactly
// 2*served+1 descriptors free (each proxied connection takes two), and
// obeys stdin: "take" opens one more descriptor; EOF exits.
func fdChild(backend string) {
	const served = 3
	ChildLimitFDs(256)
	// A passive ejection would last the whole test: a dial that fails for
	// want of a descriptor must not count against the backend.
	srv := ChildServer(listenerTOML("l", "p", "")+poolTOML("p", "max_fails = 1\nfail_timeout = \"1h\"", backend)+noHealth,
		ChildLogger(), metrics.New(prometheus.NewRegistry()))
	fill := childFillFDs()
	for _, f := range fill[len(fill)-(2*served+1):] {
		f.Close()
	}
	fill = fill[:len(fill)-(2*served+1)]
	fmt.Printf("listening %s\n", srv.Listeners()["l"])
	ChildObey(func(cmd string) {
		if cmd == "take" {
			f, err := os.Open(os.DevNull)
			if err != nil {
				ChildFatal(err)
			}
			fill = append(fill, f)
			fmt.Println("took")
		}
	})
}

// cpuTicks is a process's user+system CPU time in clock ticks.
func cpuTicks(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return utime + stime
}

func TestFDExhaustion(t *testing.T) {
	if be := os.Getenv(fdChildEnv); be != "" {
		fdChild(be)
		return
	}
	if runtime.GOOS != "linux" {
		t.Skip("needs /proc and Linux accept semantics")
	}
	be := lbtest.NewTCP(t, lbtest.Echo)
	child := StartChild(t, "^TestFDExhaustion$", fdChildEnv+"="+be.Addr)
	addr := strings.TrimPrefix(child.WaitLine("listening "), "listening ")

	// Three connections fit; each holds two descriptors in the child,
	// leaving one free.
	var held []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if !served(t, c) {
			t.Fatalf("connection %d not served:\n%s", i, child.Stderr())
		}
		held = append(held, c)
	}
	// The fourth is accepted with the last descriptor; its backend dial
	// fails for want of one: the client is closed at once, and the backend
	// is not blamed.
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	closedAtOnce(t, c)
	c.Close()

	// Now take the last descriptor: accept(2) itself fails with EMFILE.
	child.Send("take")
	child.WaitLine("took")
	var pending []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second) // completed by the kernel's backlog
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.Write([]byte("?"))
		pending = append(pending, c)
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		logs := child.Stderr()
		return strings.Contains(logs, "accept failed, backing off"), "the child did not report the accept failure:\n" + logs
	})

	// The starved accept loop must back off, not spin: measure the child's
	// CPU time over one second of exhaustion.
	before := cpuTicks(t, child.Pid())
	time.Sleep(time.Second) // the measurement window
	used := cpuTicks(t, child.Pid()) - before
	if used > 15 { // ticks of 10ms: 15% of one core
		t.Errorf("the child used %d ticks of CPU in 1s while out of descriptors: the accept loop spins", used)
	}
	if n := strings.Count(child.Stderr(), "accept failed, backing off"); n != 1 {
		t.Errorf("the condition was logged %d times, want once:\n%s", n, child.Stderr())
	}

	// Descriptors free up, as many as the waiting connections need (the
	// accept loop takes one for each before their dials take the other):
	// every connection waiting in the backlog is served.
	for _, c := range held {
		c.Close()
	}
	for i, c := range pending {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil || b[0] != '?' {
			t.Fatalf("connection %d waiting in the backlog was not served once descriptors freed up: %q %v\n%s", i, b, err, child.Stderr())
		}
	}
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		logs := child.Stderr()
		return strings.Contains(logs, "accepting again"), "the recovery was not logged:\n" + logs
	})
	t.Logf("child CPU during 1s of exhaustion: %d ticks", used)
}
