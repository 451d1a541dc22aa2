//go:build unix

package discovery

import (
	"os"
	"syscall"
)

// fileID returns the device and inode of a file: a file replaced by a
// rename has another inode even when its size and time are the same.
func fileID(fi os.FileInfo) (dev, ino uint64) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev), uint64(st.Ino)
	}
	return 0, 0
}
