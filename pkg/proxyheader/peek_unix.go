//go:build unix

package proxyheader

import (
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// peekBuf covers a v1 line (107 bytes) and a v2 header with IPv6 addresses
// and a few TLVs; a longer v2 header gets a buffer of its announced size.
const peekBuf = 256

// peekLength waits until the socket's receive queue holds a complete
// header and returns its length, without taking a byte off the queue.
//
// Each wake-up of the runtime poller costs one recv(MSG_PEEK). A header
// that arrives whole (the spec asks senders to send it in one segment)
// costs exactly one peek; a header in pieces one peek per piece. When the
// queue holds part of a header, returning false goes back to the poller,
// which wakes on the next segment (or the deadline).
func peekLength(c *net.TCPConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	buf := make([]byte, peekBuf)
	var need int
	var perr error
	err = raw.Read(func(fd uintptr) bool {
		for {
			n, _, err := unix.Recvfrom(int(fd), buf, unix.MSG_PEEK)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return false
			case err != nil:
				perr = fmt.Errorf("peek PROXY header: %w", err)
				return true
			case n == 0:
				perr = fmt.Errorf("peek PROXY header: %w", io.ErrUnexpectedEOF)
				return true
			}
			need, perr = Length(buf[:n])
			if perr != nil {
				return true
			}
			if need > len(buf) {
				buf = make([]byte, need)
				continue
			}
			if need > 0 && n >= need {
				return true
			}
			// More bytes are needed (Length only asks while n is below
			// every limit, so n < len(buf) here). A peer that has shut
			// down its side will never send them.
			if peerClosed(fd) {
				perr = fmt.Errorf("peek PROXY header: %w after %s", io.ErrUnexpectedEOF, byteCount(n))
				return true
			}
			return false
		}
	})
	if err != nil {
		return 0, fmt.Errorf("wait for PROXY header: %w", err)
	}
	return need, perr
}
