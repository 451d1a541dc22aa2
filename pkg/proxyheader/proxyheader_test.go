package proxyheader

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	v4src = netip.MustParseAddrPort("192.0.2.7:51234")
	v4dst = netip.MustParseAddrPort("198.51.100.1:443")
	v6src = netip.MustParseAddrPort("[2001:db8::7]:51234")
	v6dst = netip.MustParseAddrPort("[2001:db8::1]:443")
)

func unhex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// v2 headers written out byte by byte from the spec, independently of
// AppendV2.
var (
	v2TCP4 = unhex("0d0a0d0a000d0a515549540a 21 11 000c c0000207 c6336401 c822 01bb")
	v2UDP6 = unhex("0d0a0d0a000d0a515549540a 21 22 0024" +
		"20010db8000000000000000000000007 20010db8000000000000000000000001 c822 01bb")
	v2Local = unhex("0d0a0d0a000d0a515549540a 20 00 0000")
	// A TCP4 header with a 5-byte TLV (type 0x04 NOOP) after the addresses.
	v2TLV = unhex("0d0a0d0a000d0a515549540a 21 11 0014 c0000207 c6336401 c822 01bb 04 0005 0000000000")
)

func TestLength(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want int
		err  error
	}{
		{"empty: need more", nil, 0, nil},
		{"v1 signature only", []byte("PROX"), 0, nil},
		{"v1 without CRLF yet", []byte("PROXY TCP4 1.2.3.4"), 0, nil},
		{"v1 complete, payload after", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.0\r\n"), 32, nil},
		{"v1 unknown", []byte("PROXY UNKNOWN\r\n"), 15, nil},
		{"v1 too long", append([]byte("PROXY "), bytes.Repeat([]byte("x"), 200)...), 0, ErrTooLong},
		{"v2 partial signature", v2TCP4[:7], 0, nil},
		{"v2 fixed part incomplete", v2TCP4[:15], 0, nil},
		{"v2 tcp4", v2TCP4, 28, nil},
		{"v2 with payload after", append(append([]byte{}, v2TCP4...), "payload"...), 28, nil},
		{"v2 tlv", v2TLV, 36, nil},
		{"v2 announces too much", unhex("0d0a0d0a000d0a515549540a 21 11 ffff"), 0, ErrTooLong},
		{"plain HTTP", []byte("GET / HTTP/1.1\r\n"), 0, ErrNoHeader},
		{"TLS client hello", []byte{0x16, 0x03, 0x01}, 0, ErrNoHeader},
		{"P but not PROXY", []byte("POST /"), 0, ErrNoHeader},
		{"CR but not the v2 signature", []byte("\r\n\r\nX"), 0, ErrNoHeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := Length(tc.in)
			if n != tc.want || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("Length(%q) = %d, %v; want %d, %v", tc.in, n, err, tc.want, tc.err)
			}
		})
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want Header
		err  error
	}{
		{"v1 tcp4", []byte("PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n"),
			Header{Version: 1, Source: v4src, Destination: v4dst}, nil},
		{"v1 tcp6", []byte("PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n"),
			Header{Version: 1, Source: v6src, Destination: v6dst}, nil},
		{"v1 tcp6 with IPv4-mapped addresses is unmapped", []byte("PROXY TCP6 ::ffff:192.0.2.7 ::ffff:198.51.100.1 51234 443\r\n"),
			Header{Version: 1, Source: v4src, Destination: v4dst}, nil},
		{"v1 unknown is local", []byte("PROXY UNKNOWN\r\n"), Header{Version: 1, Local: true}, nil},
		{"v2 tcp4", v2TCP4, Header{Version: 2, Source: v4src, Destination: v4dst}, nil},
		{"v2 udp6", v2UDP6, Header{Version: 2, UDP: true, Source: v6src, Destination: v6dst}, nil},
		{"v2 local", v2Local, Header{Version: 2, Local: true}, nil},
		{"v2 with a TLV", v2TLV, Header{Version: 2, Source: v4src, Destination: v4dst}, nil},

		{"v1 LF without CR", []byte("PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\n"), Header{}, ErrMalformed},
		{"v1 bad address", []byte("PROXY TCP4 192.0.2.300 198.51.100.1 51234 443\r\n"), Header{}, ErrMalformed},
		{"v1 IPv6 address in TCP4", []byte("PROXY TCP4 2001:db8::7 198.51.100.1 51234 443\r\n"), Header{}, ErrMalformed},
		{"v1 port out of range", []byte("PROXY TCP4 192.0.2.7 198.51.100.1 70000 443\r\n"), Header{}, ErrMalformed},
		{"v1 missing field", []byte("PROXY TCP4 192.0.2.7 198.51.100.1 51234\r\n"), Header{}, ErrMalformed},
		{"v1 unknown protocol", []byte("PROXY UDP4 192.0.2.7 198.51.100.1 51234 443\r\n"), Header{}, ErrMalformed},
		{"v2 bad version", append(append([]byte{}, v2TCP4[:12]...), append([]byte{0x31}, v2TCP4[13:]...)...), Header{}, ErrMalformed},
		{"v2 length too short for its family", unhex("0d0a0d0a000d0a515549540a 21 21 000c c0000207 c6336401 c822 01bb"), Header{}, ErrMalformed},
		{"v2 unix family", unhex("0d0a0d0a000d0a515549540a 21 31 00d8" + strings.Repeat("00", 216)), Header{}, ErrMalformed},
		{"trailing payload is not a header", append(append([]byte{}, v2TCP4...), 'x'), Header{}, ErrMalformed},
		{"incomplete", v2TCP4[:20], Header{}, ErrMalformed},
		{"no header", []byte("hello"), Header{}, ErrNoHeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := Parse(tc.in)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("Parse: %+v, %v; want error %v", h, err, tc.err)
				}
				return
			}
			if err != nil || h != tc.want {
				t.Fatalf("Parse: %+v, %v; want %+v", h, err, tc.want)
			}
		})
	}
}

