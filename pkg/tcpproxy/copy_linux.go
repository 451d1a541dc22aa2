package tcpproxy

import (
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// How one direction moves bytes on Linux.
//
// A plain io.Copy(dst, src) between two *net.TCPConn splices, but it holds a
// pipe (two descriptors) from the first byte to EOF, also while the
// connection sits idle, and it reports nothing until EOF, so neither byte
// counters nor the idle clock could move during a long transfer. Instead,
// each direction loops:
//
//  1. Wait until src is readable, holding neither buffer nor pipe: the
//     runtime poller wakes the goroutine, and readFn tries one read(2) into a
//     buffer taken from a pool only for the duration of that attempt.
//  2. A short read (the common request/response case) is written straight to
//     dst: one read and one write, no pipe round trip for a 64-byte message.
//  3. A read that fills the whole buffer means a bulk transfer: the bytes
//     already queued in the socket (SIOCINQ) are then spliced to dst with
//     dst.ReadFrom(&io.LimitedReader{src, queued}), which is exactly what
//     io.Copy does, and takes Go's zero-copy splice path, but returns as
//     soon as the queued bytes have moved, so the pipe goes back to the
//     runtime's pool instead of being held by an idle connection.
//
// Every step reports its byte count, so metrics and the idle clock advance
// while data flows.

// spliceMin is the least number of queued bytes worth a splice; below it a
// read and a write are cheaper than two splices through a pipe.
const spliceMin = smallBufSize

// spliceMax bounds one splice call, so that byte counters and the idle
// clock advance during a long transfer to a slow reader (one splice of a
// full receive queue could otherwise take many seconds). 1 MiB is one
// full pipe in Go's splice loop: measured with lbbench bulk, it costs no
// CPU per GB (0.230 s, uncapped 0.227 s) where 256 KiB cost 15% more.
const spliceMax = 1 << 20

type platformCopier struct {
	srcRaw  syscall.RawConn
	readFn  func(fd uintptr) bool // bound once, so no closure is allocated per read
	inqFn   func(fd uintptr)
	lr      io.LimitedReader
	buf     *[]byte
	n       int
	queued  int
	readErr error
}

func (d *direction) initPlatform() error {
	raw, err := d.src.SyscallConn()
	if err != nil {
		return err
	}
	d.srcRaw = raw
	d.readFn = d.tryRead
	d.inqFn = d.readQueued
	d.lr.R = d.src
	return nil
}

// tryRead runs inside RawConn.Read each time the poller says src may be
// readable. It returns false to go back to waiting.
func (d *direction) tryRead(fd uintptr) bool {
	b := bufPool.Get().(*[]byte)
	for {
		n, err := unix.Read(int(fd), *b)
		switch err {
		case nil:
			d.buf, d.n, d.readErr = b, n, nil
			if n == len(*b) {
				d.queued, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
			} else {
				d.queued = 0
			}
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			bufPool.Put(b)
			return false
		default:
			bufPool.Put(b)
			d.buf, d.n, d.readErr = nil, 0, err
			return true
		}
	}
}

func (d *direction) readQueued(fd uintptr) {
	d.queued, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
}

// run moves bytes from src to dst until src reaches EOF (nil) or either side
// fails (the error).
func (d *direction) run() error {
	for {
		if err := d.srcRaw.Read(d.readFn); err != nil {
			return err
		}
		if d.readErr != nil {
			return d.readErr
		}
		if d.n == 0 {
			bufPool.Put(d.buf)
			d.buf = nil
			return nil // EOF
		}
		_, err := d.dst.Write((*d.buf)[:d.n])
		bufPool.Put(d.buf)
		d.buf = nil
		if err != nil {
			return err
		}
		d.account(d.n)
		for d.queued >= spliceMin {
			if err := d.splice(int64(min(d.queued, spliceMax))); err != nil {
				return err
			}
			if err := d.srcRaw.Control(d.inqFn); err != nil {
				return err
			}
		}
	}
}

// splice moves n bytes that are already queued in src to dst through the
// runtime's splice path. It never waits for src: the bytes are there.
func (d *direction) splice(n int64) error {
	d.lr.N = n
	written, err := d.dst.ReadFrom(&d.lr)
	if written > 0 {
		d.account(int(written))
	}
	return err
}

// Ensure the splice path stays typed: dst must be a *net.TCPConn so that
// ReadFrom is the one that splices.
var _ io.ReaderFrom = (*net.TCPConn)(nil)
