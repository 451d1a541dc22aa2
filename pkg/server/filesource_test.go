package server

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// TestFileSourceFollowsTheFile: a pool fed by a real file source serves
// the backends in the file, and follows the file when it is replaced by a
// rename (as editors and config managers do): the new backend serves, the
// old one takes no new connection.
func TestFileSourceFollowsTheFile(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("a"))
	b := lbtest.NewTCP(t, lbtest.Named("b"))
	dir := t.TempDir()
	path := filepath.Join(dir, "web.json")
	write := func(addr string) {
		t.Helper()
		tmp := filepath.Join(dir, ".web.json.tmp")
		if err := os.WriteFile(tmp, []byte(fmt.Sprintf(`[{"address": %q, "weight": 1}]`, addr)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(a.Addr)
	h := startServer(t, listenerTOML("l", "p", "")+
		fmt.Sprintf("[pools.p]\n[[pools.p.discover]]\ntype = \"file\"\npath = %q\n", path)+noHealth)
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		got := servedBy(t, h, "l")
		return got == "a", "served " + got
	})
	write(b.Addr)
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		got := servedBy(t, h, "l")
		return got == "b", "served " + got
	})
	for range 4 {
		if got := servedBy(t, h, "l"); got != "b" {
			t.Fatalf("served %q after a left the file", got)
		}
	}
	if st, ok := backendOf(h, "p", b.Addr); !ok || st.Source != "file:"+path {
		t.Fatalf("b in status: %+v %v", st, ok)
	}
}
