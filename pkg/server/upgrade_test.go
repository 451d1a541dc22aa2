package server

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/lbctl/lbctl/balancer"
	"github.com/lbctl/lbctl/pkg/lbtest"
)

// fileSocket serves a received listening socket as an InheritedSocket, as
// the new process of an upgrade does.
type fileSocket struct{ f *os.File }

func (s fileSocket) File() (*os.File, error) {
	// A duplicate, as net.TCPListener.File gives.
	ln, err := net.FileListener(s.f)
	if err == nil {
		defer ln.Close()
		return ln.(*net.TCPListener).File()
	}
	pc, err := net.FilePacketConn(s.f)
	if err != nil {
		return nil, err
	}
	defer pc.Close()
	return pc.(*net.UDPConn).File()
}

// inheritFrom turns ListenerFiles into Options.Inherited.
func inheritFrom(t *testing.T, files []ListenerFile) map[SocketKey]InheritedSocket {
	t.Helper()
	out := map[SocketKey]InheritedSocket{}
	for _, lf := range files {
		out[lf.Key] = fileSocket{lf.File}
		t.Cleanup(func() { lf.File.Close() })
	}
	return out
}

// nameVia dials addr and returns the name the backend behind it answers.
func nameVia(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read via %s: %v", addr, err)
	}
	return string(b)
}

// TestUpgradeListenerHandover: a second server takes the first one's
// listening sockets (TCP and UDP) through ListenerFiles, at the same
// addresses, while the first still holds them (its own bind would fail);
// once the first stops accepting, every connection goes to the second;
// the first accepts again after ResumeAccepting.
func TestUpgradeListenerHandover(t *testing.T) {
	a := lbtest.NewTCP(t, lbtest.Named("old"))
	b := lbtest.NewTCP(t, lbtest.Named("new"))
	ub := lbtest.NewUDP(t, "u", lbtest.UDPEcho)
	conf := func(tcp, udp, be string) string {
		return fmt.Sprintf("[listeners.web]\nbind = %q\npool = \"p\"\n", tcp) +
			fmt.Sprintf("[listeners.dns]\nbind = %q\nprotocol = \"udp\"\npool = \"u\"\n", udp) +
			poolTOML("p", "", be) + noHealth + poolTOML("u", "", ub.Addr) + "[pools.u.health]\ncheck = \"none\"\n"
	}
	old := startServer(t, conf("127.0.0.1:0", "127.0.0.1:0", a.Addr))
	web, dns := old.addr("web"), old.addr("dns")
	if got := nameVia(t, web); got != "old" {
		t.Fatalf("before: %q", got)
	}
	files, err := old.srv.ListenerFiles()
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || files[0].Key.String() != "tcp|"+web || files[1].Key.String() != "udp|"+dns {
		t.Fatalf("files: %+v", files)
	}
	nw := startWith(t, conf(web, dns, b.Addr), nil, Options{Inherited: inheritFrom(t, files)})
	if got := nw.addr("web"); got != web {
		t.Fatalf("new process listens on %s, want %s", got, web)
	}
	if err := old.srv.StopAccepting(); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if got := nameVia(t, web); got != "new" {
			t.Fatalf("connection %d after StopAccepting answered by %q", i, got)
		}
	}
	// The UDP socket is the same one in both.
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	if got := lbtest.UDPExchange(t, uc, mustAddrPort(t, dns), []byte("ping"), 5*time.Second); string(got) != "ping" {
		t.Fatalf("udp answer %q", got)
	}

	// The new one goes away (a failed handover): the old one accepts again
	// on its socket, which the new one's close did not close.
	ctx, cancel := contextWithTimeout(time.Second)
	nw.srv.Shutdown(ctx)
	cancel()
	old.srv.ResumeAccepting()
	for i := range 5 {
		if got := nameVia(t, web); got != "old" {
			t.Fatalf("connection %d after ResumeAccepting answered by %q", i, got)
		}
	}
}

func mustAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// TestUpgradeHandoverState: what an operator changed at run time (admin
// state, weight override, API backend), and a backend the old process saw
// down, are the same in a server started with its HandoverState; the
// backend that was down starts down there, before its own first check has
// completed, while another one not seen down starts up.
func TestUpgradeHandoverState(t *testing.T) {
	silentA := lbtest.NewTCP(t, lbtest.Silent) // its checks time out
	silentB := lbtest.NewTCP(t, lbtest.Silent)
	upA, upB := lbtest.NewTCP(t, lbtest.Echo), lbtest.NewTCP(t, lbtest.Echo)
	added := "127.0.0.1:7099"
	health := func(timeout string) string {
		return "[pools.p.health]\ncheck = \"send-expect\"\nsend = \"ping\"\nexpect = \"ping\"\ninterval = \"1h\"\ntimeout = \"" +
			timeout + "\"\nfall = 1\nrise = 1\n"
	}
	oldConf := listenerTOML("web", "p", "") + poolTOML("p", health("200ms"), upA.Addr, upB.Addr, silentA.Addr)
	old := startServer(t, oldConf)
	lbtest.Until(t, 10*time.Second, func() (bool, string) {
		st, _ := backendOf(old, "p", silentA.Addr)
		return st.Health == "down", "silent backend " + st.Health
	})
	if _, err := old.srv.SetBackendAdmin("p", upA.Addr, balancer.Disabled); err != nil {
		t.Fatal(err)
	}
	seven := 7
	if _, err := old.srv.SetWeightOverride("p", upB.Addr, &seven); err != nil {
		t.Fatal(err)
	}
	if _, err := old.srv.AddBackend("p", BackendSpec{Address: added, Weight: 3}); err != nil {
		t.Fatal(err)
	}
	state, err := old.srv.HandoverState()
	if err != nil {
		t.Fatal(err)
	}

	// The new one's checks take 5 s to time out: what it shows before is
	// what it was given.
	newConf := listenerTOML("web", "p", "") + poolTOML("p", health("5s"), upA.Addr, upB.Addr, silentA.Addr, silentB.Addr)
	nw := startWith(t, newConf, nil, Options{Handover: state})
	for _, c := range []struct {
		addr, health, admin string
		weight              int
		source              string
	}{
		{upA.Addr, "", "disabled", 1, "config"},
		{upB.Addr, "", "enabled", 7, "config"},
		{added, "", "enabled", 3, "api"},
		{silentA.Addr, "down", "enabled", 1, "config"},
		{silentB.Addr, "up", "enabled", 1, "config"}, // not seen down: up until checked
	} {
		st, ok := backendOf(nw, "p", c.addr)
		if !ok || st.Admin != c.admin || st.Weight != c.weight || st.Source != c.source || (c.health != "" && st.Health != c.health) {
			t.Errorf("%s in the new server: %+v (there: %v), want health %q admin %s weight %d source %s",
				c.addr, st, ok, c.health, c.admin, c.weight, c.source)
		}
	}
	if _, err := New(nil, Options{Log: old.srv.log, Metrics: old.m, Handover: []byte(`{"version":9}`)}); err == nil {
		t.Error("a handover state of another version was accepted")
	}
}
