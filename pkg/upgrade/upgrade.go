// Package upgrade is the channel between the old and the new process of
// `lbctl upgrade`: a unix stream socketpair over which the old process
// passes its listening sockets, its run-time state and then its
// connections and sessions, and the new process answers "ready".
//
//	// old process
//	c, child, err := upgrade.Pair()
//	cmd.ExtraFiles = []*os.File{child}        // fd 3 in the new process
//	cmd.Env = append(env, upgrade.EnvFD+"=3")
//	cmd.Start(); child.Close()
//	c.Send(upgrade.Message{Kind: "listeners", Meta: keys, Files: socks})
//	m, err := c.Recv(30 * time.Second)          // "ready", or an error naming what failed
//
//	// new process
//	c, err := upgrade.FromEnv()                 // nil, nil when not started by an upgrade
//	m, err := c.Recv(30 * time.Second)          // "listeners", with their descriptors
//
// A message is a kind (a short word), an opaque meta (the sender and the
// receiver agree on its encoding) and up to MaxFiles descriptors. On the
// wire it is a fixed header sent with the descriptors in one sendmsg
// (SCM_RIGHTS), then the kind and the meta as plain bytes. The receiver
// reads the header with recvmsg into a buffer of exactly the header's size
// and the rest with reads of exactly the announced lengths, so a read never
// runs into the next message's bytes, whose descriptors the kernel would
// then discard.
//
// Every receive has a deadline, and a peer that closes or dies mid-message
// is an error naming the part that was cut (header, kind, meta), never a
// hang and never a message that looks whole. Descriptors received with a
// message the receiver then rejects are closed.
//
// What it does not do: decide what is sent (cmd/lbctl orchestrates the
// sequence, pkg/server encodes listeners, state and connections), or start
// the new process.
//
// Why not cloudflare/tableflip: it passes listeners (and named files) to the
// new process by environment and inherited descriptors and waits for its
// Ready, which covers the first half of the handover only. The established
// connections and UDP sessions move after the new process is ready, in
// batches, over a channel in both directions; this package is that channel,
// and carrying the listeners over it too keeps one mechanism and one
// failure model instead of two.
package upgrade

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// MaxFiles is the most descriptors one message carries: SCM_RIGHTS takes at
// most 253 (the kernel's SCM_MAX_FD); one is kept spare.
const MaxFiles = 252

// MaxMeta bounds a message's meta, so a corrupt header cannot make the
// receiver allocate without limit.
const MaxMeta = 64 << 20

// EnvFD names the environment variable that gives the new process the
// descriptor number of its end of the channel.
const EnvFD = "LBCTL_UPGRADE_FD"

// magic starts every header: a stream out of step is caught at once.
const magic uint32 = 0x4c42_5550 // "LBUP"

// headerLen is the fixed header: magic, kind length, file count, meta
// length (big endian).
const headerLen = 4 + 2 + 2 + 4

// maxKind bounds a message's kind.
const maxKind = 64

// Message is one unit of the handover.
type Message struct {
	Kind  string     // what it is: "listeners", "ready", "tcp", ...
	Meta  []byte     // its description, encoded by the sender
	Files []*os.File // at most MaxFiles descriptors; the receiver owns them
}

// CloseFiles closes the message's descriptors.
func (m Message) CloseFiles() {
	for _, f := range m.Files {
		f.Close()
	}
}

// Conn is one end of the channel. Send and Recv may be called from
// different goroutines; two concurrent Sends (or Recvs) are serialised.
type Conn struct {
	c      *net.UnixConn
	sendMu sync.Mutex
	recvMu sync.Mutex
	hdr    [headerLen]byte
	oob    []byte
}

// Pair makes a connected pair: the caller's end, and the other end as a
// file to pass to the new process (exec.Cmd.ExtraFiles). The caller closes
// child once the new process has started.
func Pair() (c *Conn, child *os.File, err error) {
	fds, err := socketpair()
	if err != nil {
		return nil, nil, fmt.Errorf("upgrade: socketpair: %w", err)
	}
	mine := os.NewFile(uintptr(fds[0]), "upgrade-old")
	child = os.NewFile(uintptr(fds[1]), "upgrade-new")
	c, err = FromFile(mine)
	mine.Close()
	if err != nil {
		child.Close()
		return nil, nil, err
	}
	return c, child, nil
}

// FromFile makes a Conn from a stream unix socket; f may be closed after.
func FromFile(f *os.File) (*Conn, error) {
	fc, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("upgrade: channel descriptor: %w", err)
	}
	uc, ok := fc.(*net.UnixConn)
	if !ok {
		fc.Close()
		return nil, fmt.Errorf("upgrade: channel descriptor is a %T, not a unix socket", fc)
	}
	return &Conn{c: uc, oob: make([]byte, unix.CmsgSpace(4*(MaxFiles+1)))}, nil
}

// FromEnv returns the channel of a process started by an upgrade ($EnvFD
// set), and unsets $EnvFD so that a process this one starts does not
// inherit it. It returns nil, nil when the variable is not set.
func FromEnv() (*Conn, error) {
	v, ok := os.LookupEnv(EnvFD)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(EnvFD)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("upgrade: %s=%q is not a descriptor number", EnvFD, v)
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "upgrade")
	defer f.Close()
	return FromFile(f)
}

// Close closes the channel; a Recv waiting on it returns an error.
func (c *Conn) Close() error { return c.c.Close() }

