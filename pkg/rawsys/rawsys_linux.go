package rawsys

import (
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
