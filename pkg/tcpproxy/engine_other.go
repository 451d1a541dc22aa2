//go:build !linux

package tcpproxy

// engine is the event loop of Linux (engine_linux.go); elsewhere every
// connection runs on the goroutine path.
type engine struct{}

type opKind uint8

const opEnd opKind = 2

type op struct {
	kind opKind
	c    *conn
}

// StartEngines does nothing: there are no event loops here.
func StartEngines() error { return nil }

func pickEngine() *engine           { return nil }
func (e *engine) add(*conn)         {}
func (e *engine) post(op)           {}
func (e *engine) promoteWait(*conn) {}
