package udpproxy

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// oobSize holds one IPv6 packet-info control message (the larger one).
var oobSize = unix.CmsgSpace(unix.SizeofInet6Pktinfo)

// enablePktinfo asks the kernel for the destination address of each
// datagram on a wildcard-bound socket, and returns the socket's family.
func enablePktinfo(c *net.UDPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var fam int
	var serr error
	err = rc.Control(func(fd uintptr) {
		fam, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		if serr != nil {
			return
		}
		switch fam {
		case unix.AF_INET:
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		case unix.AF_INET6:
			// IPv4 clients of a dual-stack socket get IPv4-mapped
			// addresses here, and Linux takes them back in IPV6_PKTINFO.
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		default:
			serr = fmt.Errorf("address family %d", fam)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, fmt.Errorf("enable packet info: %w", err)
	}
	return fam, nil
}

// parseDst returns the destination address in a packet-info control
// message, or the zero Addr. It does not allocate.
func parseDst(oob []byte) netip.Addr {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return netip.Addr{}
		}
		data := oob[unix.CmsgLen(0):l]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
			return netip.AddrFrom4([4]byte(data[8:12]))
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			// struct in6_pktinfo { in6_addr addr; int ifindex; }
			a := netip.AddrFrom16([16]byte(data[0:16]))
			if a.IsLinkLocalUnicast() {
				a = a.WithZone(fmt.Sprint(binary.NativeEndian.Uint32(data[16:20])))
			}
			return a
		}
		oob = oob[min(len(oob), unix.CmsgSpace(l-unix.CmsgLen(0))):]
	}
	return netip.Addr{}
}

// replyOOB builds the control message that makes a reply leave from dst.
func replyOOB(family int, dst netip.Addr) []byte {
	if family == unix.AF_INET {
		d := dst.Unmap()
		if !d.Is4() {
			return nil
		}
		return unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: d.As4()})
	}
	info := &unix.Inet6Pktinfo{Addr: dst.As16()}
	if dst.Zone() != "" {
		if ifi, err := net.InterfaceByName(dst.Zone()); err == nil {
			info.Ifindex = uint32(ifi.Index)
		} else if n, err := fmt.Sscan(dst.Zone(), &info.Ifindex); n != 1 || err != nil {
			info.Ifindex = 0
		}
	}
	return unix.PktInfo6(info)
}
