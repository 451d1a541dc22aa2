package health

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// slack is what a loaded CI machine (-race, 2 cores, busy neighbours) may
// add to a deadline: a margin of seconds, so an upper bound fails only when
// a check outlives its timeout, not when the test was descheduled.
const slack = 2 * time.Second

// liveTimeout bounds checks against backends that answer: seconds, so a
// loaded machine cannot turn an answer into a timeout (the default is 1s).
const liveTimeout = 5 * time.Second

func mustProber(t *testing.T, s Spec) Prober {
	t.Helper()
	p, err := NewProber(s)
	if err != nil {
		t.Fatalf("NewProber(%+v): %v", s, err)
	}
	return p
}

func TestProbeTCP(t *testing.T) {
	live := newTestServer(t, "127.0.0.1:0", closeAtOnce)
	p := mustProber(t, Spec{Kind: KindTCP, Timeout: liveTimeout})

	if err := p.Probe(context.Background(), live.Addr()); err != nil {
		t.Errorf("listening backend: got %v, want success", err)
	}
	err := p.Probe(context.Background(), closedAddr(t, "tcp"))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("closed port: got %v, want connection refused", err)
	}
}

func TestProbePortOverride(t *testing.T) {
	live := newTestServer(t, "127.0.0.1:0", closeAtOnce)
	_, port, _ := net.SplitHostPort(live.Addr())
	n, _ := strconv.Atoi(port)
	p := mustProber(t, Spec{Kind: KindTCP, Port: n, Timeout: liveTimeout})

	// The traffic port is closed; the check port is open.
	if err := p.Probe(context.Background(), closedAddr(t, "tcp")); err != nil {
		t.Errorf("check port %d: got %v, want success", n, err)
	}
	if err := p.Probe(context.Background(), "no-port"); err == nil {
		t.Error("address without port: got success, want error")
	}
}

