package proxyheader

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Read reads the PROXY header that c starts with and returns it parsed. It
// consumes exactly the header: the next byte read from c is the first byte
// of payload. The deadline bounds the whole read (a peer that sends nothing,
// or half a header, is cut off there); c's read deadline is cleared before
// Read returns.
//
// A header may arrive in pieces: Read waits for the rest until the
// deadline. It fails at once when the first bytes can't start a header
// (ErrNoHeader) or announce one too long (ErrTooLong), when the peer closes
// first (io.ErrUnexpectedEOF), and with an error matching
// os.ErrDeadlineExceeded when time runs out.
func Read(c *net.TCPConn, deadline time.Time) (Header, error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return Header{}, err
	}
	defer c.SetReadDeadline(time.Time{})
	n, err := peekLength(c)
	if err != nil {
		return Header{}, err
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		return Header{}, fmt.Errorf("read PROXY header: %w", err)
	}
	return Parse(b)
}

// ReadContext is Read that also gives up when ctx is canceled (by closing
// c, which the caller owns and closes anyway after a failure).
func ReadContext(ctx context.Context, c *net.TCPConn, deadline time.Time) (Header, error) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	h, err := Read(c, deadline)
	if !stop() && err != nil {
		err = errors.Join(ctx.Err(), err)
	}
	return h, err
}
