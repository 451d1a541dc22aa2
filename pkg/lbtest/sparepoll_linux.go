package lbtest

import (
	"os"
	"testing"

	"github.com/lbctl/lbctl/pkg/sparepoll"
)

// ParkedReadyLoop stands for another event loop, parked in Go's poller on
// a descriptor that is ready (a pipe with a byte in it), until the test
// ends: a busy loop's look (package sparepoll) finds it.
func ParkedReadyLoop(tb testing.TB) {
	tb.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Write([]byte("x")); err != nil {
		tb.Fatal(err)
	}
	l := new(sparepoll.Loop)
	l.Park(int(r.Fd()))
	tb.Cleanup(func() {
		l.Close() // before the descriptor goes
		r.Close()
		w.Close()
	})
}
