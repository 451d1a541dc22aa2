package main

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/spf13/cobra"
)

// repoRoot is the top of the source tree, where the Makefile is.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// runMake runs `make -C <repo root> args...`, installing the test binary
// (LBCTL_BIN) rather than building another one.
func runMake(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	args = append([]string{"-C", repoRoot(t)}, append(args, "LBCTL_BIN="+lbctlBin)...)
	out, err := exec.Command("make", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("make %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestMakeInstall: `make install DESTDIR=... PREFIX=...` lays out the
// binary, the units (paths rewritten to PREFIX) and the default config,
// which a second install leaves alone; `make uninstall` keeps the config.
func TestMakeInstall(t *testing.T) {
	root := repoRoot(t)
	service := readFile(t, filepath.Join(root, "examples", "lbctl.service"))
	socket := readFile(t, filepath.Join(root, "examples", "lbctl.socket"))
	defaults := readFile(t, filepath.Join(root, "examples", "lbctl.default.toml"))
	for _, prefix := range []string{"/usr/local", "/opt/lbctl"} {
		t.Run(prefix, func(t *testing.T) {
			dest := t.TempDir()
			vars := []string{"DESTDIR=" + dest, "PREFIX=" + prefix}
			runMake(t, append([]string{"install"}, vars...)...)

			bin := filepath.Join(dest, prefix, "bin", "lbctl")
			unitDir := filepath.Join(dest, prefix, "lib", "systemd", "system")
			conf := filepath.Join(dest, "etc", "lbctl", "lbctl.toml")
			for path, mode := range map[string]os.FileMode{
				bin: 0o755, filepath.Join(unitDir, "lbctl.service"): 0o644,
				filepath.Join(unitDir, "lbctl.socket"): 0o644, conf: 0o644,
			} {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatalf("not installed: %v", err)
				}
				if fi.Mode().Perm() != mode {
					t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), mode)
				}
			}
			if out, code := runLbctlAt(t, bin, "validate", "--config", conf); code != 0 {
				t.Errorf("the installed config does not validate: exit %d\n%s", code, out)
			}
			wantService := strings.ReplaceAll(service, "/usr/local/bin/lbctl", prefix+"/bin/lbctl")
			if got := readFile(t, filepath.Join(unitDir, "lbctl.service")); got != wantService {
				t.Errorf("installed lbctl.service differs from examples/lbctl.service with paths under %s:\n%s", prefix, got)
			}
			if !strings.Contains(wantService, "\nExecStart="+prefix+"/bin/lbctl serve --config /etc/lbctl/lbctl.toml\n") {
				t.Errorf("ExecStart not under %s", prefix)
			}
			if got := readFile(t, filepath.Join(unitDir, "lbctl.socket")); got != socket {
				t.Errorf("installed lbctl.socket differs from examples/lbctl.socket")
			}
			if got := readFile(t, conf); got != defaults {
				t.Errorf("installed config differs from examples/lbctl.default.toml")
			}

			// An operator's config survives a second install.
			mine := defaults + "\n# edited by the operator\n"
			if err := os.WriteFile(conf, []byte(mine), 0o640); err != nil {
				t.Fatal(err)
			}
			runMake(t, append([]string{"install"}, vars...)...)
			if got := readFile(t, conf); got != mine {
				t.Fatalf("a second install overwrote the config")
			}

			runMake(t, append([]string{"uninstall"}, vars...)...)
			for _, gone := range []string{bin, filepath.Join(unitDir, "lbctl.service"), filepath.Join(unitDir, "lbctl.socket")} {
				if _, err := os.Stat(gone); !os.IsNotExist(err) {
					t.Errorf("%s still there after uninstall (%v)", gone, err)
				}
			}
			if got := readFile(t, conf); got != mine {
				t.Errorf("uninstall touched the config")
			}
		})
	}
}

// runLbctlAt runs another lbctl binary (an installed copy) to completion.
func runLbctlAt(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), 0
}

