package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDemo runs the README's first command as make demo does: the built
// lbdemo against a built lbctl. It fails when the tour does not reach its
// end (a step timed out) or when a step shows the wrong backends.
func TestDemo(t *testing.T) {
	for _, a := range append([]string{frontend, admin}, backendAddrs...) {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("demo port %s is taken: %v", a, err)
			}
			t.Skipf("demo port %s is taken (%v); make demo needs it", a, err)
		}
		ln.Close()
	}
	dir := t.TempDir()
	lbctl, demo := filepath.Join(dir, "lbctl"), filepath.Join(dir, "lbdemo")
	for bin, pkg := range map[string]string{lbctl: "../lbctl", demo: "."} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	cmd := exec.Command(demo, "--lbctl", lbctl, "--config", "../../examples/demo.toml")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out)
	}
	// The tally after backend-2 was stopped names backends 1 and 3 only,
	// the one after the drain of 127.0.0.1:9003 backends 1 and 2 only.
	steps := strings.Split(string(out), "\n==> ")
	for _, c := range []struct{ step, absent, present string }{
		{"stopping backend-2", "backend-2", "backend-3"},
		{"lbctl backend drain", "backend-3", "backend-2"},
	} {
		var answered string
		for _, s := range steps {
			if i := strings.Index(s, "answered by:"); strings.HasPrefix(s, c.step) && i >= 0 {
				answered, _, _ = strings.Cut(s[i:], "\n")
			}
		}
		if answered == "" || strings.Contains(answered, c.absent) || !strings.Contains(answered, c.present) {
			t.Errorf("step %q: want %s and not %s, got %q\n%s", c.step, c.present, c.absent, answered, out)
		}
	}
}
