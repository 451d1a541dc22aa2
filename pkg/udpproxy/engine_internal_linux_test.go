package udpproxy

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// The descriptor is closed exactly once, by whoever is last: the replier
// when the reader is not writing, else the reader when its write ends.
func TestFDRef(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		var r fdRef
		if r.busy() || !r.close() {
			t.Fatal("close without users must close now")
		}
		if r.close() || r.acquire() {
			t.Fatal("after close: no second close, no new user")
		}
	})
	t.Run("closed during a write", func(t *testing.T) {
		var r fdRef
		if !r.acquire() || !r.busy() {
			t.Fatal("acquire on an open descriptor")
		}
		if r.close() {
			t.Fatal("close while in use must leave it to the user")
		}
		if !r.release() {
			t.Fatal("the last user after close must close")
		}
	})
	t.Run("write without close", func(t *testing.T) {
		var r fdRef
		r.acquire()
		if r.release() || r.busy() {
			t.Fatal("release without close must not close")
		}
	})
}

// Client addresses survive the trip through a sockaddr of either family,
// as the kernel reports them and as replies are addressed.
func TestSockaddrRoundTrip(t *testing.T) {
	tests := []struct {
		family int
		in     string
		want   string
	}{
		{unix.AF_INET, "192.0.2.7:5353", "192.0.2.7:5353"},
		{unix.AF_INET6, "[2001:db8::1]:53", "[2001:db8::1]:53"},
		{unix.AF_INET6, "[::ffff:192.0.2.7]:65535", "[::ffff:192.0.2.7]:65535"},
		{unix.AF_INET, "[::ffff:192.0.2.7]:1", "192.0.2.7:1"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			var b [unix.SizeofSockaddrInet6]byte
			n := clientSockaddr(tc.family, netip.MustParseAddrPort(tc.in), &b)
			if want := map[int]uint32{unix.AF_INET: unix.SizeofSockaddrInet4, unix.AF_INET6: unix.SizeofSockaddrInet6}[tc.family]; n != want {
				t.Errorf("length %d, want %d", n, want)
			}
			if got := sockaddrAddrPort(b[:]); got.String() != tc.want {
				t.Errorf("decoded %s, want %s", got, tc.want)
			}
		})
	}
}

// The destination address of a datagram is read from either kind of
// packet-info message, and a reply's control message carries it back.
func TestPacketInfo(t *testing.T) {
	v4 := netip.MustParseAddr("127.0.0.2")
	oob := unix.PktInfo4(&unix.Inet4Pktinfo{Ifindex: 1, Spec_dst: [4]byte{127, 0, 0, 1}, Addr: v4.As4()})
	if got := parseDst(oob); got != v4 {
		t.Errorf("IP_PKTINFO: %v, want %v", got, v4)
	}
	v6 := netip.MustParseAddr("2001:db8::2")
	oob = unix.PktInfo6(&unix.Inet6Pktinfo{Addr: v6.As16(), Ifindex: 1})
	if got := parseDst(oob); got != v6 {
		t.Errorf("IPV6_PKTINFO: %v, want %v", got, v6)
	}
	if got := parseDst(nil); got.IsValid() {
		t.Errorf("no control message: %v", got)
	}
	if got := parseDst(replyOOB(unix.AF_INET6, v6)); got != v6 {
		t.Errorf("reply control message carries %v, want %v", got, v6)
	}
}
