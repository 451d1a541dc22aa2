package tlshello

import (
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// Extension numbers (IANA TLS ExtensionType registry).
const (
	extServerName = 0
	extALPN       = 16
)

// Parse parses a ClientHello handshake message, header included (the
// bytes after the record headers, reassembled), and returns its server
// name and ALPN list. Raw is left nil. It is the parser Read uses.
func Parse(msg []byte) (*Hello, error) {
	s := cryptobyte.String(msg)
	var typ uint8
	var body cryptobyte.String
	if !s.ReadUint8(&typ) || !s.ReadUint24LengthPrefixed(&body) || !s.Empty() {
		return nil, fmt.Errorf("%w: bad handshake header", ErrMalformed)
	}
	if typ != typeClientHello {
		return nil, fmt.Errorf("%w: handshake message of type %d, not a ClientHello", ErrMalformed, typ)
	}
	h := &Hello{}
	if err := parse(body, h); err != nil {
		return nil, err
	}
	return h, nil
}

// parse fills h from a ClientHello body (RFC 8446 section 4.1.2):
//
//	ProtocolVersion legacy_version;
//	Random random;                            32 bytes
//	opaque legacy_session_id<0..32>;
//	CipherSuite cipher_suites<2..2^16-2>;
//	opaque legacy_compression_methods<1..2^8-1>;
//	Extension extensions<8..2^16-1>;          absent in some pre-TLS 1.2 hellos
func parse(body []byte, h *Hello) error {
	s := cryptobyte.String(body)
	var (
		version         uint16
		sessionID       cryptobyte.String
		ciphers, comprs cryptobyte.String
	)
	if !s.ReadUint16(&version) || !s.Skip(32) ||
		!s.ReadUint8LengthPrefixed(&sessionID) || len(sessionID) > 32 ||
		!s.ReadUint16LengthPrefixed(&ciphers) || len(ciphers) < 2 || len(ciphers)%2 != 0 ||
		!s.ReadUint8LengthPrefixed(&comprs) || len(comprs) < 1 {
		return fmt.Errorf("%w: bad fixed fields", ErrMalformed)
	}
	if version>>8 != 3 {
		return fmt.Errorf("%w: client version 0x%04x", ErrMalformed, version)
	}
	if s.Empty() {
		return nil // no extensions: no SNI, no ALPN
	}
	var exts cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&exts) || !s.Empty() {
		return fmt.Errorf("%w: bad extensions block", ErrMalformed)
	}
	var seenSNI, seenALPN bool
	for !exts.Empty() {
		var typ uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
			return fmt.Errorf("%w: bad extension", ErrMalformed)
		}
		switch typ {
		case extServerName:
			if seenSNI {
				return fmt.Errorf("%w: two server_name extensions", ErrMalformed)
			}
			seenSNI = true
			name, err := serverName(data)
			if err != nil {
				return err
			}
			h.ServerName = name
		case extALPN:
			if seenALPN {
				return fmt.Errorf("%w: two ALPN extensions", ErrMalformed)
			}
			seenALPN = true
			protos, err := alpn(data)
			if err != nil {
				return err
			}
			h.ALPN = protos
		}
	}
	return nil
}

// serverName parses the server_name extension (RFC 6066 section 3) and
// returns its host_name, normalised.
//
//	ServerName server_name_list<1..2^16-1>;   NameType (1 byte, 0 = host_name), HostName<1..2^16-1>
func serverName(data cryptobyte.String) (string, error) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || list.Empty() {
		return "", fmt.Errorf("%w: bad server_name extension", ErrMalformed)
	}
	var name string
	for !list.Empty() {
		var typ uint8
		var v cryptobyte.String
		if !list.ReadUint8(&typ) || !list.ReadUint16LengthPrefixed(&v) || len(v) == 0 {
			return "", fmt.Errorf("%w: bad server_name entry", ErrMalformed)
		}
		if typ != 0 {
			continue // not host_name: no other type is defined
		}
		if name != "" {
			return "", fmt.Errorf("%w: two host names in server_name", ErrMalformed)
		}
		n, err := normalise(v)
		if err != nil {
			return "", err
		}
		name = n
	}
	return name, nil
}

// normalise lower-cases an ASCII host name and drops one trailing dot.
// Names are printable ASCII, at most 255 bytes (RFC 6066: "HostName"
// is the DNS name in ASCII; an IDN is sent as its A-label).
func normalise(v []byte) (string, error) {
	if len(v) > 0 && v[len(v)-1] == '.' {
		v = v[:len(v)-1]
	}
	if len(v) == 0 || len(v) > 255 {
		return "", fmt.Errorf("%w: server name of %d bytes", ErrMalformed, len(v))
	}
	b := make([]byte, len(v))
	for i, c := range v {
		switch {
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		case c <= ' ' || c >= 0x7f:
			return "", fmt.Errorf("%w: server name with byte 0x%02x", ErrMalformed, c)
		}
		b[i] = c
	}
	return string(b), nil
}

// alpn parses the application_layer_protocol_negotiation extension
// (RFC 7301 section 3.1).
//
//	ProtocolName protocol_name_list<2..2^16-1>;   each opaque ProtocolName<1..2^8-1>
func alpn(data cryptobyte.String) ([]string, error) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || list.Empty() {
		return nil, fmt.Errorf("%w: bad ALPN extension", ErrMalformed)
	}
	var out []string
	for !list.Empty() {
		var p cryptobyte.String
		if !list.ReadUint8LengthPrefixed(&p) || len(p) == 0 {
			return nil, fmt.Errorf("%w: bad ALPN protocol name", ErrMalformed)
		}
		out = append(out, string(p))
	}
	return out, nil
}
