package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/lbctl/lbctl/pkg/lbtest"
)

// complete runs `lbctl __complete args...` (what the shell scripts run)
// and returns its stdout: one completion per line, then ":directive".
func complete(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(lbctlBin, append([]string{"__complete"}, args...)...)
	cmd.Env = append(os.Environ(), "LBCTL_CONFIG=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("lbctl __complete %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// TestCompletionFromRunningServer: pool names and backend addresses
// complete from a running lbctl, found through the config as the command
// would find it, or through --admin; with no lbctl to ask, nothing
// completes (and no file names: directive 4).
func TestCompletionFromRunningServer(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Echo)
	b := lbtest.NewTCP(t, lbtest.Echo)
	d := startProc(t, nil, "", a.Addr, b.Addr)
	backends := []string{a.Addr, b.Addr}
	if backends[0] > backends[1] {
		backends[0], backends[1] = backends[1], backends[0]
	}
	const noFiles = ":4\n"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"pools, admin from the config", []string{"backend", "drain", "--config", d.config, ""},
			"web\tround-robin, 2 backends\n" + noFiles},
		{"pools by prefix", []string{"backend", "disable", "--admin", d.admin, "w"},
			"web\tround-robin, 2 backends\n" + noFiles},
		{"no pool by that prefix", []string{"backend", "enable", "--admin", d.admin, "x"}, noFiles},
		{"backends of the pool", []string{"backend", "kill", "--config", d.config, "web", ""},
			backends[0] + "\thealth up, enabled\n" + backends[1] + "\thealth up, enabled\n" + noFiles},
		{"backends by prefix", []string{"backend", "weight", "--admin", d.admin, "web", backends[1]},
			backends[1] + "\thealth up, enabled\n" + noFiles},
		{"unknown pool", []string{"backend", "remove", "--admin", d.admin, "nope", ""}, noFiles},
		{"nothing after the address", []string{"backend", "drain", "--admin", d.admin, "web", a.Addr, ""}, noFiles},
		{"add: the pool, not the new address", []string{"backend", "add", "--admin", d.admin, "web", ""}, noFiles},
		{"add: pools", []string{"backend", "add", "--admin", d.admin, ""}, "web\tround-robin, 2 backends\n" + noFiles},
		{"no lbctl there", []string{"backend", "drain", "--admin", freePort(t), ""}, noFiles},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := complete(t, tc.args...); got != tc.want {
				t.Errorf("lbctl __complete %s:\n%q\nwant\n%q", strings.Join(tc.args, " "), got, tc.want)
			}
		})
	}
	// A drained backend says so.
	if out, code := runLbctl(t, "backend", "drain", "web", a.Addr, "--admin", d.admin); code != 0 {
		t.Fatalf("drain: exit %d\n%s", code, out)
	}
	if got := complete(t, "backend", "enable", "--admin", d.admin, "web", a.Addr); got != a.Addr+"\thealth up, draining\n"+noFiles {
		t.Errorf("after drain: %q", got)
	}
}

// TestCompletionOfConfigFlag: --config completes TOML files, on every
// command that has it.
func TestCompletionOfConfigFlag(t *testing.T) {
	for _, args := range [][]string{{"validate", "--config", ""}, {"serve", "-c", ""}, {"backend", "drain", "--config", ""}, {"status", "--config", ""}} {
		if got, want := complete(t, args...), "toml\n:8\n"; got != want {
			t.Errorf("lbctl __complete %s: %q, want %q (.toml files)", strings.Join(args, " "), got, want)
		}
	}
}
