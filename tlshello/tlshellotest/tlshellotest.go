// Package tlshellotest makes TLS ClientHellos for tests and benchmarks of
// code that reads them (tlshello, the server's SNI routes, lbbench): the
// exact bytes Go's crypto/tls client sends, captured in memory without a
// network, and the same hello cut into smaller handshake records.
//
//	hello, err := tlshellotest.Hello(&tls.Config{ServerName: "api.example.com", InsecureSkipVerify: true})
//	split := tlshellotest.Reframe(hello, 100) // records of at most 100 bytes
//
// It only makes bytes: it opens no sockets and imports nothing of lbctl.
package tlshellotest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"
)

// Hello returns the TLS records of the ClientHello that Go's crypto/tls
// client sends with cfg, exactly as it writes them on the wire. cfg needs
// a ServerName or InsecureSkipVerify, as for any tls.Client.
func Hello(cfg *tls.Config) ([]byte, error) {
	c := &Conn{}
	err := tls.Client(c, cfg).Handshake() // fails at the first read, after the hello
	if c.Written.Len() == 0 {
		return nil, errors.Join(errors.New("tlshellotest: the TLS client wrote nothing"), err)
	}
	return c.Written.Bytes(), nil
}

// Reframe cuts the handshake bytes carried by the records of hello into
// records of at most size bytes each (RFC 8446 section 5.1 allows
// fragments of any non-zero size). It panics if hello is not a sequence
// of whole TLS records.
func Reframe(hello []byte, size int) []byte {
	var hs []byte
	for b := hello; len(b) > 0; {
		n := 0
		if len(b) >= 5 {
			n = int(b[3])<<8 | int(b[4])
		}
		if len(b) < 5+n {
			panic("tlshellotest.Reframe: not a sequence of whole TLS records")
		}
		hs = append(hs, b[5:5+n]...)
		b = b[5+n:]
	}
	var out []byte
	for len(hs) > 0 {
		k := min(size, len(hs))
		out = append(out, 0x16, 0x03, 0x01, byte(k>>8), byte(k))
		out = append(out, hs[:k]...)
		hs = hs[k:]
	}
	return out
}

// Conn is an in-memory net.Conn for driving crypto/tls without a
// network: reads come from R (io.EOF once R is drained, or at once when R
// is nil), writes are kept in Written, and closing and deadlines do
// nothing.
type Conn struct {
	net.Conn // nil: only the methods below are called
	R        io.Reader
	Written  bytes.Buffer
}

func (c *Conn) Read(b []byte) (int, error) {
	if c.R == nil {
		return 0, io.EOF
	}
	return c.R.Read(b)
}

func (c *Conn) Write(b []byte) (int, error)      { return c.Written.Write(b) }
func (c *Conn) Close() error                     { return nil }
func (c *Conn) SetDeadline(time.Time) error      { return nil }
func (c *Conn) SetReadDeadline(time.Time) error  { return nil }
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }
func (c *Conn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *Conn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
