package tcpproxy

// Bursts returns how many bulk bursts (splices) each direction of the
// connection made; read it once the connection has ended.
func Bursts(h Conn) (in, out int) { return h.c.in.bursts, h.c.out.bursts }
