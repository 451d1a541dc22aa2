//go:build !linux

package tcpproxy

import (
	"context"
	"net"
)

// engine is the event loop of Linux (engine_linux.go); elsewhere every
// connection runs on the goroutine path.
type engine struct{}

// StartEngines does nothing: there are no event loops here.
func StartEngines() error { return nil }

func pickEngine() *engine           { return nil }
func pickDialEngine() *engine       { return nil }
func (e *engine) add(*conn)         {}
func (e *engine) end(*conn)         {}
func (e *engine) promoteWait(*conn) {}

// loopDial and loopSock are the state of a connect made by an event loop
// (dial_linux.go); StartInLoop declines here, so they stay nil.
type (
	loopDial  struct{}
	loopSock  struct{}
	loopHello struct{}
)

func (e *engine) connect(*conn, context.Context, *Prelude, func(End)) {}
func closeLoopSock(*loopSock, bool)                                   {}
func loopsConnect() bool                                              { return false }

// Listener is a listening socket an event loop accepts on
// (accept_linux.go); ListenInLoop declines here.
type Listener struct{}

// ListenInLoop returns nil: the caller accepts with its own goroutine.
func ListenInLoop(*net.TCPListener, ListenerHooks) *Listener { return nil }

func (l *Listener) Pause() <-chan struct{} { return nil }
func (l *Listener) Resume()                {}
func (l *Listener) Stop()                  {}
func (l *Listener) Err() error             { return nil }

// MissedWakeups and PromoteFailures are the event loops' counters
// (engine_linux.go): always 0 here.
func MissedWakeups() int64   { return 0 }
func PromoteFailures() int64 { return 0 }
