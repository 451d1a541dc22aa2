package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// nobody is the uid given to files "another user" owns.
const nobody = 65534

// TestClientRefusesUnsafeFiles: the client commands take the admin address
// and the token file from a config they find, possibly ./lbctl.toml in a
// directory others can write. Like ssh with its config, they refuse a config
// or token file that another non-root user owns or that group or others may
// write, before sending anything anywhere; files the invoking user (or root)
// owns and alone may write work.
func TestClientRefusesUnsafeFiles(t *testing.T) {
	admin, tokensSeen := fakeAdmin(t)

	type files struct {
		dir, config, token string
	}
	// setup writes a token file and a config naming it and the fake admin
	// API, with the given modes, in a fresh directory.
	setup := func(t *testing.T, configMode, tokenMode os.FileMode) files {
		t.Helper()
		dir := t.TempDir()
		f := files{dir: dir, config: filepath.Join(dir, "lbctl.toml"), token: filepath.Join(dir, "token")}
		writeMode(t, f.token, "s3cret\n", tokenMode)
		writeMode(t, f.config, fmt.Sprintf("[admin]\nbind = %q\ntoken_file = %q\n", admin, f.token), configMode)
		return f
	}
	giveAway := func(t *testing.T, path string) {
		t.Helper()
		if os.Getuid() != 0 {
			t.Skipf("not root: cannot give %s to another user; the ownership check is tested as root (CI)", filepath.Base(path))
		}
		if err := os.Chown(path, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct {
		name                  string
		configMode, tokenMode os.FileMode
		prepare               func(t *testing.T, f files) (args, env []string)
		code                  int
		want                  []string // in the output
		token                 bool     // the fake admin API got the token
	}{
		{"./lbctl.toml owned by another user", 0o644, 0o600, func(t *testing.T, f files) ([]string, []string) {
			giveAway(t, f.config)
			return []string{"status"}, nil
		}, 2, []string{"./lbctl.toml", ownedBy(nobody), "not by you"}, false},
		{"./lbctl.toml writable by others", 0o666, 0o600, func(*testing.T, files) ([]string, []string) {
			return []string{"status"}, nil
		}, 2, []string{"./lbctl.toml", "writable by group or others (mode 0666)", "chmod go-w"}, false},
		{"reload with ./lbctl.toml writable by group", 0o664, 0o600, func(*testing.T, files) ([]string, []string) {
			return []string{"reload"}, nil
		}, 2, []string{"./lbctl.toml", "mode 0664"}, false},
		{"backend with ./lbctl.toml writable by others", 0o646, 0o600, func(*testing.T, files) ([]string, []string) {
			return []string{"backend", "drain", "web", "127.0.0.1:1"}, nil
		}, 2, []string{"./lbctl.toml", "mode 0646"}, false},
		{"--config owned by another user", 0o600, 0o600, func(t *testing.T, f files) ([]string, []string) {
			giveAway(t, f.config)
			return []string{"status", "--config", f.config}, nil
		}, 2, []string{ownedBy(nobody)}, false},
		{"$LBCTL_CONFIG writable by others", 0o666, 0o600, func(_ *testing.T, f files) ([]string, []string) {
			return []string{"status"}, []string{"LBCTL_CONFIG=" + f.config}
		}, 2, []string{"lbctl.toml", "mode 0666"}, false},
		{"token file of the config owned by another user", 0o644, 0o600, func(t *testing.T, f files) ([]string, []string) {
			giveAway(t, f.token)
			return []string{"status"}, nil
		}, 2, []string{"token file", ownedBy(nobody)}, false},
		{"--token-file writable by others", 0o644, 0o666, func(_ *testing.T, f files) ([]string, []string) {
			return []string{"status", "--admin", admin, "--token-file", f.token}, nil
		}, 2, []string{"token file", "mode 0666"}, false},
		{"--token-file owned by another user", 0o644, 0o600, func(t *testing.T, f files) ([]string, []string) {
			giveAway(t, f.token)
			return []string{"status", "--admin", admin, "--token-file", f.token}, nil
		}, 2, []string{"token file", ownedBy(nobody)}, false},
		{"./lbctl.toml 0644 and token 0600 of yours", 0o644, 0o600, func(*testing.T, files) ([]string, []string) {
			return []string{"status"}, nil
		}, 0, []string{"LISTENER"}, true},
		{"--config 0600 and token 0644 of yours", 0o600, 0o644, func(_ *testing.T, f files) ([]string, []string) {
			return []string{"status", "--config", f.config}, nil
		}, 0, []string{"LISTENER"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t, tc.configMode, tc.tokenMode)
			args, env := tc.prepare(t, f)
			before := len(tokensSeen())
			out, code := runLbctlIn(t, f.dir, env, args...)
			if code != tc.code {
				t.Fatalf("lbctl %v: exit %d, want %d\n%s", args, code, tc.code, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			got := tokensSeen()[before:]
			switch {
			case tc.token && (len(got) != 1 || got[0] != "Bearer s3cret"):
				t.Errorf("admin API got authorizations %q, want one Bearer s3cret", got)
			case !tc.token && len(got) != 0:
				t.Errorf("a refused command still sent %q to the admin address", got)
			}
		})
	}
}

// ownedBy is how a refusal names a file's foreign owner.
func ownedBy(uid int) string { return fmt.Sprintf("owned by uid %d", uid) }

func writeMode(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// fakeAdmin is an admin API answering an empty status; it records the
// Authorization header of every request.
func fakeAdmin(t *testing.T) (addr string, seen func() []string) {
	t.Helper()
	var mu sync.Mutex
	var auths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auths = append(auths, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"listeners": [], "pools": []}`)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), auths...)
	}
}
