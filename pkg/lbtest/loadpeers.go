package lbtest

import "fmt"

// LoadPeers are the peers of a Load through lbctl, as the upgrade tests
// (cmd/lbctl) and lbsoak -upgrades set them up: two CheckPeers behind a
// TCP listener and two UDPEchoPeers behind a UDP one, in the lbctl
// configuration Listeners writes. Like the rest of the load, nothing here
// needs a *testing.T.
type LoadPeers struct {
	TCP []*CheckPeer   // lbctl's pool "peers"
	UDP []*UDPEchoPeer // lbctl's pool "udp"
}

// NewLoadPeers starts the four peers on 127.0.0.1 with ephemeral ports.
// The caller closes them with Close.
func NewLoadPeers(pat *Pattern) (*LoadPeers, error) {
	p := &LoadPeers{}
	for range 2 {
		c, err := NewCheckPeer("127.0.0.1:0", pat)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.TCP = append(p.TCP, c)
	}
	for range 2 {
		u, err := NewUDPEchoPeer("127.0.0.1:0")
		if err != nil {
			p.Close()
			return nil, err
		}
		p.UDP = append(p.UDP, u)
	}
	return p, nil
}

// Close stops every peer.
func (p *LoadPeers) Close() {
	for _, u := range p.UDP {
		u.Close()
	}
	for _, c := range p.TCP {
		c.Close()
	}
}

// Listeners is the part of lbctl's configuration that puts the peers
// behind it: the TCP listener "load" on tcpAddr in front of the pool
// "peers" (no health checks), and the UDP listener "dgram" on udpAddr in
// front of the pool "udp", with the idle timeouts given (TOML durations,
// such as "2m").
func (p *LoadPeers) Listeners(tcpAddr, udpAddr, tcpIdle, udpIdle string) string {
	return fmt.Sprintf(`[listeners.load]
bind = %q
pool = "peers"
idle_timeout = %q
[pools.peers]
  [pools.peers.health]
  check = "none"
  [[pools.peers.backends]]
  address = %q
  [[pools.peers.backends]]
  address = %q
[listeners.dgram]
protocol = "udp"
bind = %q
pool = "udp"
idle_timeout = %q
[pools.udp]
  [[pools.udp.backends]]
  address = %q
  [[pools.udp.backends]]
  address = %q
`, tcpAddr, tcpIdle, p.TCP[0].Addr, p.TCP[1].Addr, udpAddr, udpIdle, p.UDP[0].Addr, p.UDP[1].Addr)
}

// Report waits for ld to end and returns its report with what the TCP
// peers saw of the client-to-server halves added.
func (p *LoadPeers) Report(ld *Load) *Report {
	r := ld.Wait()
	for _, c := range p.TCP {
		r.Add(c.Report())
	}
	return r
}
