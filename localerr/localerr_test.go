package localerr_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/lbctl/lbctl/localerr"
)

func TestIs(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"EMFILE", syscall.EMFILE, true},
		{"ENFILE wrapped in OpError", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", syscall.ENFILE)}, true},
		{"ENOBUFS", fmt.Errorf("probe: %w", syscall.ENOBUFS), true},
		{"EADDRNOTAVAIL", &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.EADDRNOTAVAIL)}, true},
		{"ENOSPC from epoll_ctl", os.NewSyscallError("epoll_ctl", syscall.ENOSPC), true},
		{"refused is the backend's", &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, false},
		{"reset is the backend's", syscall.ECONNRESET, false},
		{"timeout is the backend's", context.DeadlineExceeded, false},
		{"EOF is the backend's", io.EOF, false},
		{"a plain error", errors.New("EMFILE"), false}, // never by string
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := localerr.Is(tc.err); got != tc.want {
				t.Errorf("Is(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// TestIsRealEMFILE runs a real dial out of descriptors: the error the
// standard library returns must classify as local.
func TestIsRealEMFILE(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skip(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Fill the descriptor table with duplicates of one file, then dial.
	var held []*os.File
	defer func() {
		for _, f := range held {
			f.Close()
		}
	}()
	low := lim
	low.Cur = 64
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skip(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !localerr.Is(err) {
				t.Fatalf("open out of descriptors: %v not local", err)
			}
			break
		}
		held = append(held, f)
		if len(held) > 1000 {
			t.Fatal("the lowered limit did not take effect")
		}
	}
	_, err = net.Dial("tcp", ln.Addr().String())
	if err == nil {
		t.Fatal("dial succeeded with no descriptor left")
	}
	if !localerr.Is(err) {
		t.Fatalf("dial out of descriptors: %v (%T) not local", err, err)
	}
}
