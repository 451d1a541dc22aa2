package proxyheader

import (
	"bufio"
	"bytes"
	"net/netip"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

// FuzzParse feeds arbitrary bytes, as the first bytes of a connection, to
// the header parsing path. Besides never panicking:
//
//   - Length agrees with go-proxyproto: when the library reads a header off
//     the stream, Length finds a header of exactly that many bytes, so the
//     peek-then-read path never leaves a header byte behind nor takes a
//     payload byte;
//
//   - a header Parse accepts is written again by AppendV1/AppendV2 and
//     parses back to the same addresses.
//
//     go test -run '^$' -fuzz FuzzParse ./pkg/proxyheader
//
// Seeds: testdata/fuzz/FuzzParse (crashers found so far are kept there).
func FuzzParse(f *testing.F) {
	for _, s := range [][]byte{
		AppendV1(nil, v4src, v4dst), AppendV1(nil, v6src, v6dst), []byte("PROXY UNKNOWN\r\n"),
		[]byte("PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"),
		v2TCP4, v2UDP6, v2Local, v2TLV, append(append([]byte{}, v2TCP4...), "GET / HTTP/1.0\r\n\r\n"...),
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), {0x16, 0x03, 0x01, 0x00, 0xa5},
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := Length(b)
		if err == nil && n > 0 && (n < 5 || n > v2Fixed+MaxV2Length) {
			t.Fatalf("Length = %d for %q", n, b)
		}

		r := bufio.NewReaderSize(bytes.NewReader(b), max(len(b), 16))
		if ph, lerr := proxyproto.Read(r); lerr == nil {
			used := len(b) - r.Buffered()
			if err != nil || n != used {
				t.Fatalf("go-proxyproto read a %d-byte header %+v, Length says %d, %v", used, ph, n, err)
			}
		}
		if err != nil || n == 0 || n > len(b) {
			return
		}
		h, err := Parse(b[:n])
		if err != nil {
			return
		}
		if h.Version != 1 && h.Version != 2 {
			t.Fatalf("version %d", h.Version)
		}
		if h.Local {
			if h.Source.IsValid() || h.Destination.IsValid() {
				t.Fatalf("local header with addresses %+v", h)
			}
			return
		}
		if !h.Source.IsValid() || !h.Destination.IsValid() || h.Source.Addr().Is4In6() || h.Source.Addr().Zone() != "" {
			t.Fatalf("addresses %+v from %q", h, b[:n])
		}
		for _, again := range [][]byte{AppendV1(nil, h.Source, h.Destination), AppendV2(nil, h.Source, h.Destination, h.UDP)} {
			h2, err := Parse(again)
			if err != nil || h2.Source != h.Source || h2.Destination != h.Destination {
				t.Fatalf("%+v written as %q parses as %+v, %v", h, again, h2, err)
			}
		}
	})
}

// FuzzAppend: any pair of addresses makes headers that go-proxyproto reads
// back to the same addresses (unmapped).
func FuzzAppend(f *testing.F) {
	f.Add([]byte{192, 0, 2, 7}, uint16(1), []byte{198, 51, 100, 1}, uint16(443), false)
	f.Add(netip.MustParseAddr("2001:db8::1").AsSlice(), uint16(65535), []byte{10, 0, 0, 1}, uint16(0), true)
	f.Add(netip.MustParseAddr("::ffff:10.1.2.3").AsSlice(), uint16(5), netip.MustParseAddr("::ffff:10.1.2.4").AsSlice(), uint16(6), false)
	f.Fuzz(func(t *testing.T, s []byte, sp uint16, d []byte, dp uint16, udp bool) {
		sa, ok1 := netip.AddrFromSlice(s)
		da, ok2 := netip.AddrFromSlice(d)
		if !ok1 || !ok2 {
			return
		}
		src, dst := netip.AddrPortFrom(sa, sp), netip.AddrPortFrom(da, dp)
		for _, b := range [][]byte{AppendV1(nil, src, dst), AppendV2(nil, src, dst, udp)} {
			h, err := Parse(b)
			if err != nil {
				t.Fatalf("%v -> %v: %q does not parse: %v", src, dst, b, err)
			}
			ws, wd := src, dst
			if sa.Unmap().Is4() != da.Unmap().Is4() {
				// Mixed families travel as IPv6 and come back unmapped.
				ws = netip.AddrPortFrom(netip.AddrFrom16(sa.As16()).Unmap(), sp)
				wd = netip.AddrPortFrom(netip.AddrFrom16(da.As16()).Unmap(), dp)
			}
			ws, wd = unmap(ws), unmap(wd)
			if h.Source != ws || h.Destination != wd {
				t.Fatalf("%v -> %v: %q parses as %+v", src, dst, b, h)
			}
		}
	})
}
