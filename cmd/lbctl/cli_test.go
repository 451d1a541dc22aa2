package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/spf13/cobra"
)

// TestVersionFlag: --version (and -v) print exactly what `lbctl version`
// prints.
func TestVersionFlag(t *testing.T) {
	want, code := runLbctl(t, "version")
	if code != 0 || !strings.HasPrefix(want, "lbctl ") {
		t.Fatalf("version: exit %d, %q", code, want)
	}
	for _, flag := range []string{"--version", "-v"} {
		if got, code := runLbctl(t, flag); code != 0 || got != want {
			t.Errorf("lbctl %s: exit %d, %q; want exit 0, %q", flag, code, got, want)
		}
	}
}

// TestEveryCommandExplainsItself: every command an operator can see has a
// Long text and examples that name it, and every text in helpTexts belongs
// to a command (none left behind by a rename).
func TestEveryCommandExplainsItself(t *testing.T) {
	root := newRootCmd()
	seen := map[string]bool{}
	walk(root, func(c *cobra.Command) {
		if !c.IsAvailableCommand() && c != root {
			return // hidden, or cobra's help command
		}
		path := c.CommandPath()
		seen[path] = true
		if c.Parent() != nil && c.Parent().Name() == "completion" {
			return // cobra's own per-shell texts
		}
		if strings.TrimSpace(c.Long) == "" {
			t.Errorf("%s: no Long text", path)
		}
		if strings.TrimSpace(c.Example) == "" {
			t.Errorf("%s: no examples", path)
		} else if !strings.Contains(c.Example, path) && c != root {
			t.Errorf("%s: examples do not use the command:\n%s", path, c.Example)
		}
	})
	for path := range helpTexts {
		if !seen[path] {
			t.Errorf("helpTexts has %q, which is no command", path)
		}
	}
	// What the operator reads: the examples are in --help.
	out, code := runLbctl(t, "backend", "drain", "--help")
	if code != 0 || !strings.Contains(out, "Examples:\n  lbctl backend drain web 10.0.0.12:80\n") {
		t.Errorf("backend drain --help: exit %d, no examples:\n%s", code, out)
	}
}

// TestPlurals: counts of one read as one.
func TestPlurals(t *testing.T) {
	dir := t.TempDir()
	one := writeFile(t, dir, "one.toml", "[listeners.a]\nbind = \"127.0.0.1:8080\"\npool = \"p\"\n[[pools.p.backends]]\naddress = \"127.0.0.1:9001\"\n")
	if out, code := runLbctl(t, "validate", "--config", one); code != 0 || !strings.HasSuffix(out, "one.toml: valid (1 listener, 1 pool)\n") {
		t.Errorf("validate one.toml: exit %d:\n%s", code, out)
	}
	two := writeFile(t, dir, "two.toml", "[listeners.a]\nbind = \"127.0.0.1:8080\"\npool = \"p\"\n[listeners.b]\nbind = \"127.0.0.1:8081\"\npool = \"q\"\n"+
		"[[pools.p.backends]]\naddress = \"127.0.0.1:9001\"\n[[pools.q.backends]]\naddress = \"127.0.0.1:9001\"\n")
	if out, code := runLbctl(t, "validate", "--config", two); code != 0 || !strings.HasSuffix(out, "two.toml: valid (2 listeners, 2 pools)\n") {
		t.Errorf("validate two.toml: exit %d:\n%s", code, out)
	}
	bad := writeFile(t, dir, "bad.toml", "[listeners.a]\nbind = \"127.0.0.1:8080\"\npool = \"p\"\n[[pools.p.backends]]\naddress = \"127.0.0.1:9001\"\nweight = -1\n")
	if out, code := runLbctl(t, "validate", "--config", bad); code != 2 || !strings.Contains(out, "invalid configuration (1 problem):\n") {
		t.Errorf("validate bad.toml: exit %d, want 2 and (1 problem):\n%s", code, out)
	}
}

