package admin

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// NewControl binds the control socket at path: a unix socket, mode 0600,
// serving the admin API's endpoints without token, allow list, Host or
// Content-Type checks (the file's mode decides who may connect). opts.Bind,
// Allow, Hosts and TokenFile are ignored.
//
// A socket file left by a crashed run (nobody answers on it) is replaced;
// a file that is not a socket, or a socket a live process answers on
// (another lbctl), is an error and nothing is touched. Close removes the
// socket file, unless another process has replaced it meanwhile.
//
// With opts.Listener (the control socket the old process of an upgrade
// passed, still bound at path), that socket is served and nothing is bound.
func NewControl(path string, opts Options) (*Server, error) {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	opts.Bind, opts.Allow, opts.Hosts, opts.TokenFile = "", nil, nil, ""
	ln := opts.Listener
	if ln == nil {
		var err error
		if ln, err = listenControl(path); err != nil {
			return nil, err
		}
	}
	s := newServer(opts, ln, true)
	st, err := os.Stat(path)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	s.unlink = func() {
		// Remove it only while it is still ours.
		if cur, err := os.Stat(path); err == nil && os.SameFile(cur, st) {
			os.Remove(path)
		}
	}
	return s, nil
}

// listenControl binds a unix socket at path with mode 0600. It binds a
// temporary name beside path, sets the mode, then renames it over path:
// no client ever sees the socket with a wider mode, and a stale file is
// replaced in one step.
func listenControl(path string) (*net.UnixListener, error) {
	if err := checkStale(path); err != nil {
		return nil, err
	}
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	if len(tmp) > 107 {
		// sun_path's limit; path itself was checked by config.
		tmp = fmt.Sprintf("%s.%d", path, os.Getpid()%100000)
	}
	os.Remove(tmp) // left by a crash of this very pid, if any
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false) // the file moves; NewControl's unlink removes it
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return ln, nil
}

// ErrControlSocketInUse is returned by NewControl when a live process
// answers on the control socket's path.
var ErrControlSocketInUse = errors.New("a running process answers on it")

// checkStale looks at what is at path already: nothing, or a socket nobody
// answers on (left by a crash), are fine; anything else is an error.
func checkStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("control socket %s: the file exists and is not a socket; remove it or set another control_socket", path)
	}
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err == nil {
		who := "another process"
		if pid := peerPID(c); pid > 0 {
			who = fmt.Sprintf("process %d", pid)
		}
		c.Close()
		return fmt.Errorf("control socket %s: %w (%s, another lbctl?): stop it first, or give this one another control_socket",
			path, ErrControlSocketInUse, who)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil // stale: nobody listens
	}
	return fmt.Errorf("control socket %s: cannot tell whether a running process answers on it: %w", path, err)
}