// TestUnitFilesVerify runs `systemd-analyze verify` on the units as `make
// install` writes them, installed (without DESTDIR) under a temporary
// PREFIX so that ExecStart names an existing binary. verify exits 0 even
// for unknown keys and bad values, so any line it prints about our units
// fails the test.
func TestUnitFilesVerify(t *testing.T) {
	analyze := lbtest.Binary(t, "systemd-analyze", "/usr/bin/systemd-analyze", "systemd")
	dir := t.TempDir()
	runMake(t, "install", "PREFIX="+filepath.Join(dir, "usr"), "SYSCONFDIR="+filepath.Join(dir, "etc"))
	unitDir := filepath.Join(dir, "usr", "lib", "systemd", "system")
	cmd := exec.Command(analyze, "verify", filepath.Join(unitDir, "lbctl.service"), filepath.Join(unitDir, "lbctl.socket"))
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_LEVEL=notice")
	out, err := cmd.CombinedOutput()
	var about []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "lbctl") {
			about = append(about, sc.Text())
		}
	}
	if err != nil || len(about) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestUnitFileDirectives pins what the issue asks of examples/lbctl.service
// and that every directive of both units has a comment above it.
func TestUnitFileDirectives(t *testing.T) {
	root := repoRoot(t)
	service := readFile(t, filepath.Join(root, "examples", "lbctl.service"))
	for _, want := range []string{
		"Type=notify", "ExecStart=/usr/local/bin/lbctl serve --config /etc/lbctl/lbctl.toml",
		"ExecReload=/usr/local/bin/lbctl reload --config /etc/lbctl/lbctl.toml",
		"Restart=on-failure", "WatchdogSec=", "LimitNOFILE=1048576", "DynamicUser=yes",
		"AmbientCapabilities=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes", "ProtectSystem=strict",
		"ProtectHome=yes", "PrivateTmp=yes", "RestrictAddressFamilies=",
		"RuntimeDirectory=lbctl", "RuntimeDirectoryMode=0750", // the control socket's directory
	} {
		if !strings.Contains(service, "\n"+want) {
			t.Errorf("lbctl.service lacks %q", want)
		}
	}
	for _, name := range []string{"lbctl.service", "lbctl.socket"} {
		prev := ""
		for i, line := range strings.Split(readFile(t, filepath.Join(root, "examples", name)), "\n") {
			if line != "" && line[0] != '#' && line[0] != '[' && !strings.HasPrefix(prev, "#") {
				t.Errorf("%s:%d: %q has no comment above it", name, i+1, line)
			}
			prev = line
		}
	}
}

