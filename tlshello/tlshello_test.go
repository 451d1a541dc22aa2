package tlshello

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/tlshello/tlshellotest"
)

// captureHello returns the ClientHello that Go's crypto/tls client sends
// with cfg, exactly as it goes on the wire.
func captureHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	hello, err := tlshellotest.Hello(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return hello
}

// pqConfig makes Go's client send an X25519MLKEM768 key share (about
// 1.2 KB), which takes the hello past one Ethernet segment.
func pqConfig(name string) *tls.Config {
	return &tls.Config{ServerName: name, InsecureSkipVerify: true,
		CurvePreferences: []tls.CurveID{tls.X25519MLKEM768, tls.X25519}}
}

// pair returns both ends of a real loopback TCP connection.
func pair(t testing.TB) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.AcceptTCP()
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// sendChunks writes b in pieces of size bytes with a short pause between
// them (TCP_NODELAY: each piece is a segment of its own), then runs after.
func sendChunks(c *net.TCPConn, b []byte, size int, pause time.Duration, wg *sync.WaitGroup) {
	c.SetNoDelay(true)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for len(b) > 0 {
			k := min(size, len(b))
			if _, err := c.Write(b[:k]); err != nil {
				return
			}
			b = b[k:]
			if pause > 0 && len(b) > 0 {
				time.Sleep(pause) // pacing the segments, not synchronisation
			}
		}
	}()
}

func TestReadRealHellos(t *testing.T) {
	plain := captureHello(t, &tls.Config{ServerName: "api.example.com", InsecureSkipVerify: true})
	pq := captureHello(t, pqConfig("shop-7.example.com"))
	if len(pq) <= 1460 {
		t.Fatalf("post-quantum hello is %d bytes, want more than one 1460-byte segment", len(pq))
	}
	upper := captureHello(t, &tls.Config{ServerName: "API.Example.COM", InsecureSkipVerify: true,
		NextProtos: []string{"h2", "http/1.1"}})
	noSNI := captureHello(t, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	tls12 := captureHello(t, &tls.Config{ServerName: "old.example.com", InsecureSkipVerify: true,
		MaxVersion: tls.VersionTLS12})

	cases := []struct {
		name  string
		wire  []byte
		sni   string
		alpn  []string
		chunk int           // bytes per write; 0 = all at once
		pause time.Duration // between writes
	}{
		{name: "plain", wire: plain, sni: "api.example.com"},
		{name: "pq whole", wire: pq, sni: "shop-7.example.com"},
		{name: "pq two segments", wire: pq, sni: "shop-7.example.com", chunk: 1400, pause: 20 * time.Millisecond},
		{name: "pq one byte per segment", wire: pq, sni: "shop-7.example.com", chunk: 1, pause: 200 * time.Microsecond},
		{name: "pq records of 100 bytes", wire: tlshellotest.Reframe(pq, 100), sni: "shop-7.example.com"},
		{name: "records of 100 bytes, a byte at a time", wire: tlshellotest.Reframe(plain, 100), sni: "api.example.com", chunk: 1},
		{name: "records of 1 byte", wire: tlshellotest.Reframe(plain, 1), sni: "api.example.com", chunk: 7},
		{name: "records of 3 bytes: split handshake header", wire: tlshellotest.Reframe(upper, 3), sni: "api.example.com",
			alpn: []string{"h2", "http/1.1"}},
		{name: "upper case name", wire: upper, sni: "api.example.com", alpn: []string{"h2", "http/1.1"}},
		{name: "no SNI", wire: noSNI, alpn: []string{"h2"}},
		{name: "TLS 1.2 only", wire: tls12, sni: "old.example.com"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, s := pair(t)
			var wg sync.WaitGroup
			defer wg.Wait()
			if tc.chunk == 0 {
				if _, err := c.Write(tc.wire); err != nil {
					t.Fatal(err)
				}
			} else {
				sendChunks(c, tc.wire, tc.chunk, tc.pause, &wg)
			}
			h, err := Read(s, time.Now().Add(20*time.Second))
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if !bytes.Equal(h.Raw, tc.wire) {
				t.Errorf("Raw is %d bytes, want the %d bytes sent, unchanged", len(h.Raw), len(tc.wire))
			}
			if h.ServerName != tc.sni {
				t.Errorf("ServerName = %q, want %q", h.ServerName, tc.sni)
			}
			if !slices.Equal(h.ALPN, tc.alpn) {
				t.Errorf("ALPN = %q, want %q", h.ALPN, tc.alpn)
			}
		})
	}
}

