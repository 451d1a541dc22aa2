package server

import (
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/tlshello/tlshellotest"
)

// TestLoopListenerFollowsReload: a plain listener is accepted on by an
// event loop (tcpproxy.ListenInLoop); a reload that makes it read PROXY
// headers, on the same socket, hands its connections to the goroutine
// path, which reads the header first (the backend sees the payload alone);
// a reload that makes it route on the TLS server name keeps them in the
// loop, which reads the hello and writes it to the backend first; a
// reload back serves them as plain again.
func TestLoopListenerFollowsReload(t *testing.T) {
	be := lbtest.NewTCP(t, lbtest.Echo)
	addr := fmt.Sprintf("127.0.0.1:%d", lbtest.FreePort(t))
	conf := func(extra string) string {
		return "[listeners.l]\nbind = \"" + addr + "\"\npool = \"p\"\n" + extra + "\n" + poolTOML("p", noHealth, be.Addr)
	}
	h := startServer(t, conf(""))
	h.srv.mu.Lock()
	var l *listener
	for _, x := range h.srv.listeners {
		l = x
	}
	h.srv.mu.Unlock()
	if l.loop == nil && os.Getenv("LBCTL_TCP_ACCEPT") != "goroutines" && os.Getenv("LBCTL_TCP_DIAL") != "goroutines" &&
		os.Getenv("LBCTL_TCP_ENGINE") != "goroutines" && runtime.GOOS == "linux" {
		t.Fatal("a plain listener is not accepted on by an event loop")
	}
	roundTrip := func(header, payload string) {
		t.Helper()
		c := h.dial("l")
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		c.Write([]byte(header + payload))
		c.CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != payload {
			t.Fatalf("echoed %q, %v; want %q", got, err, payload)
		}
	}
	roundTrip("", "plain")
	reload := func(extra string) {
		t.Helper()
		cfg, err := config.Parse("test.toml", []byte(conf(extra)))
		if err != nil {
			t.Fatal(err)
		}
		if err := h.srv.Reload(cfg); err != nil {
			t.Fatalf("reload: %v", err)
		}
	}
	reload("accept_proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_protocol_timeout = \"10s\"")
	roundTrip("PROXY TCP4 192.0.2.7 127.0.0.1 1111 2222\r\n", "after the header")
	if st := l.state.Load(); st.loopAdmits() {
		t.Fatal("a listener that reads PROXY headers is served from the loop")
	}
	reload("tls_inspect_timeout = \"10s\"\n[[listeners.l.routes]]\nsni = [\"a.test\"]\npool = \"p\"")
	hello, err := tlshellotest.Hello(&tls.Config{ServerName: "a.test", InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	if st := l.state.Load(); l.loop != nil && !st.loopAdmits() {
		t.Fatal("a listener that routes on the server name is not served from the loop")
	}
	roundTrip("", string(hello)+"after the hello")
	reload("")
	roundTrip("", "plain again")
}
