package proxyheader

import "encoding/binary"

// TypeAuthority is the v2 TLV type PP2_TYPE_AUTHORITY: the host name the
// client asked for (the TLS server name), as UTF-8.
const TypeAuthority = 0x02

// AppendTLV appends one TLV (type typ, value v) to the v2 header that ends
// b and starts at b[start:], and adds its size to the header's length
// field. A value that would take the header past MaxV2Length is left out
// (b is returned unchanged): the header stays one that lbctl itself, and
// go-proxyproto, would accept.
//
//	hdr := proxyheader.AppendV2(buf, client, local, false)
//	hdr = proxyheader.AppendTLV(hdr, 0, proxyheader.TypeAuthority, []byte(sni))
func AppendTLV(b []byte, start int, typ byte, v []byte) []byte {
	if len(b) < start+v2Fixed {
		return b
	}
	n := int(binary.BigEndian.Uint16(b[start+14:]))
	if n+3+len(v) > MaxV2Length {
		return b
	}
	binary.BigEndian.PutUint16(b[start+14:], uint16(n+3+len(v)))
	b = append(b, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}
