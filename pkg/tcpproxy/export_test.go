package tcpproxy

// OutBusy returns the busy counter of the backend-to-client direction:
// odd while it holds bytes (conn.go).
func OutBusy(h Conn) uint32 { return h.c.out.busy.Load() }

// Bursts returns how many bulk bursts (splices) each direction of the
// connection made; read it once the connection has ended.
func Bursts(h Conn) (in, out int) { return h.c.in.bursts, h.c.out.bursts }