// TestMakeInstallDocs: `make install` also installs a man page for lbctl
// and for every command, which groff renders without a warning, and the
// bash, zsh and fish completions where those shells look for them; bash
// sources its script and completes a command with it; `make uninstall`
// removes them all.
func TestMakeInstallDocs(t *testing.T) {
	dest := t.TempDir()
	const prefix = "/usr/local"
	vars := []string{"DESTDIR=" + dest, "PREFIX=" + prefix}
	runMake(t, append([]string{"install"}, vars...)...)

	share := filepath.Join(dest, prefix, "share")
	man1 := filepath.Join(share, "man", "man1")
	bashComp := filepath.Join(share, "bash-completion", "completions", "lbctl")
	zshComp := filepath.Join(share, "zsh", "site-functions", "_lbctl")
	fishComp := filepath.Join(share, "fish", "vendor_completions.d", "lbctl.fish")

	// One page per command an operator can type, and no other.
	var want []string
	walk(newRootCmd(), func(c *cobra.Command) {
		if c.IsAvailableCommand() || !c.HasParent() {
			want = append(want, strings.ReplaceAll(c.CommandPath(), " ", "-")+".1")
		}
	})
	got, err := filepath.Glob(filepath.Join(man1, "*"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		got[i] = filepath.Base(got[i])
	}
	sort.Strings(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("man pages installed:\n%v\nwant:\n%v", got, want)
	}
	for _, path := range []string{filepath.Join(man1, "lbctl.1"), filepath.Join(man1, "lbctl-backend-drain.1"), bashComp, zshComp, fishComp} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatalf("not installed: %v", err)
		}
		if fi.Mode().Perm() != 0o644 || fi.Size() == 0 {
			t.Errorf("%s: mode %v, %d bytes; want 0644, not empty", path, fi.Mode().Perm(), fi.Size())
		}
	}

	// bash sources the script cleanly.
	bash := lbtest.Binary(t, "bash", "/bin/bash", "bash")
	out, err := exec.Command(bash, "--norc", "--noprofile", "-c", `set -e; source "$1"; complete -p lbctl`, "bash", bashComp).CombinedOutput()
	if err != nil || string(out) != "complete -o default -F __start_lbctl lbctl\n" {
		t.Errorf("bash: source %s: %v\n%s", bashComp, err, out)
	}
	// With bash-completion loaded, as in an operator's shell, it completes
	// "lbctl backend dr" to drain: the script asks the binary (the
	// installed one, first on PATH).
	t.Run("bash-completion", func(t *testing.T) {
		const lib = "/usr/share/bash-completion/bash_completion"
		if _, err := os.Stat(lib); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required under CI=true (apt-get install bash-completion)", lib)
			}
			t.Skipf("%s missing (apt-get install bash-completion); under CI=true this is a failure", lib)
		}
		script := `source "$1"; source "$2"
COMP_WORDS=(lbctl backend dr); COMP_CWORD=2; COMP_LINE="lbctl backend dr"; COMP_POINT=${#COMP_LINE}
__start_lbctl lbctl dr backend
printf 'reply:%s\n' "${COMPREPLY[@]}"`
		cmd := exec.Command(bash, "--norc", "--noprofile", "-c", script, "bash", lib, bashComp)
		cmd.Env = append(os.Environ(), "PATH="+filepath.Join(dest, prefix, "bin")+":"+os.Getenv("PATH"), "LBCTL_CONFIG=")
		// (Outside a real completion, compopt complains on stderr.)
		cmd.Stderr = io.Discard
		out, err := cmd.Output()
		if err != nil || string(out) != "reply:drain\n" {
			t.Errorf("bash completion of \"lbctl backend dr\": %v, want \"reply:drain\":\n%s", err, out)
		}
	})
	// zsh reads its script without a syntax error; fish completes with its.
	t.Run("zsh", func(t *testing.T) {
		zsh := lbtest.Binary(t, "zsh", "/usr/bin/zsh", "zsh")
		if out, err := exec.Command(zsh, "-n", zshComp).CombinedOutput(); err != nil {
			t.Errorf("zsh -n %s: %v\n%s", zshComp, err, out)
		}
	})
	t.Run("fish", func(t *testing.T) {
		fish := lbtest.Binary(t, "fish", "/usr/bin/fish", "fish")
		cmd := exec.Command(fish, "--no-config", "-c", `source $argv[1]; complete -C "lbctl backend dr"`, fishComp)
		cmd.Env = append(os.Environ(), "PATH="+filepath.Join(dest, prefix, "bin")+":"+os.Getenv("PATH"), "LBCTL_CONFIG=")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "drain\t") || strings.Count(string(out), "\n") != 1 {
			t.Errorf("fish completion of \"lbctl backend dr\": %v, want drain and its description:\n%s", err, out)
		}
	})

	// The pages render: groff (Debian groff-base, which man uses) with every
	// warning on.
	t.Run("groff", func(t *testing.T) {
		groff := lbtest.Binary(t, "groff", "/usr/bin/groff", "groff-base")
		for _, page := range want {
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(groff, "-man", "-Tutf8", "-ww", "-P", "-cbou", filepath.Join(man1, page))
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil || stderr.Len() > 0 {
				t.Errorf("groff %s: %v\n%s", page, err, stderr.String())
			}
			if page == "lbctl-backend-drain.1" {
				for _, w := range []string{"lbctl backend drain POOL ADDRESS", "DESCRIPTION", "--wait", "EXAMPLE", "lbctl backend drain web 10.0.0.12:80 --wait"} {
					if !strings.Contains(stdout.String(), w) {
						t.Errorf("man lbctl-backend-drain lacks %q:\n%s", w, stdout.String())
					}
				}
			}
		}
	})

	runMake(t, append([]string{"uninstall"}, vars...)...)
	left, _ := filepath.Glob(filepath.Join(man1, "lbctl*"))
	for _, gone := range append(left, bashComp, zshComp, fishComp) {
		if _, err := os.Stat(gone); !os.IsNotExist(err) {
			t.Errorf("%s still there after uninstall (%v)", gone, err)
		}
	}
}
