package tcpproxy

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestAddrPortOf: a raw sockaddr (as the loop's accept4 and getsockname
// fill it) reads as Go's net package gives the same address: IPv4, IPv6,
// an IPv4-mapped IPv6 peer kept mapped, an IPv6 scope as its interface's
// name, and the port in host order.
func TestAddrPortOf(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Skip("no lo interface")
	}
	in4 := func(ip [4]byte, port int) *unix.RawSockaddrAny {
		var sa unix.RawSockaddrAny
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
		p.Family = unix.AF_INET
		p.Addr = ip
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&p.Port))[:], uint16(port)) // network order
		return &sa
	}
	in6 := func(ip [16]byte, port int, scope uint32) *unix.RawSockaddrAny {
		var sa unix.RawSockaddrAny
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(&sa))
		p.Family = unix.AF_INET6
		p.Addr = ip
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&p.Port))[:], uint16(port))
		p.Scope_id = scope
		return &sa
	}
	var unix_ unix.RawSockaddrAny
	unix_.Addr.Family = unix.AF_UNIX
	for _, tc := range []struct {
		sa   *unix.RawSockaddrAny
		want string
	}{
		{in4([4]byte{192, 0, 2, 7}, 443), "192.0.2.7:443"},
		{in4([4]byte{127, 0, 0, 1}, 0xfe01), "127.0.0.1:65025"},
		{in6(netip.MustParseAddr("2001:db8::1").As16(), 8443, 0), "[2001:db8::1]:8443"},
		{in6(netip.MustParseAddr("::ffff:192.0.2.9").As16(), 80, 0), "[::ffff:192.0.2.9]:80"},
		{in6(netip.MustParseAddr("fe80::1").As16(), 22, uint32(lo.Index)), "[fe80::1%" + lo.Name + "]:22"},
		{&unix_, "invalid AddrPort"},
	} {
		if got := addrPortOf(tc.sa).String(); got != tc.want {
			t.Errorf("addrPortOf = %s, want %s", got, tc.want)
		}
	}
}
