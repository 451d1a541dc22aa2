// Package localerr tells an error that is this host's fault from one that is
// the peer's.
//
// A connect, a health check or a UDP socket can fail because lbctl itself is
// out of something: file descriptors (EMFILE, ENFILE), kernel memory or
// buffers (ENOMEM, ENOBUFS), local ports (EADDRNOTAVAIL, EADDRINUSE, EAGAIN
// from connect) or epoll watches (ENOSPC). Such a failure says nothing about
// the backend, so it must never be counted against it: no connect error, no
// passive ejection, no failed health check. The proxies and the health
// checker share this one list so that they can never disagree.
//
//	if err != nil && !localerr.Is(err) {
//		backend.AddFailure()
//	}
//
// It only classifies; what to do about a local shortage (slow the accept
// loop, refuse new sessions) is the caller's business.
package localerr

import (
	"errors"
	"syscall"
)

// errnos are the errors that mean this process or host ran out of a
// resource.
var errnos = [...]syscall.Errno{
	syscall.EMFILE,        // process descriptor limit
	syscall.ENFILE,        // system descriptor limit
	syscall.ENOBUFS,       // kernel buffers
	syscall.ENOMEM,        // kernel memory
	syscall.EADDRNOTAVAIL, // no free local port for this destination
	syscall.EADDRINUSE,    // likewise, when a local port is bound before connect
	syscall.EAGAIN,        // connect(2): no free local port (some socket types)
	syscall.ENOSPC,        // epoll: the user's watch limit (fs.epoll.max_user_watches)
}

// Is reports whether err, or any error it wraps, says that this host is out
// of descriptors, memory, buffers, local ports or epoll watches.
func Is(err error) bool {
	if err == nil {
		return false
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	for _, e := range errnos {
		if errno == e {
			return true
		}
	}
	return false
}
