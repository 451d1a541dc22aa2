package main

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// TestReloadInvalidFileStillFindsAdmin: after an edit breaks the config,
// `lbctl reload` (no flags) still finds the admin address and token in it
// and shows the server's complaint, instead of failing to connect.
func TestReloadInvalidFileStillFindsAdmin(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Named("a"))
	token := writeFile(t, t.TempDir(), "token", "s3cret\n")
	d := startProc(t, nil, fmt.Sprintf("token_file = %q", token), be.Addr)
	good, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.config, append(good, []byte("bogus_key = 1\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := runLbctl(t, "reload", "--config", d.config)
	if code != 1 || !strings.Contains(out, "bogus_key") || strings.Contains(out, "cannot reach") {
		t.Fatalf("reload of an edited, invalid file: exit %d\n%s", code, out)
	}
	out, code = runLbctl(t, "status", "--config", d.config)
	if code != 0 || !strings.Contains(out, be.Addr) {
		t.Fatalf("status with an invalid file on disk: exit %d\n%s", code, out)
	}
}
