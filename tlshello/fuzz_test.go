package tlshello

import (
	"bytes"
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lbctl/lbctl/tlshello/tlshellotest"
)

// FuzzRead feeds arbitrary bytes, cut into pieces of arbitrary sizes, to
// Read. Besides never panicking:
//
//   - the result does not depend on how the bytes arrive: one piece or
//     many give the same Raw, name and ALPN, or the same kind of error;
//
//   - Raw is exactly a prefix of what was sent;
//
//   - when Go's own TLS server accepts the same bytes as a ClientHello,
//     Read agrees with it on the server name (lower-cased) and the ALPN
//     list.
//
//     go test -run '^$' -fuzz FuzzRead ./tlshello
func FuzzRead(f *testing.F) {
	plain := captureHello(f, &tls.Config{ServerName: "api.example.com", InsecureSkipVerify: true,
		NextProtos: []string{"h2", "http/1.1"}})
	pq := captureHello(f, pqConfig("shop-1.example.com"))
	for _, s := range [][]byte{plain, pq, tlshellotest.Reframe(plain, 3), tlshellotest.Reframe(pq, 100),
		captureHello(f, &tls.Config{InsecureSkipVerify: true}),
		[]byte("GET / HTTP/1.1\r\n\r\n"), {0x16, 0x03, 0x01, 0x00, 0x01, 0x01}} {
		f.Add(s, uint8(0))
		f.Add(s, uint8(7))
	}
	f.Fuzz(agreeOn)
}

// FuzzParse feeds arbitrary handshake messages to Parse: it never panics,
// and a name it returns is lower-case printable ASCII.
func FuzzParse(f *testing.F) {
	hello := captureHello(f, &tls.Config{ServerName: "API.example.com", InsecureSkipVerify: true,
		NextProtos: []string{"h2"}})
	f.Add(hello[5:])
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, msg []byte) {
		h, err := Parse(msg)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse: %v is not ErrMalformed", err)
			}
			return
		}
		for _, c := range []byte(h.ServerName) {
			if c <= ' ' || c >= 0x7f || c >= 'A' && c <= 'Z' {
				t.Fatalf("name %q", h.ServerName)
			}
		}
	})
}

// kind names the sentinel an error wraps, for comparing two errors.
func kind(err error) error {
	for _, k := range []error{ErrNotTLS, ErrMalformed, ErrTooLarge, ErrTruncated, ErrTimeout} {
		if errors.Is(err, k) {
			return k
		}
	}
	return err
}

// goServerSees runs Go's TLS server over raw and reports the server name
// and ALPN list of the ClientHello it parsed, if it accepted one.
func goServerSees(raw []byte) (name string, alpn []string, ok bool) {
	stop := errors.New("seen")
	cfg := &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		name, alpn, ok = chi.ServerName, chi.SupportedProtos, true
		return nil, stop
	}}
	_ = tls.Server(&tlshellotest.Conn{R: bytes.NewReader(raw)}, cfg).Handshake()
	return name, alpn, ok
}

// agreeOn is FuzzRead's property on b, sent in pieces whose sizes piece
// seeds.
func agreeOn(t *testing.T, b []byte, piece uint8) {
	whole, werr := Read(&scripted{chunks: [][]byte{slices.Clone(b)}, eof: true}, time.Time{})
	var chunks [][]byte
	size := int(piece%16) + 1
	for rest := b; len(rest) > 0; {
		k := min(size, len(rest))
		chunks = append(chunks, slices.Clone(rest[:k]))
		rest = rest[k:]
		size = size*5%17 + 1
	}
	split, serr := Read(&scripted{chunks: chunks, eof: true}, time.Time{})
	if kind(werr) != kind(serr) {
		t.Fatalf("whole: %v; in pieces: %v", werr, serr)
	}
	// Next, fed to each need as an event loop reads, agrees with
	// Read: where Read found the stream cut short, Next asks for
	// more than there is.
	nh, need, nerr, _ := nextOver(t, b, size, false)
	switch {
	case errors.Is(werr, ErrTruncated):
		if nh != nil || nerr != nil || need <= len(b) {
			t.Fatalf("Read: %v; Next: %v, need %d of %d bytes, %v", werr, nh, need, len(b), nerr)
		}
	case kind(werr) != kind(nerr):
		t.Fatalf("Read: %v; Next: %v", werr, nerr)
	case werr == nil && (!bytes.Equal(nh.Raw, whole.Raw) || nh.ServerName != whole.ServerName || !slices.Equal(nh.ALPN, whole.ALPN)):
		t.Fatalf("Read %+v, Next %+v", whole, nh)
	}
	if werr != nil {
		return
	}
	if !bytes.Equal(whole.Raw, split.Raw) || whole.ServerName != split.ServerName || !slices.Equal(whole.ALPN, split.ALPN) {
		t.Fatalf("whole %+v, in pieces %+v", whole, split)
	}
	if !bytes.HasPrefix(b, whole.Raw) {
		t.Fatal("Raw is not a prefix of the input")
	}
	if name, alpn, ok := goServerSees(whole.Raw); ok {
		if strings.TrimSuffix(strings.ToLower(name), ".") != whole.ServerName || !slices.Equal(alpn, whole.ALPN) {
			t.Fatalf("crypto/tls sees %q %q, Read %q %q", name, alpn, whole.ServerName, whole.ALPN)
		}
	}
}

// TestAgreeOnMutatedHellos runs FuzzRead's property over 3,000 hellos
// mutated at random (fixed seed): bytes changed, inserted or cut, records
// resized. It does not depend on the fuzzing engine, which runs slowly on
// small machines.
func TestAgreeOnMutatedHellos(t *testing.T) {
	plain := captureHello(t, &tls.Config{ServerName: "api.example.com", InsecureSkipVerify: true,
		NextProtos: []string{"h2", "http/1.1"}})
	pq := captureHello(t, pqConfig("shop-1.example.com"))
	bases := [][]byte{plain, pq, tlshellotest.Reframe(plain, 3), tlshellotest.Reframe(pq, 100), tlshellotest.Reframe(plain, 1)}
	rng := rand.New(rand.NewPCG(14, 12))
	for i := 0; i < 3000; i++ {
		b := slices.Clone(bases[rng.IntN(len(bases))])
		for m := rng.IntN(3) + 1; m > 0 && len(b) > 0; m-- {
			at := rng.IntN(len(b))
			switch rng.IntN(4) {
			case 0:
				b[at] = byte(rng.IntN(256))
			case 1:
				b = slices.Insert(b, at, byte(rng.IntN(256)))
			case 2:
				b = b[:at]
			default:
				b[at] ^= 1 << rng.IntN(8)
			}
		}
		agreeOn(t, b, uint8(rng.IntN(256)))
	}
}
