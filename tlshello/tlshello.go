// Package tlshello reads a TLS ClientHello off a connection without
// terminating TLS, so that a proxy can route on the server name (SNI) and
// the offered application protocols (ALPN), then hand the very same bytes
// to the backend it chose.
//
//	h, err := tlshello.Read(conn, time.Now().Add(5*time.Second))
//	if err != nil {
//		// errors.Is(err, tlshello.ErrNotTLS), ErrMalformed, ErrTooLarge,
//		// ErrTruncated or ErrTimeout: close the connection
//	}
//	backend.Write(h.Raw) // exactly what was read, unchanged
//	route(h.ServerName, h.ALPN)
//
// A ClientHello may arrive in any shape: one TCP segment or many (a
// post-quantum key share such as X25519MLKEM768 makes it about 1.8 KB,
// more than one segment on an Ethernet path), one byte per segment, or
// split over several TLS handshake records (RFC 8446 section 5.1 allows
// fragments of any non-zero size). Read waits for all of it until the
// deadline. It reads no further than the end of the record that completes
// the hello, and returns every byte it read, including any bytes of that
// record after the hello.
//
// Memory is bounded by what the peer declared and actually sent: the
// buffer grows by doubling as bytes arrive, up to the lengths the record
// and handshake headers declared, never to MaxSize up front. A hello whose
// records (headers included) would exceed MaxSize is refused.
//
// The hello is parsed with golang.org/x/crypto/cryptobyte. The package
// only reads: it does not verify anything cryptographic, speak SSLv2, or
// look at anything after the ClientHello. It imports nothing of lbctl.
package tlshello

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// MaxSize bounds the bytes Read takes for one ClientHello, record headers
// included. Real hellos are well under 4 KiB, post-quantum ones included;
// 64 KiB is the handshake message limit most TLS stacks enforce.
const MaxSize = 64 << 10

// maxRecord is the largest TLSPlaintext fragment (RFC 8446 section 5.1).
const maxRecord = 1 << 14

const (
	recordHeaderLen    = 5
	handshakeHeaderLen = 4
	recordTypeHS       = 0x16
	typeClientHello    = 0x01
)

// The errors Read and Parse return wrap one of these, so callers can tell
// them apart with errors.Is.
var (
	// ErrNotTLS: the first bytes are not a TLS handshake record (plain
	// HTTP, SSH, an SSLv2 hello, ...).
	ErrNotTLS = errors.New("not a TLS handshake")
	// ErrMalformed: a TLS record or a ClientHello that breaks the protocol.
	ErrMalformed = errors.New("malformed ClientHello")
	// ErrTooLarge: the hello would take more than MaxSize bytes.
	ErrTooLarge = errors.New("ClientHello too large")
	// ErrTruncated: the peer closed the connection before the hello was
	// complete.
	ErrTruncated = errors.New("ClientHello truncated")
	// ErrTimeout: the hello was not complete at the deadline (the error
	// also matches os.ErrDeadlineExceeded).
	ErrTimeout = errors.New("ClientHello not complete in time")
)

// Hello is one ClientHello as it was read.
type Hello struct {
	// Raw holds every byte read from the connection, in order: the TLS
	// records that carry the hello (headers included) and whatever
	// followed the hello inside the last of them. Write it to the
	// backend unchanged.
	Raw []byte
	// ServerName is the host_name of the server_name extension, lower-cased
	// (ASCII) and without a trailing dot; "" when the client sent none.
	ServerName string
	// ALPN lists the protocols of the application_layer_protocol_negotiation
	// extension in the client's order; nil when absent.
	ALPN []string
}

// Conn is what Read needs of a connection (a *net.TCPConn is one).
type Conn interface {
	io.Reader
	SetReadDeadline(time.Time) error
}

// Read reads one ClientHello from c, waiting for all of it until
// deadline, and parses it. c's read deadline is cleared before Read
// returns. On error the bytes read so far are lost to the caller, who is
// expected to close c.
func Read(c Conn, deadline time.Time) (*Hello, error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return nil, err
	}
	defer c.SetReadDeadline(time.Time{})
	var r reader
	r.c = c
	var w walk
	raw, msg, err := r.hello(&w)
	if err != nil {
		return nil, err
	}
	h := &Hello{Raw: raw}
	if err := parse(msg, h); err != nil {
		return nil, err
	}
	return h, nil
}

