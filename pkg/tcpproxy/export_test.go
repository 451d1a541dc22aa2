package tcpproxy

// OutBusy returns the busy counter of the backend-to-client direction:
// odd while it holds bytes (conn.go).
func OutBusy(h Conn) uint32 { return h.c.out.busy.Load() }
