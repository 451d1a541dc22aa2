package main

import (
	"errors"
	"net"
	"net/http"
	"sync"

	"github.com/lbctl/lbctl/pkg/admin"
	"go.uber.org/zap"
)

// controlSocket is the daemon's control socket (control_socket, by default
// $RUNTIME_DIRECTORY/lbctl.sock): the admin API on a unix socket, opened
// before the listeners, moved by a reload that changes its path, removed
// at exit. Unlike [admin], which a reload leaves alone, the control socket
// follows the file: it is what `lbctl reload` finds through the file, so
// the path in the file and the one served stay the same.
type controlSocket struct {
	opts admin.Options // what every control socket serves
	log  *zap.Logger

	mu     sync.Mutex
	cur    *admin.Server // nil: none
	path   string
	closed bool
	wg     sync.WaitGroup // Serve goroutines, and closes of moved sockets; Add under mu while !closed
}

// openLocked binds and serves a control socket at path ("" = none), or
// serves ln, the socket bound there that an upgrade passed, when not nil.
// The caller holds c.mu.
func (c *controlSocket) openLocked(path string, ln net.Listener) (*admin.Server, error) {
	if path == "" {
		return nil, nil
	}
	opts := c.opts
	opts.Listener = ln
	s, err := admin.NewControl(path, opts)
	if err != nil {
		return nil, err
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := s.Serve(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			c.log.Error("control socket stopped", zap.String("path", path), zap.Error(err))
		}
	}()
	return s, nil
}

// start opens the control socket at path ("" = none); ln, when not nil, is
// the socket bound there that the old process of an upgrade passed.
func (c *controlSocket) start(path string, ln net.Listener) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, err := c.openLocked(path, ln)
	if err != nil {
		return err
	}
	c.cur, c.path = s, path
	if s != nil {
		c.log.Info("control socket listening", zap.String("path", path))
	}
	return nil
}

// prepare readies a move of the control socket to path, for a reload:
// the new socket is bound first (its failure fails the reload, the old
// socket stays), then commit puts it in service and closes the old one
// (without waiting: the reload may have come through it), or abort closes
// it when the reload fails.
func (c *controlSocket) prepare(path string) (commit, abort func(), err error) {
	noop := func() {}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || path == c.path {
		return noop, noop, nil
	}
	s, err := c.openLocked(path, nil)
	if err != nil {
		return nil, nil, err
	}
	commit = func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.closed {
			c.closeLocked(s)
			return
		}
		old, from := c.cur, c.path
		c.cur, c.path = s, path
		c.closeLocked(old)
		c.log.Info("control socket moved", zap.String("from", from), zap.String("to", path))
	}
	abort = func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.closeLocked(s)
	}
	return commit, abort, nil
}

// listening returns the control socket's path and socket (nil: none), for
// an upgrade to pass.
func (c *controlSocket) listening() (string, net.Listener) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return "", nil
	}
	return c.path, c.cur.Listening()
}

// stopListening stops accepting on the control socket and leaves its file
// alone at close: the new process of an upgrade serves it.
func (c *controlSocket) stopListening() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != nil {
		c.cur.StopListening()
	}
}

// closeLocked closes s (nil: nothing) in the background. The caller holds
// c.mu.
func (c *controlSocket) closeLocked(s *admin.Server) {
	if s == nil {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		s.Close()
	}()
}

// close closes the control socket, removes its file and waits for every
// socket this controlSocket served to be closed.
func (c *controlSocket) close() {
	c.mu.Lock()
	c.closed = true
	cur := c.cur
	c.cur = nil
	c.mu.Unlock()
	if cur != nil {
		cur.Close()
	}
	c.wg.Wait()
}