// TestValidateTokenFileAndWeight: validate and serve refuse a config whose
// token_file cannot be read (missing; no permission for the user running
// lbctl) and a static weight above 1000000, naming file, line and key
// (exit 2).
func TestValidateTokenFileAndWeight(t *testing.T) {
	dir := t.TempDir()
	// Readable by another user (the permission case runs lbctl as nobody).
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	token := writeFile(t, dir, "token", "s3cret\n")
	if err := os.Chmod(token, 0o600); err != nil {
		t.Fatal(err)
	}
	config := func(tokenFile string, weight int) string {
		return "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"" + tokenFile + "\"\n" +
			"[listeners.a]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n" +
			"[[pools.p.backends]]\naddress = \"127.0.0.1:9001\"\nweight = " + strconv.Itoa(weight) + "\n"
	}
	good := writeFile(t, dir, "good.toml", config(token, 1_000_000))
	if out, code := runLbctl(t, "validate", "--config", good); code != 0 {
		t.Fatalf("validate good.toml: exit %d:\n%s", code, out)
	}

	// The file is checked first; the token file (like host names) once
	// the file itself is valid.
	heavy := writeFile(t, dir, "heavy.toml", config(token, 1_000_001))
	missing := filepath.Join(dir, "none")
	lost := writeFile(t, dir, "lost.toml", config(missing, 1))
	for _, tc := range []struct{ file, want string }{
		{heavy, heavy + ":9: pools.p.backends[0].weight: must be at most 1000000, got 1000001\n"},
		{lost, lost + `:3: admin.token_file: cannot read "` + missing + `": no such file or directory` + "\n"},
	} {
		for _, verb := range []string{"validate", "serve"} {
			out, code := runLbctl(t, verb, "--config", tc.file)
			if want := "lbctl: invalid configuration (1 problem):\n" + tc.want; code != 2 || !strings.Contains(out, want) {
				t.Errorf("lbctl %s --config %s: exit %d, want 2 with\n%s\ngot:\n%s", verb, filepath.Base(tc.file), code, want, out)
			}
		}
	}

	// No permission: as root, run lbctl as nobody, who cannot read the
	// root-owned 0600 token (root reads everything); as another user, make
	// the token unreadable to its owner.
	bin, cred := lbctlBin, (*syscall.Credential)(nil)
	if os.Geteuid() == 0 {
		bin = filepath.Join(dir, "lbctl")
		copyFile(t, lbctlBin, bin, 0o755)
		cred = &syscall.Credential{Uid: 65534, Gid: 65534}
	} else if err := os.Chmod(token, 0); err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"validate", "serve"} {
		cmd := exec.Command(bin, verb, "--config", good)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Env = append(os.Environ(), "LBCTL_CONFIG=")
		out, _ := cmd.CombinedOutput()
		want := good + `:3: admin.token_file: cannot read "` + token + `": permission denied`
		if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(string(out), want) {
			t.Errorf("lbctl %s without permission: exit %d, want 2 with %q:\n%s", verb, code, want, out)
		}
	}
}

// copyFile copies src to dst with mode perm.
func copyFile(t *testing.T, src, dst string, perm os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, perm); err != nil {
		t.Fatal(err)
	}
}

// TestErrorsOnePerLine: the problems of a config file print one per line
// after their count, whether validate finds them, serve at start (host
// names that do not resolve) or a running lbctl at `lbctl reload`; the
// server logs them as a JSON array.
func TestErrorsOnePerLine(t *testing.T) {
	dir := t.TempDir()
	unresolved := writeFile(t, dir, "unresolved.toml", "[listeners.a]\nbind = \"127.0.0.1:0\"\npool = \"p\"\n"+
		"[[pools.p.backends]]\naddress = \"one.lbctl.invalid:80\"\n[[pools.p.backends]]\naddress = \"two.lbctl.invalid:80\"\n")
	out, code := runLbctl(t, "serve", "--config", unresolved)
	lines := strings.Split(out[max(strings.Index(out, "lbctl: "), 0):], "\n") // after the log lines
	if code != 2 || len(lines) < 3 || lines[0] != "lbctl: invalid configuration (2 problems):" ||
		!strings.HasPrefix(lines[1], unresolved+":5: pools.p.backends[0].address: cannot resolve host") ||
		!strings.HasPrefix(lines[2], unresolved+":7: pools.p.backends[1].address: cannot resolve host") {
		t.Errorf("serve: exit %d, want 2 and the problems one per line:\n%s", code, out)
	}

	be := lbtest.NewTCP(t, lbtest.Echo)
	d := startProc(t, nil, "", be.Addr)
	good, err := os.ReadFile(d.config)
	if err != nil {
		t.Fatal(err)
	}
	n := strings.Count(string(good), "\n")
	if err := os.WriteFile(d.config, append(good, "bogus = 1\n[listeners.b]\npool = \"nope\"\nbind = \"127.0.0.1:0\"\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code = runLbctl(t, "reload", "--config", d.config)
	want := "lbctl: reload rejected, the old configuration keeps running: 2 problems (HTTP 400):\n" +
		d.config + ":" + strconv.Itoa(n+1) + ": pools.web.backends[0].bogus: unknown key\n" +
		d.config + ":" + strconv.Itoa(n+3) + ": listeners.b.pool: unknown pool \"nope\"\n"
	if code != 1 || out != want {
		t.Errorf("reload: exit %d, want 1 and\n%s\ngot\n%s", code, want, out)
	}
	// The server's log line carries the same problems as an array.
	if code := d.stop(); code != 0 {
		t.Fatalf("stop: exit %d", code)
	}
	if want := `"errors":["` + d.config + ":" + strconv.Itoa(n+1) + `: pools.web.backends[0].bogus: unknown key","`; !strings.Contains(d.logs.String(), want) {
		t.Errorf("log lacks %s", want)
	}
}
