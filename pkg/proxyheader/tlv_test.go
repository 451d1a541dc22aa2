package proxyheader

import (
	"bufio"
	"bytes"
	"net/netip"
	"strings"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

// TestAppendTLVAuthority: the header with an AUTHORITY TLV parses, with
// go-proxyproto and with Parse, to the same addresses and the name.
func TestAppendTLVAuthority(t *testing.T) {
	for _, src := range []netip.AddrPort{v4src, v6src} {
		dst := v4dst
		if src.Addr().Is6() {
			dst = v6dst
		}
		prefix := []byte("x")
		b := AppendTLV(AppendV2(prefix, src, dst, false), len(prefix), TypeAuthority, []byte("api.example.com"))
		b = append(b, "payload"...)
		r := bufio.NewReader(bytes.NewReader(b[len(prefix):]))
		h, err := proxyproto.Read(r)
		if err != nil {
			t.Fatalf("go-proxyproto: %v", err)
		}
		tlvs, err := h.TLVs()
		if err != nil || len(tlvs) != 1 || tlvs[0].Type != proxyproto.PP2_TYPE_AUTHORITY || string(tlvs[0].Value) != "api.example.com" {
			t.Fatalf("TLVs %+v, %v", tlvs, err)
		}
		if rest, _ := r.Peek(7); string(rest) != "payload" {
			t.Fatalf("after the header: %q", rest)
		}
		n, err := Length(b[len(prefix):])
		if err != nil {
			t.Fatal(err)
		}
		got, err := Parse(b[len(prefix) : len(prefix)+n])
		if err != nil || got.Source != src || got.Destination != dst {
			t.Fatalf("Parse: %+v, %v", got, err)
		}
	}
	// Too long for MaxV2Length: left out.
	b := AppendV2(nil, v4src, v4dst, false)
	if got := AppendTLV(b, 0, TypeAuthority, []byte(strings.Repeat("a", MaxV2Length))); !bytes.Equal(got, b) {
		t.Fatal("an oversized TLV was appended")
	}
}