// Parser is Read for a caller that reads the connection itself, such as
// an event loop, and hands over the bytes as they come (Next). It looks
// at each byte once, however the hello is cut into records and reads, and
// holds no more than the declared message besides the caller's bytes. Its
// zero value is ready; one Parser serves one connection.
type Parser struct{ w walk }

// Next reports what raw, the bytes read from the connection so far from
// its first, makes. raw only grows between calls: the same bytes, with
// more after them. Once raw holds the whole hello, Next returns it,
// parsed; its Raw is raw, with any bytes after the hello (the caller
// writes them on to the backend with the rest). Until then it returns
// need, the length raw must reach before Next can say more: reading no
// more than need-len(raw) leaves every byte after the hello's last record
// in the socket, as Read does. An error is one of Read's: ErrNotTLS
// (known from the first byte), ErrMalformed or ErrTooLarge; the Parser is
// then done.
func (p *Parser) Next(raw []byte) (h *Hello, need int, err error) {
	r := reader{raw: raw}
	_, msg, err := r.hello(&p.w)
	if err == errNeed {
		return nil, r.need, nil
	}
	if err != nil {
		return nil, 0, err
	}
	h = &Hello{Raw: raw}
	if err := parse(msg, h); err != nil {
		return nil, 0, err
	}
	return h, 0, nil
}

// ReadContext is Read that also gives up when ctx is canceled, by calling
// closeConn (the caller closes the connection after a failure anyway).
func ReadContext(ctx context.Context, c Conn, deadline time.Time, closeConn func()) (*Hello, error) {
	stop := context.AfterFunc(ctx, closeConn)
	h, err := Read(c, deadline)
	if !stop() && err != nil {
		err = errors.Join(ctx.Err(), err)
	}
	return h, err
}

// reader accumulates the raw bytes of one hello: read from c, or, with
// c nil, given whole (Next).
type reader struct {
	c    Conn
	raw  []byte
	need int // Next: the length raw must reach, when fill found it short
}

// errNeed is fill's error without a connection, when raw is short.
var errNeed = errors.New("more bytes needed")

// fill reads until r.raw holds n bytes. The buffer grows only once it is
// full, to twice its size, or at once to n when n is at most 2 KiB (a
// whole hello of common size, a post-quantum one included, in one
// allocation): it never holds more than twice what arrived, or 2 KiB,
// whatever the peer declared. A hello in many small records doubles its
// way up, never copying more than twice its bytes.
func (r *reader) fill(n int) error {
	if n > MaxSize {
		return fmt.Errorf("%w: more than %d bytes", ErrTooLarge, MaxSize)
	}
	if r.c == nil {
		if len(r.raw) < n {
			r.need = n
			return errNeed
		}
		return nil
	}
	for len(r.raw) < n {
		if len(r.raw) == cap(r.raw) {
			c := min(max(2*cap(r.raw), min(n, 2048)), MaxSize)
			grown := make([]byte, len(r.raw), c)
			copy(grown, r.raw)
			r.raw = grown
		}
		// Read only up to what is declared: bytes after the hello's last
		// record stay in the socket.
		m, err := r.c.Read(r.raw[len(r.raw):min(cap(r.raw), n)])
		r.raw = r.raw[:len(r.raw)+m]
		if err != nil {
			if len(r.raw) >= n {
				break
			}
			return readErr(err, len(r.raw))
		}
	}
	return nil
}

func readErr(err error, got int) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w after %d bytes: %w", ErrTimeout, got, err)
	case errors.Is(err, io.EOF):
		if got == 0 {
			return fmt.Errorf("%w: connection closed before any byte: %w", ErrTruncated, io.ErrUnexpectedEOF)
		}
		return fmt.Errorf("%w after %d bytes: %w", ErrTruncated, got, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("read ClientHello after %d bytes: %w", got, err)
}

