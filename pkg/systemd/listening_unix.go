//go:build unix

package systemd

import (
	"errors"
	"os"
	"syscall"
)

// isListening reports whether f is a socket in the listening state
// (SO_ACCEPTCONN): what a .socket unit's ListenStream= passes, unlike the
// connected socket Accept=yes passes.
func isListening(f *os.File) (bool, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return false, err
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		v, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN)
	}); err != nil {
		return false, err
	}
	if errors.Is(serr, syscall.ENOTSOCK) {
		return false, errors.New("not a socket")
	}
	if serr != nil {
		// Not every socket type answers SO_ACCEPTCONN (datagram sockets
		// on some systems): treat it as not listening.
		return false, nil
	}
	return v != 0, nil
}
