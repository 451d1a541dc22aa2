// Package proxyheader reads and writes PROXY protocol headers, versions 1
// and 2 (HAProxy's proxy-protocol.txt): the text line or binary block that
// a proxy sends ahead of a connection's payload to tell the next hop who
// the real client is.
//
// Reading is made for a proxy that splices: Read takes the accepted
// *net.TCPConn itself and consumes exactly the header's bytes, never a byte
// of payload, so the connection can be handed on unwrapped afterwards. (A
// bufio.Reader in front of the connection would read past the header, and
// the payload it buffered would have to be forwarded before splicing could
// start.) Read peeks at the socket's receive queue (MSG_PEEK) until the
// header is complete, learns its length from its first bytes (Length), then
// reads exactly that many bytes and parses them with
// github.com/pires/go-proxyproto (Parse). That costs a peek and a deadline
// more than go-proxyproto's bufio way: about 1.7 µs per connection on a
// 2-vCPU machine (BenchmarkReadPeek against BenchmarkReadBufio), paid once,
// before the first byte of payload.
//
//	h, err := proxyheader.Read(c, time.Now().Add(5*time.Second))
//	if err != nil {
//		c.Close() // no header, a malformed one, or too slow
//		return
//	}
//	client := peer
//	if !h.Local {
//		client = h.Source
//	}
//
// Writing: AppendV1 and AppendV2 append a header for a connection from src
// to dst to a buffer.
//
// It does not decide who may send a header (trusted proxies) or what to do
// with the addresses: that is the listener's job (pkg/server).
package proxyheader

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	proxyproto "github.com/pires/go-proxyproto"
)

// Errors. Read and Parse wrap them, and go-proxyproto's own error when it
// has one, so errors.Is works on both.
var (
	// ErrNoHeader: the connection does not start with a PROXY signature.
	ErrNoHeader = errors.New("no PROXY protocol header")
	// ErrMalformed: a signature, then something the protocol does not allow.
	ErrMalformed = errors.New("malformed PROXY protocol header")
	// ErrTooLong: a v1 line without CRLF in its first 107 bytes, or a v2
	// header longer than MaxV2Length.
	ErrTooLong = errors.New("PROXY protocol header too long")
)

const (
	// MaxV1Length is the longest v1 header, CRLF included (the spec's
	// worst case "PROXY UNKNOWN ffff:...:ffff ffff:...:ffff 65535 65535\r\n").
	MaxV1Length = 107
	// MaxV2Length bounds what follows a v2 header's fixed 16 bytes (addresses
	// and TLVs). The protocol allows 65,535; go-proxyproto's limit of 4 KiB
	// leaves room for a client certificate TLV and keeps a hostile peer from
	// making lbctl buffer 64 KiB per connection.
	MaxV2Length = 4096
	v2Fixed     = 16
)

