package config

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestStaticWeightLimit: a static backend's weight above MaxWeight is an
// error with file:line and key (it used to be clamped silently); MaxWeight
// itself is fine.
func TestStaticWeightLimit(t *testing.T) {
	src := `[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
weight = 1000000
[[pools.web.backends]]
address = "127.0.0.1:9002"
weight = 1000001
`
	_, err := Parse("t.toml", []byte(src))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Parse: %v, want Errors", err)
	}
	if want := "t.toml:9: pools.web.backends[1].weight: must be at most 1000000, got 1000001"; err.Error() != want {
		t.Fatalf("got\n%s\nwant\n%s", err, want)
	}
	cfg, err := Parse("t.toml", []byte(strings.Replace(src, "1000001", "1000000", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if w := cfg.Pools["web"].Backends[1].Weight; w != MaxWeight {
		t.Fatalf("weight %d, want %d", w, MaxWeight)
	}
}

// TestCheckTokenFile: a token file that cannot be read, or is empty, is a
// problem at the line of admin.token_file; a readable one with a token,
// or no token_file at all, is not. (No permission is tested in cmd/lbctl
// with the real binary run as another user: root reads any file.)
func TestCheckTokenFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "token")
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(good, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo") // opening it would wait for a writer
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	const tail = "[listeners.web]\nbind = \"127.0.0.1:8080\"\npool = \"web\"\n[[pools.web.backends]]\naddress = \"127.0.0.1:9001\"\n"
	for _, tc := range []struct {
		name, admin, want string
	}{
		{"no admin table", "", ""},
		{"no token_file", "[admin]\nbind = \"127.0.0.1:9900\"\n", ""},
		{"readable", "[admin]\nbind = \"127.0.0.1:9900\"\ntoken_file = " + strconv.Quote(good) + "\n", ""},
		{"missing", "[admin]\nbind = \"127.0.0.1:9900\"\ntoken_file = " + strconv.Quote(filepath.Join(dir, "none")) + "\n",
			"t.toml:3: admin.token_file: cannot read " + strconv.Quote(filepath.Join(dir, "none")) + ": no such file or directory"},
		{"a directory", "\n[admin]\ntoken_file = " + strconv.Quote(dir) + "\n",
			"t.toml:3: admin.token_file: " + strconv.Quote(dir) + " is a directory, not the file holding the token"},
		{"a FIFO", "[admin]\ntoken_file = " + strconv.Quote(fifo) + "\n",
			"t.toml:2: admin.token_file: " + strconv.Quote(fifo) + " is not a regular file"},
		{"empty", "[admin]\ntoken_file = " + strconv.Quote(empty) + "\n",
			"t.toml:2: admin.token_file: " + strconv.Quote(empty) + " is empty: every API request would be refused; write the token into it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("t.toml", []byte(tc.admin+tail))
			if err != nil {
				t.Fatal(err)
			}
			err = CheckTokenFile(cfg)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("CheckTokenFile: %v, want nil", err)
				}
				return
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 {
				t.Fatalf("CheckTokenFile: %v, want one Errors entry", err)
			}
			if err.Error() != tc.want {
				t.Fatalf("got\n%s\nwant\n%s", err, tc.want)
			}
		})
	}
}
