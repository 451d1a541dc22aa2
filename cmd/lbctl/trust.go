package main

import (
	"fmt"
	"io"
	"os"
)

// The client commands (status, backend, reload) take the admin address and
// the token file from a config they find, possibly ./lbctl.toml in whatever
// directory they run in, and send the token to that address. A file another
// user could have written would let that user collect the token. So, as ssh
// does with its config files (readconf.c, secure_permissions), a client
// command refuses a config or token file that is owned by someone other
// than the invoking user or root, or that group or others may write.
// Files named with --config, $LBCTL_CONFIG or --token-file are checked
// too.
//
// The check is on the descriptor the content is then read from, so the
// file cannot be swapped between the check and the read. The directory is
// not checked: a file planted by another user is owned by that user, and
// a file of the invoking user cannot be rewritten by others whatever its
// directory allows. serve reads its own config, named by the operator who
// starts it, and is not concerned.

// unsafeFileError refuses a file that another user could have written.
type unsafeFileError struct {
	what, path, why string
}

func (e *unsafeFileError) Error() string {
	return fmt.Sprintf("refusing %s %s: %s", e.what, e.path, e.why)
}

// readTrusted reads the file at path (what names it in errors: "config
// file", "token file") unless another user could have written it; that
// refusal is an *unsafeFileError.
func readTrusted(what, path string) ([]byte, error) {
	// Non-blocking, so that a FIFO planted in place of the file cannot
	// hang the command in open; it is refused below.
	f, err := os.OpenFile(path, os.O_RDONLY|openNonblock, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, &unsafeFileError{what, path, fmt.Sprintf("not a regular file (%v)", fi.Mode().Type())}
	}
	if why := untrusted(fi, path); why != "" {
		return nil, &unsafeFileError{what, path, why}
	}
	return io.ReadAll(f)
}
