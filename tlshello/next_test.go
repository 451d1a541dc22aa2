package tlshello

import (
	"bytes"
	"crypto/tls"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/lbctl/lbctl/tlshello/tlshellotest"
)

// nextOver drives Next over src as an event loop would: it hands Next the
// bytes read so far and reads no further than the need it says, or, with
// greedy, takes up to step more bytes per call whatever the need. It
// returns Next's last result and the number of calls; a need past the
// end of src is returned as it is.
//
// One Parser takes every call, as the loop's reader does; the same input
// to a fresh Parser must agree with it.
func nextOver(t *testing.T, src []byte, step int, greedy bool) (h *Hello, need int, err error, calls int) {
	t.Helper()
	var raw []byte
	var p Parser
	for {
		calls++
		h, need, err = p.Next(raw)
		if calls%97 == 0 || h != nil || err != nil {
			fh, fneed, ferr := new(Parser).Next(raw)
			if (fh == nil) != (h == nil) || fneed != need || kind(ferr) != kind(err) ||
				(h != nil && (!bytes.Equal(fh.Raw, h.Raw) || fh.ServerName != h.ServerName)) {
				t.Fatalf("at %d bytes: Parser says %v, %d, %v; a fresh one %v, %d, %v", len(raw), h, need, err, fh, fneed, ferr)
			}
		}
		if h != nil || err != nil {
			return h, need, err, calls
		}
		if need <= len(raw) {
			t.Fatalf("Next(%d bytes) asks for %d: no progress", len(raw), need)
		}
		if len(raw) == len(src) {
			return nil, need, nil, calls
		}
		end := min(len(src), need, len(raw)+step)
		if greedy {
			end = min(len(src), len(raw)+step)
		}
		raw = src[:end]
	}
}

func TestNext(t *testing.T) {
	plain := captureHello(t, &tls.Config{ServerName: "api.example.com", InsecureSkipVerify: true,
		NextProtos: []string{"h2", "http/1.1"}})
	pq := captureHello(t, pqConfig("Shop-7.example.com."))
	for _, tc := range []struct {
		name string
		wire []byte
		sni  string
		alpn []string
	}{
		{"plain", plain, "api.example.com", []string{"h2", "http/1.1"}},
		{"post-quantum", pq, "shop-7.example.com", nil},
		{"records of 1 byte", tlshellotest.Reframe(plain, 1), "api.example.com", []string{"h2", "http/1.1"}},
		{"records of 3 bytes", tlshellotest.Reframe(pq, 3), "shop-7.example.com", nil},
		{"records of 100 bytes", tlshellotest.Reframe(pq, 100), "shop-7.example.com", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := Read(&scripted{chunks: [][]byte{slices.Clone(tc.wire)}, eof: true}, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			for _, step := range []int{1, 7, 1 << 20} {
				h, need, err, calls := nextOver(t, tc.wire, step, false)
				if err != nil || h == nil {
					t.Fatalf("step %d: Next: %v (need %d)", step, err, need)
				}
				if !bytes.Equal(h.Raw, tc.wire) || h.ServerName != tc.sni || !slices.Equal(h.ALPN, tc.alpn) ||
					h.ServerName != want.ServerName || !slices.Equal(h.ALPN, want.ALPN) {
					t.Fatalf("step %d: Raw %d bytes (want %d), name %q, ALPN %q; want %q %q",
						step, len(h.Raw), len(tc.wire), h.ServerName, h.ALPN, tc.sni, tc.alpn)
				}
				if step == 1<<20 && calls != 2*recordsOf(tc.wire)+1 {
					// Reading to each need: a header, then its record.
					t.Errorf("whole records: %d calls to Next, want %d", calls, 2*recordsOf(tc.wire)+1)
				}
			}
			// All of it at once, with bytes after the hello: Raw keeps them.
			more := append(slices.Clone(tc.wire), "EARLY"...)
			h, _, err := new(Parser).Next(more)
			if err != nil || h == nil || !bytes.Equal(h.Raw, more) || h.ServerName != tc.sni {
				t.Fatalf("with bytes after it: %v, %+v", err, h)
			}
		})
	}
}

// recordsOf counts the TLS records in wire.
func recordsOf(wire []byte) int {
	n := 0
	for len(wire) >= 5 {
		wire = wire[5+(int(wire[3])<<8|int(wire[4])):]
		n++
	}
	return n
}

func TestNextErrors(t *testing.T) {
	hello := captureHello(t, &tls.Config{ServerName: "x.example.com", InsecureSkipVerify: true})
	for _, tc := range []struct {
		name string
		raw  []byte
		want error
	}{
		{"HTTP, first byte", []byte("G"), ErrNotTLS},
		{"SSH", []byte("SSH-2.0-OpenSSH_9.2\r\n"), ErrNotTLS},
		{"record version", []byte{0x16, 0x02, 0x00, 0x00, 0x10}, ErrNotTLS},
		{"alert inside", append(slices.Clone(tlshellotest.Reframe(hello, 50)[:55]), 0x15, 3, 3, 0, 2), ErrMalformed},
		{"empty record", []byte{0x16, 0x03, 0x01, 0x00, 0x00}, ErrMalformed},
		{"not a ClientHello", []byte{0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00}, ErrMalformed},
		{"declares 64 KiB", []byte{0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x01, 0x00, 0x00}, ErrTooLarge},
		{"bad body", []byte{0x16, 0x03, 0x01, 0x00, 0x06, 0x01, 0x00, 0x00, 0x02, 0x03, 0x03}, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, need, err := new(Parser).Next(tc.raw)
			if !errors.Is(err, tc.want) || h != nil || need != 0 {
				t.Fatalf("Next = %v, %d, %v; want %v", h, need, err, tc.want)
			}
		})
	}
	// A hello cut short is never an error, only a need past what it has.
	for i := 0; i < len(hello); i++ {
		h, need, err := new(Parser).Next(hello[:i])
		if h != nil || err != nil || need <= i {
			t.Fatalf("Next(first %d of %d bytes) = %v, %d, %v; want a need past %d", i, len(hello), h, need, err, i)
		}
	}
}

// TestParserLooksOnce: a hello in one-byte records, each handed to the
// Parser as it arrives (the costliest shape a client can send), costs
// work in proportion to its size: the Parser neither walks the records
// already seen again nor keeps more than the declared message besides the
// caller's bytes. A Parser that walked from the start at each call made
// 2,995 allocations for the 1,500-record hello here, and its time grew
// with the square of the records.
func TestParserLooksOnce(t *testing.T) {
	hello := captureHello(t, &tls.Config{ServerName: "a.example.com", InsecureSkipVerify: true})
	wire := tlshellotest.Reframe(hello, 1) // 6 bytes per byte of handshake
	allocs := testing.AllocsPerRun(3, func() {
		var p Parser
		for n := 0; ; {
			h, need, err := p.Next(wire[:n])
			if err != nil || h != nil {
				if h == nil || h.ServerName != "a.example.com" {
					t.Fatalf("Next: %v %v", h, err)
				}
				return
			}
			n = need
		}
	})
	// The body's one buffer, the Hello and what parse makes; not one
	// per record.
	if records := recordsOf(wire); allocs > 20 {
		t.Fatalf("%v allocations for a hello of %d one-byte records, want a handful", allocs, records)
	}
}
