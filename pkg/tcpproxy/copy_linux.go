package tcpproxy

import (
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// How one direction moves bytes on Linux.
//
// A plain io.Copy(dst, src) between two *net.TCPConn splices, but it holds a
// pipe (two descriptors) from the first byte to EOF, also while the
// connection sits idle, and it reports nothing until EOF; even bounded
// (dst.ReadFrom of 1 MiB at a time) one call to a slow reader outlasts any
// idle timeout, and counters and the idle clock stand still meanwhile.
// Instead, each direction runs its own loop on the raw descriptors:
//
//  1. Wait until src is readable, holding neither buffer nor pipe: the
//     runtime poller wakes the goroutine, and tryRead tries one read(2) into
//     a buffer taken from a pool only for the duration of that attempt.
//  2. The bytes read are written to dst (tryWrite): for a short read (the
//     common request/response case) one read and one write, no pipe round
//     trip for a 64-byte message.
//  3. A read that fills the whole buffer means a bulk transfer: the
//     direction takes a pipe from a small pool (pipe_linux.go) and splices
//     what src has queued, up to 1 MiB at a time, into the pipe (fill: the
//     bytes are there, so it never waits), then from the pipe into dst
//     (tryDrain), until src has nothing queued; then the pipe goes back to
//     the pool, so an idle connection holds no pipe.
//
// Writing (2 and 3) runs inside dst's RawConn.Write: a write that would
// block returns to the runtime poller, which calls again once dst is
// writable, or after progressTick at the latest (a write deadline), since
// the kernel wakes writers of a slow reader's socket only after a third of
// its send buffer has drained. Every chunk the destination socket accepts is
// counted at once, so byte counters and the idle clock advance while data
// flows, at least every progressTick.

// spliceMax bounds one splice call. 1 MiB is one full pipe, as in Go's own
// splice loop: measured with lbbench bulk, it costs no CPU per GB (0.230 s,
// uncapped 0.227 s) where 256 KiB cost 15% more.
const spliceMax = 1 << 20

type platformCopier struct {
	srcRaw, dstRaw syscall.RawConn
	// The RawConn callbacks, bound once so that no closure is allocated
	// per read.
	readFn, writeFn, drainFn func(fd uintptr) bool
	fillFn                   func(fd uintptr)
	buf                      *[]byte // bytes read, while they are written
	n, off                   int     // bytes in buf, of which written
	pipe                     *pipe   // during a burst
	piped                    int     // bytes in pipe
	err                      error   // a failed call inside a callback
	// burstFirst: the event loop handed the direction over in the middle
	// of a bulk transfer (engine_linux.go): run writes what buf holds, if
	// anything, then bursts at once.
	burstFirst bool
}

func (d *direction) initPlatform() error {
	var err error
	if d.srcRaw, err = d.src.SyscallConn(); err != nil {
		return err
	}
	if d.dstRaw, err = d.dst.SyscallConn(); err != nil {
		return err
	}
	return nil
}

// run moves bytes from src to dst until src reaches EOF (nil) or either side
// fails (the error; a writeError when dst failed), or the connection is
// detached (errMoved). A detach is looked for before each read, with
// nothing held, and between two bursts.
func (d *direction) run() error {
	// Bound here, not in initPlatform: a connection that never leaves
	// the event loop never needs them (four allocations each way).
	d.readFn, d.writeFn, d.drainFn, d.fillFn = d.tryRead, d.tryWrite, d.tryDrain, d.fill
	if d.buf != nil || d.burstFirst { // handed over by the event loop
		if err := d.resume(); err != nil {
			return err
		}
	}
	for {
		if d.c.detaching.Load() && d.park() { // detach.go
			return errMoved
		}
		if err := d.srcRaw.Read(d.readFn); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				d.woken()
				continue
			}
			return err
		}
		if d.err != nil {
			err := d.err
			d.err = nil
			return err
		}
		if d.n == 0 {
			return nil // EOF
		}
		full := d.n == len(*d.buf)
		d.off = 0
		err := d.rawWrite(d.writeFn)
		bufPool.Put(d.buf)
		d.buf = nil
		if err == nil && full {
			err = d.burst()
		}
		d.busy.Add(1) // nothing held any more
		if err != nil {
			return err
		}
	}
}

// resume finishes what the event loop handed over with the direction:
// bytes it read and could not all write (buf[off:n], busy odd), and a bulk
// transfer under way (burstFirst).
func (d *direction) resume() error {
	var err error
	if d.buf == nil {
		d.busy.Add(1) // a burst holds bytes
	} else {
		err = d.rawWrite(d.writeFn)
		bufPool.Put(d.buf)
		d.buf = nil
	}
	if err == nil && d.burstFirst {
		err = d.burst()
	}
	d.burstFirst = false
	d.busy.Add(1) // nothing held any more
	return err
}

// tryRead runs inside RawConn.Read each time the poller says src may be
// readable. It returns false to go back to waiting.
func (d *direction) tryRead(fd uintptr) bool {
	d.busy.Add(1) // about to hold what the read returns
	b := bufPool.Get().(*[]byte)
	for {
		n, err := unix.Read(int(fd), *b)
		switch err {
		case nil:
			d.buf, d.n = b, n
			if n == 0 {
				bufPool.Put(b)
				d.buf = nil
				d.busy.Add(1)
			}
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			bufPool.Put(b)
			d.busy.Add(1)
			return false
		default:
			bufPool.Put(b)
			d.buf, d.n, d.err = nil, 0, err
			d.busy.Add(1)
			return true
		}
	}
}

