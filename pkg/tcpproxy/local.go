package tcpproxy

import (
	"errors"
	"syscall"
)

// localResourceErrs are dial errors that say this process or host is out of
// something (descriptors, kernel buffers, local ports), not that the
// backend failed. A connect that fails with one of them is not counted as a
// connect error and never marks the backend down: when lbctl runs out of
// descriptors, its backends must still be up once descriptors free up.
var localResourceErrs = []error{
	syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL,
}

func isLocalResourceErr(err error) bool {
	for _, e := range localResourceErrs {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
