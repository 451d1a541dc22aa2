package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// CheckTokenFile reads the [admin] token_file of cfg, as the admin API
// will on every request, and reports a file that cannot be read (missing,
// no permission), is no regular file (a directory; a FIFO would block) or
// holds no token (every API request would be refused). The error is an
// Errors naming the file, line and key:
//
//	lbctl.toml:12: admin.token_file: cannot read "/etc/lbctl/token": permission denied
//
// It returns nil when cfg has no admin table or no token_file. Load does
// not call it (a Config is read from the config file alone); validate and
// serve do, as the user that will read the token. cfg must come from Load
// or Parse.
func CheckTokenFile(cfg *Config) error {
	if cfg.Admin == nil || cfg.Admin.TokenFile == "" {
		return nil
	}
	path := cfg.Admin.TokenFile
	fail := func(format string, args ...any) error {
		return Errors{{File: cfg.File, Line: cfg.tokenFileLine, Key: "admin.token_file", Msg: fmt.Sprintf(format, args...)}}
	}
	cannotRead := func(err error) error {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is named already
		}
		return fail("cannot read %q: %v", path, err)
	}
	// Stat first: opening a FIFO would wait for a writer.
	fi, err := os.Stat(path)
	if err != nil {
		return cannotRead(err)
	}
	switch {
	case fi.IsDir():
		return fail("%q is a directory, not the file holding the token", path)
	case !fi.Mode().IsRegular():
		return fail("%q is not a regular file", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return cannotRead(err)
	}
	if strings.TrimSpace(string(b)) == "" {
		return fail("%q is empty: every API request would be refused; write the token into it", path)
	}
	return nil
}
