//go:build unix && !linux

package upgrade

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// socketpair makes a connected pair of stream unix sockets, close-on-exec.
// Without SOCK_CLOEXEC, a process started meanwhile may inherit them.
func socketpair() ([2]int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err == nil {
		unix.CloseOnExec(fds[0])
		unix.CloseOnExec(fds[1])
	}
	return fds, err
}
