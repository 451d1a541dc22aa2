package lbtest

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// SockQueues returns the bytes a TCP socket holds: received and not yet
// read (SIOCINQ), and written and not yet acknowledged by the peer
// (SIOCOUTQ). A test uses them to know that a transfer really stalled
// (the receiver's queue full, the sender's holding bytes) rather than
// slowed on a loaded machine. Both are -1 when they cannot be read.
func SockQueues(c syscall.Conn) (in, out int) {
	in, out = -1, -1
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil {
			in = n
		}
		if n, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			out = n
		}
	})
	return
}