// walk is where the record walk of one hello stands between two calls of
// hello: for Read, within one call; for a Parser, across calls, so that
// each byte is looked at once however the hello arrives. It holds
// offsets into the caller's bytes, which only grow, and the body as far
// as it was assembled: never more than the declared message.
type walk struct {
	start   int                      // offset of the next record (the first is at 0)
	records int                      // records done
	total   int                      // handshake bytes in the records done
	hdr     [handshakeHeaderLen]byte // the handshake header, as far as it came
	have    int                      // bytes of hdr
	msgLen  int                      // the body's declared length, once hdr is whole
	body    []byte                   // the body so far, from the second record on
}

// hello reads records until one handshake message is complete. It
// returns the raw bytes and the handshake message's body (the ClientHello
// without its 4-byte header). The body aliases raw when the message sits
// in one record, else it is a copy of exactly its declared size.
func (r *reader) hello(w *walk) (raw, body []byte, err error) {
	for {
		start := w.start
		if err := r.fill(start + recordHeaderLen); err != nil {
			if w.records == 0 && len(r.raw) > 0 && r.raw[0] != recordTypeHS {
				// Known from the first byte, without waiting for more.
				return nil, nil, fmt.Errorf("%w: first byte 0x%02x", ErrNotTLS, r.raw[0])
			}
			return nil, nil, err
		}
		h := r.raw[start : start+recordHeaderLen]
		typ, major, minor := h[0], h[1], h[2]
		n := int(h[3])<<8 | int(h[4])
		switch {
		case w.records == 0 && (typ != recordTypeHS || major != 3 || minor > 4):
			return nil, nil, fmt.Errorf("%w: record header % x", ErrNotTLS, h)
		case typ != recordTypeHS:
			return nil, nil, fmt.Errorf("%w: record of type %d inside the hello", ErrMalformed, typ)
		case major != 3 || minor > 4:
			return nil, nil, fmt.Errorf("%w: record version %d.%d", ErrMalformed, major, minor)
		case n == 0:
			return nil, nil, fmt.Errorf("%w: empty handshake record", ErrMalformed)
		case n > maxRecord:
			return nil, nil, fmt.Errorf("%w: record of %d bytes (limit %d)", ErrMalformed, n, maxRecord)
		}
		end := start + recordHeaderLen + n
		if err := r.fill(end); err != nil {
			return nil, nil, err
		}
		// The record is whole: from here on w moves past it.
		frag := r.raw[start+recordHeaderLen : end]
		w.start = end
		w.records++
		w.total += n
		// The handshake header may itself be split over records.
		k := copy(w.hdr[w.have:], frag)
		w.have += k
		if w.have < handshakeHeaderLen {
			continue
		}
		if k > 0 { // the header became whole in this record
			if w.hdr[0] != typeClientHello {
				return nil, nil, fmt.Errorf("%w: handshake message of type %d, not a ClientHello", ErrMalformed, w.hdr[0])
			}
			w.msgLen = int(w.hdr[1])<<16 | int(w.hdr[2])<<8 | int(w.hdr[3])
			// The records carrying the message take at least this much.
			if recordHeaderLen+handshakeHeaderLen+w.msgLen > MaxSize {
				return nil, nil, fmt.Errorf("%w: hello of %d bytes declared (limit %d with framing)", ErrTooLarge, w.msgLen, MaxSize)
			}
		}
		done := w.total >= handshakeHeaderLen+w.msgLen
		if done && w.records == 1 {
			// All in the first record: the body is part of raw.
			const at = recordHeaderLen + handshakeHeaderLen // the first record is at 0
			return r.raw[:end], r.raw[at : at+w.msgLen], nil
		}
		// Assemble the body as the records come (after the header's
		// bytes, and without what follows the message in its last
		// record).
		if w.body == nil {
			w.body = make([]byte, 0, w.msgLen)
		}
		w.body = append(w.body, frag[k:min(len(frag), k+w.msgLen-len(w.body))]...)
		if done {
			return r.raw[:end], w.body, nil
		}
	}
}
