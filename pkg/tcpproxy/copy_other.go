//go:build !linux

package tcpproxy

import (
	"errors"
	"io"
	"net"
	"os"
)

// The portable path: a pooled buffer per direction, held while waiting
// (without raw readiness it cannot be given back in between), one write per
// read, counted once the write returns. Linux (copy_linux.go) has the
// zero-copy path, per-chunk counting and the socket-queue checks, and the
// detach's nudge (a write blocks here without telling): a detach here can
// wait on an echoing peer until its context ends, and then moves nothing.

type platformCopier struct{}

func (d *direction) initPlatform() error { return nil }

func (d *direction) run() error {
	b := bufPool.Get().(*[]byte)
	defer bufPool.Put(b)
	for {
		if d.c.detaching.Load() && d.park() { // detach.go
			return errMoved
		}
		n, err := d.src.Read(*b)
		if n > 0 {
			d.busy.Add(1)
			_, werr := d.dst.Write((*b)[:n])
			d.busy.Add(1)
			if werr != nil {
				return writeError{werr}
			}
			d.account(n)
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				d.woken()
				continue
			}
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

// queued cannot look into the sockets here: only bytes held by a direction
// count as unsent.
func (c *conn) queued() bool { return false }

// kernelProgress is not known here.
func (c *conn) kernelProgress() (uint64, bool) { return 0, false }

// dupSocket returns a duplicate of c's descriptor, as a file the caller
// owns.
func dupSocket(c *net.TCPConn) (*os.File, error) { return c.File() }
