package rawsys

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSocketOptions: a socket made with Socket takes and reports int
// options, and Close closes it (a second Close says EBADF).
func TestSocketOptions(t *testing.T) {
	fd, errno := Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if errno != 0 {
		t.Fatalf("socket: %v", errno)
	}
	for _, v := range []int{1, 0} {
		if errno := SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, v); errno != 0 {
			t.Fatalf("setsockopt TCP_NODELAY %d: %v", v, errno)
		}
		got, errno := GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
		if errno != 0 || got != v {
			t.Fatalf("TCP_NODELAY reads %d (%v), want %d", got, errno, v)
		}
	}
	if errno := SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 77); errno != 0 {
		t.Fatal(errno)
	}
	if got, _ := GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE); got != 77 {
		t.Fatalf("TCP_KEEPIDLE reads %d, want 77", got)
	}
	if got, _ := GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); got != unix.SOCK_STREAM {
		t.Fatalf("SO_TYPE reads %d, want SOCK_STREAM", got)
	}
	if errno := Close(fd); errno != 0 {
		t.Fatal(errno)
	}
	if errno := Close(fd); errno != unix.EBADF {
		t.Fatalf("second close: %v, want EBADF", errno)
	}
	if Errno(0) != nil || !errors.Is(Errno(unix.EBADF), syscall.EBADF) {
		t.Fatal("Errno: 0 must be nil, EBADF EBADF")
	}
}

// TestEpollCtl: a descriptor added with EpollCtl is reported ready, is
// refused a second time (EEXIST), and is gone after EPOLL_CTL_DEL with a
// nil event.
func TestEpollCtl(t *testing.T) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(epfd)
	evfd, err := unix.Eventfd(1, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(evfd)
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: 42, Pad: 7}
	if errno := EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); errno != 0 {
		t.Fatal(errno)
	}
	if errno := EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); errno != unix.EEXIST {
		t.Fatalf("second add: %v, want EEXIST", errno)
	}
	events := make([]unix.EpollEvent, 4)
	n, errno := EpollPoll(epfd, events)
	if errno != 0 || n != 1 || events[0].Fd != 42 || events[0].Pad != 7 {
		t.Fatalf("poll: %d events (%v), first %+v; want the one added", n, errno, events[0])
	}
	if errno := EpollCtl(epfd, unix.EPOLL_CTL_DEL, evfd, nil); errno != 0 {
		t.Fatal(errno)
	}
	if n, _ := EpollPoll(epfd, events); n != 0 {
		t.Fatalf("%d events after the delete, want 0", n)
	}
}

// TestSetLingerReset: a connection closed after SetLingerReset is reset
// (the peer reads ECONNRESET), one closed without it ends with a FIN.
func TestSetLingerReset(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	for _, reset := range []bool{false, true} {
		fd, errno := Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0) // blocking: connect completes
		if errno != 0 {
			t.Fatal(errno)
		}
		if errno := Connect(fd, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())); errno != 0 {
			Close(fd)
			t.Fatal(errno)
		}
		peer, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		if reset {
			if errno := SetLingerReset(fd); errno != 0 {
				t.Fatal(errno)
			}
		}
		Close(fd)
		peer.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = peer.Read(make([]byte, 1))
		peer.Close()
		switch {
		case reset && !errors.Is(err, syscall.ECONNRESET):
			t.Fatalf("after SetLingerReset the peer read %v, want ECONNRESET", err)
		case !reset && err != io.EOF:
			t.Fatalf("after a plain close the peer read %v, want EOF", err)
		}
	}
}

// TestPollNow: ppoll with a zero timeout says which descriptors are ready
// now, without waiting and without taking what is ready.
func TestPollNow(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	fds := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}, {Fd: int32(p[1]), Events: unix.POLLIN}}
	if n, errno := PollNow(fds); n != 0 || errno != 0 || fds[0].Revents != 0 {
		t.Fatalf("empty pipe: %d ready (%v), revents %#x", n, errno, fds[0].Revents)
	}
	unix.Write(p[1], []byte("x"))
	for range 2 { // twice: the first look took nothing
		fds[0].Revents, fds[1].Revents = 0, 0
		if n, errno := PollNow(fds); n != 1 || errno != 0 || fds[0].Revents&unix.POLLIN == 0 || fds[1].Revents != 0 {
			t.Fatalf("a byte in the pipe: %d ready (%v), revents %#x %#x", n, errno, fds[0].Revents, fds[1].Revents)
		}
	}
}