func TestAppend(t *testing.T) {
	mapped := func(ap netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
	}
	for _, tc := range []struct {
		name     string
		src, dst netip.AddrPort
		v1       string
		v2       []byte
	}{
		{"ipv4", v4src, v4dst, "PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n", v2TCP4},
		{"ipv4-mapped is written as ipv4", mapped(v4src), mapped(v4dst), "PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n", v2TCP4},
		{"ipv6", v6src, v6dst, "PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n", nil},
		{"mixed families become ipv6", v4src, v6dst, "PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 51234 443\r\n", nil},
		{"unknown source", netip.AddrPort{}, v4dst, "PROXY UNKNOWN\r\n", v2Local},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(AppendV1([]byte("x"), tc.src, tc.dst)); got != "x"+tc.v1 {
				t.Errorf("AppendV1 = %q, want %q", got, "x"+tc.v1)
			}
			v2 := AppendV2(nil, tc.src, tc.dst, false)
			if tc.v2 != nil && !bytes.Equal(v2, tc.v2) {
				t.Errorf("AppendV2 = %x, want %x", v2, tc.v2)
			}
			// Both parse back, by our parser and by go-proxyproto directly.
			for _, b := range [][]byte{[]byte(tc.v1), v2} {
				h, err := Parse(b)
				if err != nil {
					t.Fatalf("Parse(%q): %v", b, err)
				}
				if !h.Local && (h.Source != unmap(tc.src) || h.Destination != unmap(tc.dst)) {
					t.Errorf("Parse(%q) = %+v", b, h)
				}
				if _, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(b))); err != nil {
					t.Errorf("go-proxyproto rejects %q: %v", b, err)
				}
			}
		})
	}
	if h, err := Parse(AppendV2(nil, v4src, v4dst, true)); err != nil || !h.UDP || h.Source != v4src {
		t.Errorf("v2 UDP header parses as %+v, %v", h, err)
	}
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// pair returns both ends of a loopback TCP connection.
func pair(t testing.TB) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestReadLeavesPayload: the header and 1 MiB of payload arrive in one
// write; Read takes the header and not one byte more.
func TestReadLeavesPayload(t *testing.T) {
	for _, hdr := range [][]byte{AppendV1(nil, v4src, v4dst), AppendV2(nil, v6src, v6dst, false), v2TLV} {
		client, server := pair(t)
		payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
		go func() {
			client.Write(append(append([]byte{}, hdr...), payload...))
			client.CloseWrite()
		}()
		h, err := Read(server, time.Now().Add(5*time.Second))
		if err != nil || h.Local || h.Source.Port() != 51234 {
			t.Fatalf("Read(%q) = %+v, %v", hdr, h, err)
		}
		server.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(server)
		if err != nil || sha256.Sum256(got) != sha256.Sum256(payload) {
			t.Fatalf("payload after the header: %d bytes (want %d), %v", len(got), len(payload), err)
		}
	}
}