// Bytes after the hello: inside its last record they are part of Raw;
// after that record they stay in the socket for the proxy to forward.
func TestReadTrailingBytes(t *testing.T) {
	hello := captureHello(t, &tls.Config{ServerName: "a.example.com", InsecureSkipVerify: true})
	t.Run("after the record", func(t *testing.T) {
		c, s := pair(t)
		c.Write(append(slices.Clone(hello), "EARLY"...))
		h, err := Read(s, time.Now().Add(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(h.Raw, hello) {
			t.Fatalf("Raw has %d bytes, want the hello's %d", len(h.Raw), len(hello))
		}
		rest := make([]byte, 5)
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(s, rest); err != nil || string(rest) != "EARLY" {
			t.Fatalf("after the hello the socket holds %q (%v), want EARLY", rest, err)
		}
	})
	t.Run("inside the last record", func(t *testing.T) {
		// One record: the hello and 4 more bytes of handshake data.
		n := int(hello[3])<<8 | int(hello[4]) + 4
		wire := append([]byte{0x16, 0x03, 0x01, byte(n >> 8), byte(n)}, hello[5:]...)
		wire = append(wire, 0x0b, 0, 0, 0)
		c, s := pair(t)
		c.Write(wire)
		h, err := Read(s, time.Now().Add(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(h.Raw, wire) || h.ServerName != "a.example.com" {
			t.Fatalf("Raw %d bytes (want %d), name %q", len(h.Raw), len(wire), h.ServerName)
		}
	})
}

func TestReadErrors(t *testing.T) {
	hello := captureHello(t, pqConfig("x.example.com"))
	huge := []byte{0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x01, 0x00, 0x00} // declares a 64 KiB body
	cases := []struct {
		name  string
		wire  []byte
		close bool // client closes after sending
		want  error
	}{
		{name: "plain HTTP", wire: []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), want: ErrNotTLS},
		{name: "SSH banner", wire: []byte("SSH-2.0-OpenSSH_9.6\r\n"), want: ErrNotTLS},
		{name: "one byte that is not TLS, then close", wire: []byte("G"), close: true, want: ErrNotTLS},
		{name: "alert record first", wire: []byte{0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28}, want: ErrNotTLS},
		{name: "bad record version", wire: []byte{0x16, 0x02, 0x00, 0x00, 0x04}, want: ErrNotTLS},
		{name: "server hello", wire: []byte{0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00}, want: ErrMalformed},
		{name: "empty record", wire: []byte{0x16, 0x03, 0x01, 0x00, 0x00}, want: ErrMalformed},
		{name: "record over 16 KiB", wire: []byte{0x16, 0x03, 0x01, 0x40, 0x01}, want: ErrMalformed},
		{name: "declared too large", wire: huge, want: ErrTooLarge},
		{name: "garbage body", wire: []byte{0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 1, 2, 3, 4}, want: ErrMalformed},
		{name: "truncated", wire: hello[:len(hello)/2], close: true, want: ErrTruncated},
		{name: "nothing, then close", close: true, want: ErrTruncated},
		{name: "half a hello, held", wire: hello[:len(hello)/2], want: ErrTimeout},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, s := pair(t)
			c.Write(tc.wire)
			if tc.close {
				c.CloseWrite()
			}
			start := time.Now()
			_, err := Read(s, time.Now().Add(time.Second))
			if !errors.Is(err, tc.want) {
				t.Fatalf("Read: %v, want %v", err, tc.want)
			}
			if tc.want == ErrTimeout {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("a timeout should match os.ErrDeadlineExceeded too: %v", err)
				}
				if time.Since(start) < 900*time.Millisecond {
					t.Errorf("gave up after %v, before the deadline", time.Since(start))
				}
			} else if time.Since(start) > 900*time.Millisecond {
				t.Errorf("took %v: should fail at once, not at the deadline", time.Since(start))
			}
		})
	}
}

