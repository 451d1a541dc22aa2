package server

import (
	"context"
	"errors"
)

// DetachTCP runs in the old process, once its listeners stopped accepting
// (StopAccepting). It brings every established TCP connection to a clean
// point (no byte held by lbctl), and passes each to send with its state, in
// batches of at most MaxHandoverFiles descriptors; the connection is then
// gone from this process. A connection still in its PROXY-header, TLS
// inspection or dial phase is passed once it reaches its backend. One that
// cannot reach a clean point before ctx ends stays and finishes here.
// It returns how many connections were passed.
func (s *Server) DetachTCP(ctx context.Context, send func(HandoverBatch) error) (moved int, err error) {
	return 0, errors.New("server: DetachTCP is not built yet")
}

// AdoptTCP runs in the new process, after Start: it serves the connections
// of one batch that DetachTCP sent, as if they had been accepted here.
func (s *Server) AdoptTCP(b HandoverBatch) error {
	return errors.New("server: AdoptTCP is not built yet")
}
