//go:build unix

package main

import (
	"fmt"
	"os"
	"syscall"
)

const openNonblock = syscall.O_NONBLOCK

// untrusted says why fi, the file at path, may have been written by
// another user, or "" when only the invoking user or root can write it.
func untrusted(fi os.FileInfo, path string) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "its owner cannot be read"
	}
	if uid := os.Getuid(); st.Uid != 0 && int(st.Uid) != uid {
		return fmt.Sprintf("owned by uid %d, not by you (uid %d) or root: another user may have written it", st.Uid, uid)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Sprintf("writable by group or others (mode %04o): chmod go-w %s", perm, path)
	}
	return ""
}
