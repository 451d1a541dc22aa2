package lbtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"
)

// PingPong is one UDP client of a handover test: it sends numbered
// datagrams through a proxy one at a time, each answered by a backend that
// tags its replies "name|payload" (UDPTagged), and checks that every reply
// is its datagram's and that one backend answers them all (the session
// keeps its backend). It runs until After datagrams have been sent since
// Moved was closed.
type PingPong struct {
	Conn *net.UDPConn
	To   netip.AddrPort
	// ID names the client in its datagrams: "<ID>-<seq>".
	ID string
	// Wait is how long a reply may take; a later one counts as missing.
	Wait time.Duration
	// Started is called once Before datagrams have been sent (never if the
	// exchange fails earlier).
	Before  int
	Started func()
	// Moved is closed when the move is over; After more datagrams follow.
	Moved <-chan struct{}
	After int
}

// PingPongResult is what one PingPong saw.
type PingPongResult struct {
	Backend  string // the name the backend tagged its replies with
	Sent     int
	Answered int
	Missing  []int // the sequence numbers whose reply did not come within Wait
	Err      error // a send or read error, or a wrong reply: the exchange stopped there
}

// Run exchanges the datagrams on the calling goroutine and returns what it
// saw; it does not close Conn.
func (p PingPong) Run() PingPongResult {
	var r PingPongResult
	buf := make([]byte, 1500)
	left := -1 // datagrams still to send once the move is over
	for seq := 0; left != 0; seq++ {
		if seq == p.Before {
			p.Started()
		}
		if left < 0 {
			select {
			case <-p.Moved:
				left = p.After
			default:
			}
		} else {
			left--
		}
		msg := fmt.Appendf(nil, "%s-%d", p.ID, seq)
		if _, err := p.Conn.WriteToUDPAddrPort(msg, p.To); err != nil {
			r.Err = err
			return r
		}
		r.Sent++
		p.Conn.SetReadDeadline(time.Now().Add(p.Wait))
		n, _, err := p.Conn.ReadFromUDPAddrPort(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			r.Missing = append(r.Missing, seq)
			continue
		}
		if err != nil {
			r.Err = err
			return r
		}
		name, payload, _ := bytes.Cut(buf[:n], []byte("|"))
		if !bytes.Equal(payload, msg) {
			r.Err = fmt.Errorf("reply %q to %q", buf[:n], msg)
			return r
		}
		if r.Backend == "" {
			r.Backend = string(name)
		} else if r.Backend != string(name) {
			r.Err = fmt.Errorf("datagram %d answered by %s, the session's backend is %s", seq, name, r.Backend)
			return r
		}
		r.Answered++
	}
	return r
}
