package server

import (
	"context"
	"errors"
)

// DetachUDP runs in the old process: its UDP listeners stop reading (the
// datagrams wait in the shared socket for the new process), and every open
// session is passed to send with its backend socket and state, in batches of
// at most MaxHandoverFiles descriptors. It returns how many were passed.
func (s *Server) DetachUDP(ctx context.Context, send func(HandoverBatch) error) (moved int, err error) {
	return 0, errors.New("server: DetachUDP is not built yet")
}

// AdoptUDP runs in the new process (started with Options.HoldUDP), after
// Start: it serves the sessions of one batch that DetachUDP sent.
func (s *Server) AdoptUDP(b HandoverBatch) error {
	return errors.New("server: AdoptUDP is not built yet")
}

// ReleaseUDP lets the UDP listeners of a server started with
// Options.HoldUDP read from their sockets: once the sessions are adopted,
// or when the handover failed. Without HoldUDP it does nothing.
func (s *Server) ReleaseUDP() {}
