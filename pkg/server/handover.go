package server

import "os"

// The handover of lbctl upgrade (SPEC "Upgrading the binary without
// dropping anything"): the old process passes its listening sockets, its
// run-time state, its established TCP connections and its UDP sessions to
// the new one over a unix socket (pkg/upgrade). The parts live in
// upgrade.go (listeners, state, the order of the steps), handover_tcp.go
// (established connections) and handover_udp.go (sessions).

// HandoverBatch is one message of the handover: a description of some
// connections or sessions (Meta, encoded and decoded by this package) and
// their descriptors, in the order Meta names them. Files holds at most
// MaxHandoverFiles descriptors.
type HandoverBatch struct {
	Meta  []byte
	Files []*os.File
}

// MaxHandoverFiles bounds the descriptors of one batch: SCM_RIGHTS carries
// at most 253 in one message (SCM_MAX_FD).
const MaxHandoverFiles = 252
