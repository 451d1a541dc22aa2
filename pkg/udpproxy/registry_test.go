package udpproxy_test

import (
	"net"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/udpproxy"
)

// TestRegistryKill: Kill ends every open session of the backend (access
// log end "killed"), leaves the sessions of other backends alone, and the
// next datagram of a killed client opens a new session.
func TestRegistryKill(t *testing.T) {
	a := lbtest.NewUDP(t, "a", lbtest.UDPTagged("a"))
	b := lbtest.NewUDP(t, "b", lbtest.UDPTagged("b"))
	r := newRig(t, rigOpts{}, a.Addr, b.Addr)
	regs := map[string]*udpproxy.Registry{}
	for be, tg := range r.targets {
		tg.Sessions = &udpproxy.Registry{}
		regs[be.Address()] = tg.Sessions
	}
	r.cur.Store(r.proxy("", nil)) // with the registries
	const n = 4                   // round-robin: two sessions on each
	clients := map[string][]int{}
	cs := make([]*udpClient, n)
	for i := range cs {
		cs[i] = &udpClient{c: client(t, "127.0.0.1")}
		reply, _ := r.exchange(cs[i].c, []byte("hello"))
		name, _ := tag(t, reply)
		cs[i].backend = name
		clients[name] = append(clients[name], i)
	}
	if len(clients["a"]) != 2 || len(clients["b"]) != 2 {
		t.Fatalf("sessions by backend %v, want two on each", clients)
	}
	if regs[a.Addr].Len() != 2 || regs[b.Addr].Len() != 2 {
		t.Fatalf("registries hold %d and %d, want 2 and 2", regs[a.Addr].Len(), regs[b.Addr].Len())
	}
	if got := regs[a.Addr].Kill(udpproxy.EndKilled); got != 2 {
		t.Fatalf("Kill = %d, want 2", got)
	}
	lbtest.Eventually(t, 5*time.Second, func() bool { return regs[a.Addr].Len() == 0 && r.sessions.Load() == 2 },
		"after the kill: registry %d, sessions %d", regs[a.Addr].Len(), r.sessions.Load())
	killed := 0
	for _, e := range r.accessLines() {
		if e.ContextMap()["end"] == "killed" {
			killed++
		}
	}
	if killed != 2 {
		t.Fatalf("%d access lines with end killed, want 2", killed)
	}
	if regs[b.Addr].Len() != 2 {
		t.Fatalf("b's sessions: %d, want 2 untouched", regs[b.Addr].Len())
	}
	// A killed client's next datagram opens a session afresh.
	r.exchange(cs[clients["a"][0]].c, []byte("again"))
	if r.sessions.Load() != 3 {
		t.Fatalf("%d sessions after a killed client came back, want 3", r.sessions.Load())
	}
}

type udpClient struct {
	c       *net.UDPConn
	backend string
}
