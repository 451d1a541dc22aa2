//go:build unix

package main

import "golang.org/x/sys/unix"

// mayConnect reports whether this user may connect to the unix socket at
// path: connecting needs write permission on the socket file.
func mayConnect(path string) bool { return unix.Access(path, unix.W_OK) == nil }
