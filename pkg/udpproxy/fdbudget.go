package udpproxy

import (
	"math"
	"sync/atomic"
)

// The descriptor reserve. Every session holds one descriptor, its backend
// socket, for its whole life, and every new source address and port opens
// a session: without a bound, a flood of datagrams from spoofed sources
// would take every descriptor of the process, and TCP accepts, the admin
// API and health checks would fail with EMFILE. So the sessions of all the
// process's listeners together hold at most
//
//	SessionDescriptors(limit) = limit − DescriptorReserve(limit)
//	DescriptorReserve(limit)  = max(64, limit/10)
//
// descriptors, where limit is the soft RLIMIT_NOFILE, read at each new
// session (a raised limit counts at once). With the limit at 1,024 sessions
// may hold 922 descriptors; at 65,536, 58,983; at 1,048,576, 943,719. A
// datagram that would open a session beyond that is dropped and counted as
// rejected (reason max_connections), like one refused for lack of
// descriptors (EMFILE); open sessions keep working, and new ones are
// accepted again as soon as some end (unreplied_timeout ends the sessions
// of spoofed sources).

// MinDescriptorReserve is the fewest descriptors UDP sessions leave to the
// rest of the process.
const MinDescriptorReserve = 64

// DescriptorReserve returns how many descriptors of a process whose
// RLIMIT_NOFILE is limit UDP sessions leave to everything else:
// max(MinDescriptorReserve, limit/10).
func DescriptorReserve(limit uint64) uint64 { return max(MinDescriptorReserve, limit/10) }

// SessionDescriptors returns how many descriptors the UDP sessions of all
// listeners together may hold under limit: limit − DescriptorReserve(limit).
func SessionDescriptors(limit uint64) uint64 {
	if r := DescriptorReserve(limit); limit > r {
		return limit - r
	}
	return 0
}

// heldFDs counts the descriptors held by the sessions of every listener
// of the process: descriptors are a process-wide resource.
var heldFDs atomic.Int64

// takeFD counts the descriptor of a session about to open, and reports
// false, counting nothing, when that would exceed SessionDescriptors.
func takeFD() bool {
	limit, ok := fdLimit()
	if !ok {
		heldFDs.Add(1)
		return true
	}
	most := int64(min(SessionDescriptors(limit), math.MaxInt64))
	if heldFDs.Add(1) > most {
		heldFDs.Add(-1)
		return false
	}
	return true
}

// putFD gives back the descriptor of a session that ended or failed to
// open.
func putFD() { heldFDs.Add(-1) }
