package tcpproxy

// OutBusy returns the busy counter of the backend-to-client direction:
// odd while it holds bytes (conn.go).
func OutBusy(h Conn) uint32 { return h.c.out.busy.Load() }

// Bursts returns how many bulk bursts (splices) each direction of the
// connection made; read it once the connection has ended.
func Bursts(h Conn) (in, out int) { return h.c.in.bursts, h.c.out.bursts }

// InBusy is OutBusy for the client-to-backend direction.
func InBusy(h Conn) uint32 { return h.c.in.busy.Load() }

// InLoop reports whether an event loop serves the connection
// (engine_linux.go).
func InLoop(h Conn) bool { return h.c.inLoop.Load() }

// KeepBulkInLoop keeps bulk transfers in the event loops (no splice) until
// the test ends, so that the loops' handling of stalled writers can be
// driven with any amount of data.
func KeepBulkInLoop(tb interface{ Cleanup(func()) }) {
	loopKeepsBulk.Store(true)
	tb.Cleanup(func() { loopKeepsBulk.Store(false) })
}
