//go:build !linux

package main

import (
	"errors"
	"os"
)

// spawn: the spawner starts itself through /proc/self/exe, which only
// Linux has.
func spawn(bin string, args []string, env []string, end *os.File) (*child, error) {
	return nil, errors.New("lbctl upgrade runs on Linux only")
}