// TestReadInPieces: a header sent a few bytes at a time is still read
// whole, and the payload that follows is untouched.
func TestReadInPieces(t *testing.T) {
	client, server := pair(t)
	client.SetNoDelay(true)
	hdr := AppendV1(nil, v6src, v6dst)
	type result struct {
		h   Header
		err error
	}
	done := make(chan result, 1)
	go func() {
		h, err := Read(server, time.Now().Add(5*time.Second))
		done <- result{h, err}
	}()
	for i := 0; i < len(hdr); i += 7 {
		client.Write(hdr[i:min(i+7, len(hdr))])
		time.Sleep(2 * time.Millisecond) // pacing the writes into separate segments
	}
	client.Write([]byte("after"))
	r := <-done
	if r.err != nil || r.h.Source != v6src {
		t.Fatalf("Read = %+v, %v", r.h, r.err)
	}
	buf := make([]byte, 5)
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "after" {
		t.Fatalf("payload %q, %v", buf, err)
	}
}

func TestReadFailures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		send    []byte
		close   bool
		timeout time.Duration
		want    error
	}{
		{"silent peer hits the deadline", nil, false, 200 * time.Millisecond, os.ErrDeadlineExceeded},
		{"half a header, then silence", []byte("PROXY TCP4 1.2"), false, 200 * time.Millisecond, os.ErrDeadlineExceeded},
		{"payload without header fails at once", []byte("GET / HTTP/1.0\r\n\r\n"), false, 10 * time.Second, ErrNoHeader},
		{"malformed header fails at once", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"), false, 10 * time.Second, ErrMalformed},
		{"endless v1 line fails at once", bytes.Repeat([]byte("PROXY "), 40), false, 10 * time.Second, ErrTooLong},
		{"peer closes before anything", nil, true, 10 * time.Second, io.ErrUnexpectedEOF},
		{"peer closes after half a header", []byte("PROXY TCP4 1.2"), true, 10 * time.Second, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.close && tc.send != nil && runtime.GOOS != "linux" {
				t.Skip("without POLLRDHUP a header cut short waits for the deadline")
			}
			client, server := pair(t)
			if tc.send != nil {
				client.Write(tc.send)
			}
			if tc.close {
				client.Close()
			}
			start := time.Now()
			_, err := Read(server, start.Add(tc.timeout))
			if !errors.Is(err, tc.want) {
				t.Fatalf("Read: %v, want %v", err, tc.want)
			}
			if d := time.Since(start); d > tc.timeout+time.Second || (tc.timeout > time.Second && d > time.Second) {
				t.Fatalf("Read took %v", d)
			}
		})
	}
}

// TestReadContext: canceling the context ends a read that would wait for
// the deadline.
func TestReadContext(t *testing.T) {
	_, server := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		// Usually lands while Read waits; a cancellation before Read starts
		// must end it just as well.
		time.Sleep(50 * time.Millisecond)
		cancel()
	}()
	start := time.Now()
	_, err := ReadContext(ctx, server, time.Now().Add(10*time.Second))
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("ReadContext after cancel: %v after %v", err, time.Since(start))
	}
}