var (
	sigV1 = []byte("PROXY")
	sigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// Header is a parsed PROXY header.
type Header struct {
	Version int // 1 or 2
	// Local is true for a v2 LOCAL command or a v1 "PROXY UNKNOWN" line: the
	// sender speaks for itself (a health check, for instance) and the
	// connection's own addresses apply. Source and Destination are then zero.
	Local bool
	// UDP is true when a v2 header describes a datagram flow.
	UDP bool
	// Source is the original client, Destination the address it connected
	// to. IPv4-mapped IPv6 addresses are unmapped (::ffff:10.0.0.1 becomes
	// 10.0.0.1).
	Source, Destination netip.AddrPort
}

// Length returns the length of the PROXY header that b starts with, once b
// holds enough of it to tell, or 0 when more bytes are needed. The error is
// ErrNoHeader when b can't be the start of a header and ErrTooLong when the
// header would be longer than the limits. Length never looks beyond what it
// needs: b may hold payload after the header.
func Length(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	switch b[0] {
	case sigV1[0]:
		if k := min(len(b), len(sigV1)); !bytes.Equal(b[:k], sigV1[:k]) {
			return 0, ErrNoHeader
		}
		if i := bytes.IndexByte(b[:min(len(b), MaxV1Length)], '\n'); i >= 0 {
			return i + 1, nil
		}
		if len(b) >= MaxV1Length {
			return 0, fmt.Errorf("%w: no CRLF in the first %d bytes of a v1 header", ErrTooLong, MaxV1Length)
		}
		return 0, nil
	case sigV2[0]:
		if k := min(len(b), len(sigV2)); !bytes.Equal(b[:k], sigV2[:k]) {
			return 0, ErrNoHeader
		}
		if len(b) < v2Fixed {
			return 0, nil
		}
		n := int(binary.BigEndian.Uint16(b[14:16]))
		if n > MaxV2Length {
			return 0, fmt.Errorf("%w: v2 header announces %d bytes, limit %d", ErrTooLong, n, MaxV2Length)
		}
		return v2Fixed + n, nil
	}
	return 0, ErrNoHeader
}

// Parse parses b, which must hold exactly one complete header (as long as
// Length says) and nothing else.
func Parse(b []byte) (Header, error) {
	n, err := Length(b)
	switch {
	case err != nil:
		return Header{}, err
	case n == 0 || n > len(b):
		return Header{}, fmt.Errorf("%w: incomplete (%s)", ErrMalformed, byteCount(len(b)))
	case n < len(b):
		return Header{}, fmt.Errorf("%w: %s after the header", ErrMalformed, byteCount(len(b)-n))
	}
	br := bytes.NewReader(b)
	// A buffer as large as the header holds it whole after one read, which
	// go-proxyproto's v1 parser insists on.
	r := bufio.NewReaderSize(br, len(b))
	ph, err := proxyproto.Read(r)
	if err != nil {
		return Header{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if used := len(b) - r.Buffered() - br.Len(); used != len(b) {
		return Header{}, fmt.Errorf("%w: the parser took %d of %d bytes", ErrMalformed, used, len(b))
	}
	h := Header{Version: int(ph.Version)}
	if ph.Command.IsLocal() {
		h.Local = true
		return h, nil
	}
	var src, dst net.Addr = ph.SourceAddr, ph.DestinationAddr
	switch {
	case ph.TransportProtocol.IsStream() && !ph.TransportProtocol.IsUnix():
		s, d, ok := ph.TCPAddrs()
		if !ok {
			return Header{}, fmt.Errorf("%w: no TCP addresses", ErrMalformed)
		}
		h.Source, h.Destination = addrPort(s.IP, s.Port), addrPort(d.IP, d.Port)
	case ph.TransportProtocol.IsDatagram() && !ph.TransportProtocol.IsUnix():
		s, d, ok := ph.UDPAddrs()
		if !ok {
			return Header{}, fmt.Errorf("%w: no UDP addresses", ErrMalformed)
		}
		h.UDP = true
		h.Source, h.Destination = addrPort(s.IP, s.Port), addrPort(d.IP, d.Port)
	default:
		// AF_UNIX (or anything else) names no IP client to apply rules to.
		return Header{}, fmt.Errorf("%w: unsupported address family %#x (%v -> %v)", ErrMalformed,
			byte(ph.TransportProtocol), src, dst)
	}
	if !h.Source.IsValid() || !h.Destination.IsValid() {
		return Header{}, fmt.Errorf("%w: invalid address", ErrMalformed)
	}
	return h, nil
}

func addrPort(ip net.IP, port int) netip.AddrPort {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || port < 0 || port > 65535 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port))
}

// family returns src and dst in one address family: both unmapped IPv4
// when they can be, else both IPv6 (an IPv4 one mapped). ok is false when
// either is not a valid address.
func family(src, dst netip.AddrPort) (s, d netip.AddrPort, ok bool) {
	if !src.IsValid() || !dst.IsValid() {
		return s, d, false
	}
	sa, da := src.Addr().Unmap().WithZone(""), dst.Addr().Unmap().WithZone("")
	if sa.Is4() != da.Is4() {
		sa, da = netip.AddrFrom16(sa.As16()), netip.AddrFrom16(da.As16())
	}
	return netip.AddrPortFrom(sa, src.Port()), netip.AddrPortFrom(da, dst.Port()), true
}

// AppendV1 appends the v1 header ("PROXY TCP4 src dst sport dport\r\n") of
// a TCP connection from src to dst. When either address is invalid it
// appends "PROXY UNKNOWN\r\n" (the receiver then uses the connection's own
// addresses).
func AppendV1(b []byte, src, dst netip.AddrPort) []byte {
	s, d, ok := family(src, dst)
	if !ok {
		return append(b, "PROXY UNKNOWN\r\n"...)
	}
	if s.Addr().Is4() {
		b = append(b, "PROXY TCP4 "...)
	} else {
		b = append(b, "PROXY TCP6 "...)
	}
	b = s.Addr().AppendTo(b)
	b = append(b, ' ')
	b = d.Addr().AppendTo(b)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(s.Port()), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(d.Port()), 10)
	return append(b, '\r', '\n')
}

// AppendV2 appends the v2 header of a TCP connection (udp false) or a UDP
// flow (udp true) from src to dst, without TLVs. When either address is
// invalid it appends a LOCAL header.
func AppendV2(b []byte, src, dst netip.AddrPort, udp bool) []byte {
	b = append(b, sigV2...)
	s, d, ok := family(src, dst)
	if !ok {
		return append(b, 0x20, 0x00, 0, 0) // version 2, LOCAL; UNSPEC; length 0
	}
	transport := byte(0x1) // STREAM
	if udp {
		transport = 0x2 // DGRAM
	}
	if s.Addr().Is4() {
		b = append(b, 0x21, 0x10|transport, 0, 12) // version 2, PROXY; AF_INET
		sa, da := s.Addr().As4(), d.Addr().As4()
		b = append(b, sa[:]...)
		b = append(b, da[:]...)
	} else {
		b = append(b, 0x21, 0x20|transport, 0, 36) // AF_INET6
		sa, da := s.Addr().As16(), d.Addr().As16()
		b = append(b, sa[:]...)
		b = append(b, da[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, s.Port())
	return binary.BigEndian.AppendUint16(b, d.Port())
}