func TestProbeHTTP(t *testing.T) {
	tests := []struct {
		name    string
		reply   string // raw response
		spec    Spec
		wantErr string // "" = success
	}{
		{"200 default", "HTTP/1.1 200 OK\r\n\r\n", Spec{}, ""},
		{"301 default accepts 3xx", "HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n", Spec{}, ""},
		{"500 is down", "HTTP/1.1 500 Internal Server Error\r\n\r\n", Spec{}, "HTTP 500"},
		{"404 is down", "HTTP/1.0 404 Not Found\r\n\r\n", Spec{}, "HTTP 404"},
		{"204 in 2xx range", "HTTP/1.1 204 No Content\r\n\r\n", Spec{StatusOK: StatusRange(200, 299)}, ""},
		{"302 outside 2xx range", "HTTP/1.1 302 Found\r\n\r\n", Spec{StatusOK: StatusRange(200, 299)}, "HTTP 302"},
		{"exact code list", "HTTP/1.1 503 Busy\r\n\r\n", Spec{StatusOK: StatusCodes(200, 503)}, ""},
		{"status without reason", "HTTP/1.1 200\r\n\r\n", Spec{}, ""},
		{"interim 103 then 200", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", Spec{}, ""},
		{"interim 100 then 500", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Oops\r\n\r\n", Spec{}, "HTTP 500"},
		{"not HTTP", "+PONG\r\n", Spec{}, "malformed HTTP status line"},
		{"two-digit code", "HTTP/1.1 20 OK\r\n\r\n", Spec{}, "malformed HTTP status line"},
		{"closed before status", "", Spec{}, "unexpected EOF"},
		{"status line over 4 KiB", "HTTP/1.1 200 " + strings.Repeat("x", 5000) + "\r\n\r\n", Spec{}, "read HTTP status"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTestServer(t, "127.0.0.1:0", rawReply(tt.reply))
			tt.spec.Kind, tt.spec.Timeout = KindHTTP, liveTimeout
			err := mustProber(t, tt.spec).Probe(context.Background(), srv.Addr())
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("got %v, want success", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("got %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestProbeHTTPStatusError(t *testing.T) {
	srv := newTestServer(t, "127.0.0.1:0", rawReply("HTTP/1.1 503 Busy\r\n\r\n"))
	err := mustProber(t, Spec{Kind: KindHTTP, Timeout: liveTimeout}).Probe(context.Background(), srv.Addr())
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 503 {
		t.Fatalf("got %v, want *StatusError{503}", err)
	}
}

func TestProbeHTTPRequest(t *testing.T) {
	var (
		mu  sync.Mutex
		got *http.Request
	)
	seen := func(r *http.Request) { mu.Lock(); got = r; mu.Unlock() }
	srv := newTestServer(t, "127.0.0.1:0", httpStatus(func() int { return 200 }, seen))

	tests := []struct {
		name, host, wantHost string
	}{
		{"explicit host", "example.com", "example.com"},
		{"default host is the checked address", "", srv.Addr()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustProber(t, Spec{Kind: KindHTTP, Path: "/healthz?full=1", Host: tt.host, Timeout: liveTimeout})
			if err := p.Probe(context.Background(), srv.Addr()); err != nil {
				t.Fatalf("probe: %v", err)
			}
			mu.Lock()
			r := got
			mu.Unlock()
			if r == nil {
				t.Fatal("server saw no request")
			}
			if r.Method != "GET" || r.RequestURI != "/healthz?full=1" || r.Proto != "HTTP/1.1" {
				t.Errorf("request line: %s %s %s, want GET /healthz?full=1 HTTP/1.1", r.Method, r.RequestURI, r.Proto)
			}
			if r.Host != tt.wantHost {
				t.Errorf("Host: %q, want %q", r.Host, tt.wantHost)
			}
			if ua := r.UserAgent(); ua != "lbctl-health" {
				t.Errorf("User-Agent: %q, want lbctl-health", ua)
			}
			if !r.Close {
				t.Error("request did not ask for Connection: close")
			}
		})
	}
}

// TestProbeHTTPAgainstNetHTTP checks the hand-rolled client against the
// standard library's server.
func TestProbeHTTPAgainstNetHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.Error(w, "no", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(strings.Repeat("body ", 10000))) // never read by the check
	}))
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()

	if err := mustProber(t, Spec{Kind: KindHTTP, Path: "/healthz", Timeout: liveTimeout}).Probe(context.Background(), addr); err != nil {
		t.Errorf("/healthz: got %v, want success", err)
	}
	if err := mustProber(t, Spec{Kind: KindHTTP, Path: "/other", Timeout: liveTimeout}).Probe(context.Background(), addr); err == nil || err.Error() != "HTTP 503" {
		t.Errorf("/other: got %v, want HTTP 503", err)
	}
}

func TestProbeSendExpectTCP(t *testing.T) {
	tests := []struct {
		name    string
		handle  func(net.Conn)
		send    string
		expect  string
		wantErr error
	}{
		{"ping pong", pingPong, "PING\r\n", "+PONG", nil},
		{"wrong answer then close", rawReply("-ERR no\r\n"), "PING\r\n", "+PONG", ErrExpectNotSeen},
		{"banner without send", func(c net.Conn) { io.WriteString(c, "220 smtp.example ESMTP\r\n") }, "", "220 ", nil},
		{"closed at once", closeAtOnce, "PING\r\n", "+PONG", ErrExpectNotSeen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTestServer(t, "127.0.0.1:0", tt.handle)
			p := mustProber(t, Spec{Kind: KindSendExpect, Send: []byte(tt.send), Expect: []byte(tt.expect), Timeout: liveTimeout})
			err := p.Probe(context.Background(), srv.Addr())
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// TestSendExpectStreamReads drives the TCP exchange over net.Pipe, where
// every server write arrives as its own read: Expect split across reads
// is found, and the read bound holds.
func TestSendExpectStreamReads(t *testing.T) {
	tests := []struct {
		name    string
		chunks  []string
		wantErr string
	}{
		{"split across reads", []string{"noise +PO", "NG\r\n"}, ""},
		{"split byte by byte", []string{"+", "P", "O", "N", "G"}, ""},
		{"beyond the read bound", []string{strings.Repeat("a", 40<<10), strings.Repeat("a", 40<<10), "+PONG"}, "expect not seen in the first 65536 bytes"},
		{"closed after one byte", []string{"+"}, "expect not seen after 1 byte: EOF"},
		{"closed after two bytes", []string{"+P"}, "expect not seen after 2 bytes: EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer server.Close()
				buf := make([]byte, 64)
				if _, err := server.Read(buf); err != nil { // the PING
					return
				}
				for _, c := range tt.chunks {
					if _, err := io.WriteString(server, c); err != nil {
						return
					}
				}
			}()
			client.SetDeadline(time.Now().Add(5 * time.Second))
			err := sendExpect{send: []byte("PING\r\n"), expect: []byte("+PONG")}.stream(client, "pipe")
			client.Close()
			wg.Wait()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("got %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestProbeSendExpectUDP(t *testing.T) {
	echo := newUDPServer(t, func(b []byte) []byte {
		if string(b) == "PING" {
			return []byte("+PONG from udp")
		}
		return []byte("-ERR")
	})
	// A timeout of seconds: the echo's answer must arrive within it even
	// when the echo is descheduled.
	spec := Spec{Kind: KindSendExpect, Network: "udp", Send: []byte("PING"), Expect: []byte("+PONG"), Timeout: 5 * time.Second}

	t.Run("reply contains expect", func(t *testing.T) {
		if err := mustProber(t, spec).Probe(context.Background(), echo.Addr()); err != nil {
			t.Fatalf("got %v, want success", err)
		}
	})
	t.Run("wrong reply times out", func(t *testing.T) {
		s := spec
		s.Send = []byte("HELLO")
		// The wrong answer arrives well within the timeout; the check must
		// still wait for the expected one until the timeout.
		s.Timeout = time.Second
		start := time.Now()
		err := mustProber(t, s).Probe(context.Background(), echo.Addr())
		if !errors.Is(err, ErrExpectNotSeen) || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("got %v, want expect not seen by timeout", err)
		}
		if d := time.Since(start); d < s.Timeout || d > s.Timeout+slack {
			t.Errorf("check took %v, want about its timeout %v", d, s.Timeout)
		}
	})
	t.Run("closed port is refused fast", func(t *testing.T) {
		s := spec
		s.Timeout = 5 * time.Second
		start := time.Now()
		err := mustProber(t, s).Probe(context.Background(), closedAddr(t, "udp"))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("got %v, want connection refused", err)
		}
		if d := time.Since(start); d > s.Timeout-slack {
			t.Errorf("refused check took %v, want well under its %v timeout", d, s.Timeout)
		}
	})
}

// TestProbeTimeout: a backend that accepts (or receives) and never answers
// fails by timeout, and the check returns within its timeout. The timeout
// is longer than the default (1s), so a check that ignored it would end
// too early.
func TestProbeTimeout(t *testing.T) {
	const timeout = 1500 * time.Millisecond
	hold := newTestServer(t, "127.0.0.1:0", silent)
	mute := newUDPServer(t, func([]byte) []byte { return nil })
	tests := []struct {
		name string
		addr string
		spec Spec
	}{
		{"http", hold.Addr(), Spec{Kind: KindHTTP}},
		{"send-expect tcp", hold.Addr(), Spec{Kind: KindSendExpect, Send: []byte("PING\r\n"), Expect: []byte("+PONG")}},
		{"send-expect udp", mute.Addr(), Spec{Kind: KindSendExpect, Network: "udp", Send: []byte("PING"), Expect: []byte("+PONG")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // each waits out its timeout
			tt.spec.Timeout = timeout
			p := mustProber(t, tt.spec)
			start := time.Now()
			err := p.Probe(context.Background(), tt.addr)
			d := time.Since(start)
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("got %v, want a timeout", err)
			}
			if d < timeout || d > timeout+slack {
				t.Errorf("check took %v, want about %v", d, timeout)
			}
		})
	}
}

// TestProbeCancel: cancelling the context cuts a check short, long before
// its timeout (Checker.Remove and Stop rely on this).
func TestProbeCancel(t *testing.T) {
	asked := make(chan struct{}, 1)
	hold := newTestServer(t, "127.0.0.1:0", func(c net.Conn) {
		if _, err := c.Read(make([]byte, 1024)); err == nil {
			select {
			case asked <- struct{}{}: // the check is past its dial, waiting for an answer
			default:
			}
		}
		silent(c)
	})
	p := mustProber(t, Spec{Kind: KindHTTP, Timeout: 30 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	errc := make(chan error, 1)
	go func() { errc <- p.Probe(ctx, hold.Addr()) }()
	// Cancel once the request arrived, so the cut happens mid-exchange
	// rather than during the dial.
	select {
	case <-asked:
	case <-time.After(5 * time.Second):
		t.Fatal("server never saw the check")
	}
	cancel()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("cancelled check reported success")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("check did not return after cancel")
	}
}

func TestNewProberRejects(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
		want string
	}{
		{"none", Spec{Kind: KindNone}, "no active check"},
		{"empty kind", Spec{}, "no active check"},
		{"unknown kind", Spec{Kind: "icmp"}, `check "icmp"`},
		{"negative timeout", Spec{Kind: KindTCP, Timeout: -time.Second}, "timeout"},
		{"negative interval", Spec{Kind: KindTCP, Interval: -time.Second}, "interval"},
		{"negative rise", Spec{Kind: KindTCP, Rise: -1}, "rise"},
		{"negative fall", Spec{Kind: KindTCP, Fall: -1}, "fall"},
		{"port too big", Spec{Kind: KindTCP, Port: 70000}, "port"},
		{"relative path", Spec{Kind: KindHTTP, Path: "healthz"}, "path"},
		{"path with space", Spec{Kind: KindHTTP, Path: "/a b"}, "path"},
		{"host with newline", Spec{Kind: KindHTTP, Host: "a\r\nX-Evil: 1"}, "host"},
		{"empty expect", Spec{Kind: KindSendExpect, Send: []byte("x")}, "expect"},
		{"udp without send", Spec{Kind: KindSendExpect, Network: "udp", Expect: []byte("x")}, "send"},
		{"bad network", Spec{Kind: KindSendExpect, Network: "unix", Expect: []byte("x")}, "network"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewProber(tt.spec)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewProber = %v, %v; want error containing %q", p, err, tt.want)
			}
		})
	}
	if _, err := NewProber(Spec{Kind: KindNone}); !errors.Is(err, ErrNoProber) {
		t.Errorf("kind none: got %v, want ErrNoProber", err)
	}
}

func TestProbeIPv6PortOverride(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ln.Close()
	srv := newTestServer(t, "[::1]:0", rawReply("HTTP/1.1 200 OK\r\n\r\n"))
	_, port, _ := net.SplitHostPort(srv.Addr())
	n, _ := strconv.Atoi(port)
	p := mustProber(t, Spec{Kind: KindHTTP, Port: n, Timeout: liveTimeout})
	if err := p.Probe(context.Background(), "[::1]:1"); err != nil {
		t.Fatalf("check [::1]:%d: %v", n, err)
	}
}