// rawWrite runs fn inside dst's RawConn.Write until fn reports that it is
// done, waking it at least every progressTick while dst is not writable.
func (d *direction) rawWrite(fn func(fd uintptr) bool) error {
	for {
		err := d.dstRaw.Write(fn)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return writeError{err} // closed: the connection ended elsewhere
		}
		// A progress tick: clear the expired deadline, try again.
		d.dst.SetWriteDeadline(time.Time{})
	}
	if d.err != nil {
		err := d.err
		d.err = nil
		return writeError{err}
	}
	return nil
}

// stalled is called by a writing callback when dst would block: the
// poller calls it again once dst is writable, or at the latest after
// progressTick.
func (d *direction) stalled() bool {
	if d.c.detaching.Load() {
		d.nudgeOther() // detach.go
	}
	d.dst.SetWriteDeadline(time.Now().Add(progressTick))
	return false
}

// tryWrite writes buf[off:n] to dst, counting each chunk accepted.
func (d *direction) tryWrite(fd uintptr) bool {
	for d.off < d.n {
		n, err := unix.Write(int(fd), (*d.buf)[d.off:d.n])
		switch err {
		case nil:
			d.off += n
			d.account(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return d.stalled()
		default:
			d.err = err
			return true
		}
	}
	return true
}

// burst moves the bytes queued in src to dst through a pipe, until src has
// none left. Out of descriptors for a pipe, it leaves them to the read
// loop.
func (d *direction) burst() error {
	p := pipes.get()
	if p == nil {
		return nil
	}
	d.pipe = p
	d.bursts++
	var err error
	for {
		if err = d.srcRaw.Control(d.fillFn); err != nil {
			break
		}
		if d.err != nil {
			err, d.err = d.err, nil
			break
		}
		if d.piped == 0 {
			break // nothing queued, or EOF (the next read sees it)
		}
		if err = d.rawWrite(d.drainFn); err != nil {
			break
		}
		if d.c.detaching.Load() {
			break // the pipe is empty: a clean point between two bursts
		}
	}
	d.pipe = nil
	if d.piped == 0 {
		pipes.put(p)
	} else {
		p.close() // bytes left behind by a failure
		d.piped = 0
	}
	return err
}

// fill splices what src has queued, up to spliceMax, into the empty pipe.
// It never waits: nothing queued leaves piped at 0.
func (d *direction) fill(fd uintptr) {
	for {
		n, err := unix.Splice(int(fd), nil, d.pipe.w, nil, spliceMax, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch err {
		case nil:
			d.piped = int(n)
			return
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			d.piped = 0
			return
		default:
			d.piped, d.err = 0, err
			return
		}
	}
}

// tryDrain splices the pipe's bytes into dst, counting each chunk accepted.
func (d *direction) tryDrain(fd uintptr) bool {
	for d.piped > 0 {
		n, err := unix.Splice(d.pipe.r, nil, int(fd), nil, d.piped, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch err {
		case nil:
			if n == 0 { // cannot happen: the pipe holds bytes
				d.err = errors.New("splice from pipe: no progress")
				return true
			}
			d.piped -= int(n)
			d.account(int(n))
		case unix.EINTR:
		case unix.EAGAIN:
			return d.stalled()
		default:
			d.err = err
			return true
		}
	}
	return true
}

// queued reports whether a socket holds bytes: received and not read by
// lbctl (SIOCINQ), or written by lbctl and not acknowledged by the peer
// (SIOCOUTQ).
func (c *conn) queued() bool {
	return sockQueue(c.in.srcRaw, unix.SIOCINQ) > 0 || // from the client
		sockQueue(c.out.srcRaw, unix.SIOCINQ) > 0 || // from the backend
		sockQueue(c.in.dstRaw, unix.SIOCOUTQ) > 0 || // to the backend
		sockQueue(c.out.dstRaw, unix.SIOCOUTQ) > 0 // to the client
}

func sockQueue(raw syscall.RawConn, req uint) int {
	if raw == nil {
		return 0
	}
	var n int
	raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), req) })
	return n
}

// kernelProgress sums the bytes both sockets have had acknowledged by
// their peers or received from them (TCP_INFO): a change means bytes moved
// on the wire, even when none went through lbctl. ok is false when the
// kernel does not say.
func (c *conn) kernelProgress() (n uint64, ok bool) {
	a, okA := tcpProgress(c.in.srcRaw)
	b, okB := tcpProgress(c.out.srcRaw)
	return a + b, okA && okB
}

func tcpProgress(raw syscall.RawConn) (n uint64, ok bool) {
	if raw == nil {
		return 0, false
	}
	raw.Control(func(fd uintptr) {
		if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO); err == nil {
			n, ok = ti.Bytes_acked+ti.Bytes_received, true
		}
	})
	return n, ok
}

// dupSocket returns a duplicate of c's descriptor (close-on-exec), as a
// file the caller owns. Unlike TCPConn.File it leaves the socket's mode
// alone.
func dupSocket(c *net.TCPConn) (*os.File, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var derr error
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(fd), "tcp"), nil
}
