//go:build unix

package udpproxy

import "syscall"

// fdLimit returns the process's soft RLIMIT_NOFILE.
func fdLimit() (uint64, bool) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, false
	}
	return uint64(r.Cur), true
}
