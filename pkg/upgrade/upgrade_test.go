package upgrade

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair returns both ends of a channel, closed at the end of the test.
func pair(t *testing.T) (old, nw *Conn) {
	t.Helper()
	old, child, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	nw, err = FromFile(child)
	child.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { old.Close(); nw.Close() })
	return old, nw
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// pipes makes n pipes; each write end has written its index.
func pipes(t *testing.T, n int) (readers []*os.File) {
	t.Helper()
	for i := range n {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(w, "pipe %d", i)
		w.Close()
		readers = append(readers, r)
	}
	return readers
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// TestFilesArrive sends full batches of pipes and reads every pipe's data
// through the descriptor the other end received.
func TestFilesArrive(t *testing.T) {
	before := openFDs(t)
	old, nw := pair(t)
	const batches = 3
	sent := make([][]*os.File, batches)
	for b := range batches {
		sent[b] = pipes(t, MaxFiles)
		meta := []byte(strings.Repeat(fmt.Sprintf("batch %d;", b), 1000))
		if err := old.Send(Message{Kind: "tcp", Meta: meta, Files: sent[b]}); err != nil {
			t.Fatal(err)
		}
		closeAll(sent[b]) // the receiver's copies stay readable
	}
	if err := old.Send(Message{Kind: "done", Meta: []byte(`{"n":3}`)}); err != nil {
		t.Fatal(err)
	}
	for b := range batches {
		m, err := nw.Recv(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Kind != "tcp" || !bytes.HasPrefix(m.Meta, fmt.Appendf(nil, "batch %d;", b)) || len(m.Meta) != 1000*len(fmt.Sprintf("batch %d;", b)) {
			t.Fatalf("batch %d: kind %q, meta %d bytes %q...", b, m.Kind, len(m.Meta), m.Meta[:min(20, len(m.Meta))])
		}
		if len(m.Files) != MaxFiles {
			t.Fatalf("batch %d: %d files, want %d", b, len(m.Files), MaxFiles)
		}
		for i, f := range m.Files {
			data, err := io.ReadAll(f)
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("pipe %d", i); string(data) != want {
				t.Fatalf("batch %d file %d: read %q, want %q", b, i, data, want)
			}
		}
		m.CloseFiles()
	}
	m, err := nw.Recv(10 * time.Second)
	if err != nil || m.Kind != "done" || string(m.Meta) != `{"n":3}` || len(m.Files) != 0 {
		t.Fatalf("last message: %+v, %v", m, err)
	}
	old.Close()
	nw.Close()
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open before, %d after", before, after)
	}
}

// TestPeerClosesMidMessage: a header without its meta, then a close, is an
// error naming the cut, returned at once; the descriptors that came with
// the header are closed.
func TestPeerClosesMidMessage(t *testing.T) {
	old, nw := pair(t)
	before := openFDs(t)
	files := pipes(t, 3)
	fds, err := rawFDs(files)
	if err != nil {
		t.Fatal(err)
	}
	var hdr [headerLen]byte
	binary.BigEndian.PutUint32(hdr[0:], magic)
	binary.BigEndian.PutUint16(hdr[4:], 3)
	binary.BigEndian.PutUint16(hdr[6:], 3)
	binary.BigEndian.PutUint32(hdr[8:], 100)
	if _, _, err := old.c.WriteMsgUnix(hdr[:], unix.UnixRights(fds...), nil); err != nil {
		t.Fatal(err)
	}
	old.c.Write([]byte("tcp only part of the meta"))
	closeAll(files)
	old.Close()
	start := time.Now()
	_, err = nw.Recv(30 * time.Second)
	if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "meta") {
		t.Fatalf("err = %v, want an unexpected EOF in the meta", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the error took %s", d)
	}
	if after := openFDs(t); after != before-1 { // old's end is closed
		t.Errorf("%d descriptors open before, %d after (one less expected): received ones leaked", before, after)
	}
}

// TestPeerClosesMidHeader: half a header, then a close.
func TestPeerClosesMidHeader(t *testing.T) {
	old, nw := pair(t)
	old.c.Write([]byte{0x4c, 0x42})
	old.Close()
	_, err := nw.Recv(30 * time.Second)
	if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "header") {
		t.Fatalf("err = %v, want an unexpected EOF in the header", err)
	}
}

// TestPeerClosedBetweenMessages is a plain EOF.
func TestPeerClosedBetweenMessages(t *testing.T) {
	old, nw := pair(t)
	if err := old.Send(Message{Kind: "ready"}); err != nil {
		t.Fatal(err)
	}
	old.Close()
	if m, err := nw.Recv(5 * time.Second); err != nil || m.Kind != "ready" {
		t.Fatalf("%+v, %v", m, err)
	}
	if _, err := nw.Recv(5 * time.Second); !errors.Is(err, io.EOF) {
		t.Fatalf("err = %v, want EOF", err)
	}
}

// TestRecvTimeout: a silent peer is a deadline error after the timeout.
func TestRecvTimeout(t *testing.T) {
	_, nw := pair(t)
	start := time.Now()
	_, err := nw.Recv(200 * time.Millisecond)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("returned after %s", d)
	}
}

// TestBadMessages: the sender refuses what the receiver could not take, and
// the receiver refuses a stream out of step.
func TestBadMessages(t *testing.T) {
	old, nw := pair(t)
	files := pipes(t, MaxFiles+1)
	defer closeAll(files)
	if err := old.Send(Message{Kind: "tcp", Files: files}); err == nil {
		t.Error("253 descriptors sent")
	}
	if err := old.Send(Message{Kind: ""}); err == nil {
		t.Error("empty kind sent")
	}
	old.c.Write(bytes.Repeat([]byte{0xff}, headerLen))
	if _, err := nw.Recv(5 * time.Second); err == nil || !strings.Contains(err.Error(), "magic") {
		t.Fatalf("err = %v, want bad magic", err)
	}
}

// TestFromEnv reads the descriptor number and unsets the variable.
func TestFromEnv(t *testing.T) {
	t.Setenv(EnvFD, "")
	os.Unsetenv(EnvFD)
	if c, err := FromEnv(); c != nil || err != nil {
		t.Fatalf("without %s: %v, %v", EnvFD, c, err)
	}
	t.Setenv(EnvFD, "x")
	if _, err := FromEnv(); err == nil {
		t.Fatal("bad value accepted")
	}
	if _, ok := os.LookupEnv(EnvFD); ok {
		t.Fatal("variable still set")
	}
	old, child, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	fds, _ := rawFDs([]*os.File{child})
	fd, err := unix.Dup(fds[0]) // FromEnv closes it
	child.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvFD, fmt.Sprint(fd))
	nw, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	defer nw.Close()
	// FromEnv took the descriptor over and closed it after its dup.
	if err := old.Send(Message{Kind: "ping"}); err != nil {
		t.Fatal(err)
	}
	if m, err := nw.Recv(5 * time.Second); err != nil || m.Kind != "ping" {
		t.Fatalf("%+v, %v", m, err)
	}
}
