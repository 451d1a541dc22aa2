//go:build !unix

package proxyheader

import (
	"errors"
	"net"
)

// peekLength is not available without MSG_PEEK.
func peekLength(c *net.TCPConn) (int, error) {
	return 0, errors.New("reading PROXY headers needs a Unix system")
}
