//go:build !linux

package tcpproxy

// engine is the event loop of Linux (engine_linux.go); elsewhere every
// connection runs on the goroutine path.
type engine struct{}

// StartEngines does nothing: there are no event loops here.
func StartEngines() error { return nil }

func pickEngine() *engine           { return nil }
func (e *engine) add(*conn)         {}
func (e *engine) end(*conn)         {}
func (e *engine) promoteWait(*conn) {}
