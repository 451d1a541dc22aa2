package server

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/proxyheader"
)

// TestUDPSendsProxyV2: with proxy_protocol = "v2", every datagram reaches
// the backend behind a PROXY v2 header (DGRAM) naming the real client and
// the address it sent to, and the reply carries no header.
func TestUDPSendsProxyV2(t *testing.T) {
	be, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := be.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			reply := "no header"
			if hl, err := proxyheader.Length(buf[:n]); err == nil {
				if h, err := proxyheader.Parse(buf[:hl]); err == nil {
					reply = fmt.Sprintf("v%d udp=%v src=%s dst=%s payload=%s", h.Version, h.UDP, h.Source, h.Destination, buf[hl:n])
				}
			}
			be.WriteToUDPAddrPort([]byte(reply), from)
		}
	}()
	t.Cleanup(func() { be.Close(); wg.Wait() })

	h := startServer(t, udpListenerTOML("u", "p", "")+poolTOML("p", `proxy_protocol = "v2"`, be.LocalAddr().String()))
	c := udpClient(t)
	lb := h.udpAddr("u")
	for i, payload := range []string{"first", "second"} {
		got := string(udpExchange(c, lb, []byte(payload), 3*time.Second))
		want := fmt.Sprintf("v2 udp=true src=%s dst=%s payload=%s", c.LocalAddr(), lb, payload)
		if got != want {
			t.Fatalf("datagram %d: backend saw %q, want %q", i, got, want)
		}
	}
}

// TestUDPRejectsProxyV1: a v1 header cannot describe UDP.
func TestUDPRejectsProxyV1(t *testing.T) {
	_, err := config.Parse("t.toml", []byte(udpListenerTOML("u", "p", "")+poolTOML("p", `proxy_protocol = "v1"`, "127.0.0.1:53")))
	if err == nil || !strings.Contains(err.Error(), `pools.p.proxy_protocol: v1 cannot carry UDP`) {
		t.Fatalf("got %v", err)
	}
}
