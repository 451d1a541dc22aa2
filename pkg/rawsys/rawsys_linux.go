package rawsys

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Read is read(2) on a non-blocking descriptor.
func Read(fd int, p []byte) (int, unix.Errno) {
	r, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(r), errno
}

// Write is write(2) on a non-blocking descriptor.
func Write(fd int, p []byte) (int, unix.Errno) {
	r, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(r), errno
}

// EpollPoll is epoll_pwait(2) with a timeout of 0: the events ready now,
// without waiting.
func EpollPoll(epfd int, events []unix.EpollEvent) (int, unix.Errno) {
	r, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(unsafe.SliceData(events))),
		uintptr(len(events)), 0, 0, 0)
	return int(r), errno
}

// PollNow is ppoll(2) with a timeout of 0: which of fds are ready now,
// without waiting (their Revents); it returns how many are.
func PollNow(fds []unix.PollFd) (int, unix.Errno) {
	var zero unix.Timespec
	r, _, errno := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(unsafe.SliceData(fds))), uintptr(len(fds)),
		uintptr(unsafe.Pointer(&zero)), 0, 0, 0)
	return int(r), errno
}

// EpollWait is epoll_pwait(2) that waits up to msec milliseconds (-1: until
// an event), as a system call the Go scheduler knows may block: the
// thread leaves its P while it waits.
func EpollWait(epfd int, events []unix.EpollEvent, msec int) (int, unix.Errno) {
	r, _, errno := unix.Syscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(unsafe.SliceData(events))),
		uintptr(len(events)), uintptr(msec), 0, 0)
	return int(r), errno
}

// Shutdown is shutdown(2).
func Shutdown(fd, how int) unix.Errno {
	_, _, errno := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	return errno
}

// Accept4 is accept4(2) on a non-blocking listening socket, with the
// peer's address as a raw sockaddr (AddrOf reads it). Unlike
// unix.Accept4, it allocates nothing and makes no other system call
// (x/sys/unix asks every accepted socket's SO_PROTOCOL, to tell L2TP
// apart, with one more getsockopt per connection).
func Accept4(lfd int, sa *unix.RawSockaddrAny, flags int) (int, unix.Errno) {
	n := uint32(unix.SizeofSockaddrAny)
	r, _, errno := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(sa)),
		uintptr(unsafe.Pointer(&n)), uintptr(flags), 0, 0)
	return int(r), errno
}

// Getsockname is getsockname(2) into a raw sockaddr, with no other system
// call (see Accept4).
func Getsockname(fd int, sa *unix.RawSockaddrAny) unix.Errno {
	n := uint32(unix.SizeofSockaddrAny)
	_, _, errno := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(sa)), uintptr(unsafe.Pointer(&n)))
	return errno
}

// AddrOf returns the IP address and port of an AF_INET or AF_INET6
// sockaddr, and the IPv6 scope (zone index, 0 for none); ok is false for
// another family.
func AddrOf(sa *unix.RawSockaddrAny) (ap netip.AddrPort, zone uint32, ok bool) {
	switch sa.Addr.Family {
	case unix.AF_INET:
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(p.Addr), port), 0, true
	case unix.AF_INET6:
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(p.Addr), port), p.Scope_id, true
	}
	return netip.AddrPort{}, 0, false
}

// Connect is connect(2) of a socket (TCP or UDP) to ap, an IPv4 or IPv6
// address (without a zone), with its sockaddr built on the stack: unlike
// unix.Connect, nothing is allocated.
func Connect(fd int, ap netip.AddrPort) unix.Errno {
	var errno unix.Errno
	if a := ap.Addr(); a.Is4() {
		sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], ap.Port())
		_, _, errno = unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	} else {
		sa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], ap.Port())
		_, _, errno = unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	}
	return errno
}

// The calls that open, set up and close a loop's sockets. They never wait
// either (a socket is closed with no linger, or with a zero one that
// resets), and made with Syscall they woke sysmon from its deep sleep at
// every connection that came after a pause: each such wake-up starts
// sysmon's 20 µs polling again (docs/benchmarks.md, Issue 14, 14.).

// Socket is socket(2).
func Socket(domain, typ, proto int) (int, unix.Errno) {
	r, _, errno := unix.RawSyscall(unix.SYS_SOCKET, uintptr(domain), uintptr(typ), uintptr(proto))
	return int(r), errno
}

// Close is close(2) of a descriptor whose close cannot wait: not a socket
// with a non-zero SO_LINGER.
func Close(fd int) unix.Errno {
	_, _, errno := unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
	return errno
}

// EpollCtl is epoll_ctl(2); ev may be nil for EPOLL_CTL_DEL.
func EpollCtl(epfd, op, fd int, ev *unix.EpollEvent) unix.Errno {
	_, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	return errno
}

// SetsockoptInt is setsockopt(2) of an int option.
func SetsockoptInt(fd, level, opt, v int) unix.Errno {
	iv := int32(v)
	_, _, errno := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&iv)), unsafe.Sizeof(iv), 0)
	return errno
}

// GetsockoptInt is getsockopt(2) of an int option.
func GetsockoptInt(fd, level, opt int) (int, unix.Errno) {
	var iv int32
	n := uint32(unsafe.Sizeof(iv))
	_, _, errno := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&iv)), uintptr(unsafe.Pointer(&n)), 0)
	return int(iv), errno
}

// SetLingerReset sets SO_LINGER on with a zero timeout: the next close
// resets the connection (RST) at once instead of closing it with a FIN.
func SetLingerReset(fd int) unix.Errno {
	l := unix.Linger{Onoff: 1, Linger: 0}
	_, _, errno := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_LINGER,
		uintptr(unsafe.Pointer(&l)), unsafe.Sizeof(l), 0)
	return errno
}

// Errno is errno as an error: nil for 0 (a unix.Errno of 0 in an error
// interface is not nil).
func Errno(errno unix.Errno) error {
	if errno == 0 {
		return nil
	}
	return errno
}