// Many tiny records whose headers alone exceed MaxSize are refused.
func TestReadTooManyRecords(t *testing.T) {
	// A hello declaring 60,000 bytes, sent in 1-byte records: 6 bytes per
	// byte of hello, far beyond MaxSize.
	var wire []byte
	msg := []byte{0x01, 0x00, 0xea, 0x60}
	for i := 0; len(wire) < MaxSize+100; i++ {
		b := byte(0)
		if i < len(msg) {
			b = msg[i]
		}
		wire = append(wire, 0x16, 0x03, 0x01, 0x00, 0x01, b)
	}
	c, s := pair(t)
	go c.Write(wire)
	_, err := Read(s, time.Now().Add(10*time.Second))
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Read: %v, want ErrTooLarge", err)
	}
}

// The buffer grows with what arrives, bounded by what was declared: a
// client that declares a full 16 KiB record and sends 10 bytes costs no
// 16 KiB, nor does a declared 64 KiB hello.
func TestReadMemoryBounded(t *testing.T) {
	partial := []byte{0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xff, 0xf0, 0x03, 0x03}
	r := &reader{c: &scripted{chunks: [][]byte{partial}}}
	err := r.fill(5)
	if err == nil {
		err = r.fill(5 + 1<<14)
	}
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("fill: %v, want a timeout", err)
	}
	if cap(r.raw) > 2048 {
		t.Fatalf("buffer grew to %d bytes for %d received", cap(r.raw), len(partial))
	}

	// A short hello never allocates more than its declared records.
	hello := captureHello(t, &tls.Config{ServerName: "a.example.com", InsecureSkipVerify: true})
	r = &reader{c: &scripted{chunks: [][]byte{hello}}}
	var w walk
	if _, _, err := r.hello(&w); err != nil {
		t.Fatal(err)
	}
	if cap(r.raw) != len(hello) {
		t.Fatalf("buffer of %d bytes for a hello of %d", cap(r.raw), len(hello))
	}
}

// scripted is a Conn that returns its chunks one per Read, then a
// deadline error (or EOF when eof is set).
type scripted struct {
	chunks [][]byte
	eof    bool
}

func (s *scripted) Read(b []byte) (int, error) {
	for len(s.chunks) > 0 && len(s.chunks[0]) == 0 {
		s.chunks = s.chunks[1:]
	}
	if len(s.chunks) == 0 {
		if s.eof {
			return 0, io.EOF
		}
		return 0, os.ErrDeadlineExceeded
	}
	n := copy(b, s.chunks[0])
	s.chunks[0] = s.chunks[0][n:]
	return n, nil
}

func (s *scripted) SetReadDeadline(time.Time) error { return nil }

func TestParse(t *testing.T) {
	hello := captureHello(t, &tls.Config{ServerName: "Mixed.Example.COM", InsecureSkipVerify: true,
		NextProtos: []string{"h2"}})
	h, err := Parse(hello[5:])
	if err != nil {
		t.Fatal(err)
	}
	if h.ServerName != "mixed.example.com" || !slices.Equal(h.ALPN, []string{"h2"}) || h.Raw != nil {
		t.Fatalf("got %q %q", h.ServerName, h.ALPN)
	}
	for _, bad := range []string{"", "\x01", "\x02\x00\x00\x00", "\x01\x00\x00\x05abcde"} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%q): %v, want ErrMalformed", bad, err)
		}
	}
	// A server name with a control byte or a space is malformed.
	for _, name := range []string{"a b.example", "a\x00b"} {
		msg := strings.Replace(string(hello[5:]), "Mixed.Example.COM", name+strings.Repeat("x", 17-len(name)), 1)
		if _, err := Parse([]byte(msg)); !errors.Is(err, ErrMalformed) {
			t.Errorf("name %q: %v, want ErrMalformed", name, err)
		}
	}
}