// Send writes m with its descriptors. The descriptors stay open: the
// caller closes its copies when it no longer needs them. A write blocked
// longer than a minute (a peer that stopped reading) is an error.
func (c *Conn) Send(m Message) error {
	if len(m.Files) > MaxFiles {
		return fmt.Errorf("upgrade: send %s: %d descriptors, at most %d a message", m.Kind, len(m.Files), MaxFiles)
	}
	if len(m.Kind) == 0 || len(m.Kind) > maxKind {
		return fmt.Errorf("upgrade: send: kind %q must have 1 to %d bytes", m.Kind, maxKind)
	}
	if len(m.Meta) > MaxMeta {
		return fmt.Errorf("upgrade: send %s: meta of %d bytes, at most %d", m.Kind, len(m.Meta), MaxMeta)
	}
	var hdr [headerLen]byte
	binary.BigEndian.PutUint32(hdr[0:], magic)
	binary.BigEndian.PutUint16(hdr[4:], uint16(len(m.Kind)))
	binary.BigEndian.PutUint16(hdr[6:], uint16(len(m.Files)))
	binary.BigEndian.PutUint32(hdr[8:], uint32(len(m.Meta)))
	var oob []byte
	if len(m.Files) > 0 {
		fds, err := rawFDs(m.Files)
		if err != nil {
			return fmt.Errorf("upgrade: send %s: %w", m.Kind, err)
		}
		oob = unix.UnixRights(fds...)
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.c.SetWriteDeadline(time.Now().Add(time.Minute))
	n, oobn, err := c.c.WriteMsgUnix(hdr[:], oob, nil)
	if err == nil && (n != len(hdr) || oobn != len(oob)) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("upgrade: send %s: header and %d descriptors: %w", m.Kind, len(m.Files), err)
	}
	body := make([]byte, 0, len(m.Kind)+len(m.Meta))
	body = append(append(body, m.Kind...), m.Meta...)
	if _, err := c.c.Write(body); err != nil {
		return fmt.Errorf("upgrade: send %s: meta: %w", m.Kind, err)
	}
	runtime.KeepAlive(m.Files) // their descriptors were in flight until here
	return nil
}

// rawFDs returns the descriptor numbers of files. It does not use
// os.File.Fd, which would put the descriptor in blocking mode: the flag
// belongs to the open file description, which a duplicated socket shares
// with the listener still serving in this process (and the peer's copy).
func rawFDs(files []*os.File) ([]int, error) {
	fds := make([]int, len(files))
	for i, f := range files {
		rc, err := f.SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("descriptor %d (%s): %w", i, f.Name(), err)
		}
		if err := rc.Control(func(fd uintptr) { fds[i] = int(fd) }); err != nil {
			return nil, fmt.Errorf("descriptor %d (%s): %w", i, f.Name(), err)
		}
	}
	return fds, nil
}

// Recv reads the next message, waiting at most timeout (0: no limit). An
// error names what failed: the deadline, a peer that closed before a
// message (io.EOF wrapped) or in the middle of one (io.ErrUnexpectedEOF
// wrapped), or a malformed header. The caller owns the returned files.
func (c *Conn) Recv(timeout time.Duration) (Message, error) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	if timeout > 0 {
		c.c.SetReadDeadline(time.Now().Add(timeout))
	} else {
		c.c.SetReadDeadline(time.Time{})
	}
	var files []*os.File
	fail := func(what string, err error) (Message, error) {
		for _, f := range files {
			f.Close()
		}
		return Message{}, fmt.Errorf("upgrade: receive: %s: %w", what, err)
	}
	got := 0
	for got < headerLen {
		n, oobn, flags, _, err := c.c.ReadMsgUnix(c.hdr[got:], c.oob)
		if oobn > 0 {
			fs, perr := parseRights(c.oob[:oobn])
			files = append(files, fs...)
			if perr != nil {
				return fail("descriptors", perr)
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return fail("descriptors", errors.New("truncated: more descriptors than a message may carry"))
		}
		got += n
		if err != nil {
			if errors.Is(err, io.EOF) && got > 0 {
				err = io.ErrUnexpectedEOF
			}
			return fail("header", err)
		}
		if n == 0 {
			if got > 0 {
				return fail("header", io.ErrUnexpectedEOF)
			}
			return fail("header", io.EOF) // the peer closed between messages
		}
	}
	if v := binary.BigEndian.Uint32(c.hdr[0:]); v != magic {
		return fail("header", fmt.Errorf("bad magic %#x: the stream is out of step", v))
	}
	kindLen := int(binary.BigEndian.Uint16(c.hdr[4:]))
	nfiles := int(binary.BigEndian.Uint16(c.hdr[6:]))
	metaLen := int(binary.BigEndian.Uint32(c.hdr[8:]))
	if kindLen == 0 || kindLen > maxKind || nfiles > MaxFiles || metaLen > MaxMeta {
		return fail("header", fmt.Errorf("out of bounds: kind %d bytes, %d descriptors, meta %d bytes", kindLen, nfiles, metaLen))
	}
	if nfiles != len(files) {
		return fail("descriptors", fmt.Errorf("header announces %d, %d arrived", nfiles, len(files)))
	}
	body := make([]byte, kindLen+metaLen)
	if _, err := io.ReadFull(c.c, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fail("kind and meta", err)
	}
	m := Message{Kind: string(body[:kindLen]), Files: files}
	if metaLen > 0 {
		m.Meta = body[kindLen:]
	}
	return m, nil
}

// parseRights turns the SCM_RIGHTS messages of oob into files. On error the
// descriptors found so far are still returned, for the caller to close.
func parseRights(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var files []*os.File
	var ferr error
	for _, msg := range msgs {
		fds, err := unix.ParseUnixRights(&msg)
		if err != nil {
			ferr = err
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "upgrade-received"))
		}
	}
	return files, ferr
}
