package server

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/lbctl/lbctl/pkg/lbtest"
	"github.com/lbctl/lbctl/pkg/proxyheader"
)

// TestUDPSendsProxyV2: with proxy_protocol = "v2", every datagram reaches
// the backend behind a PROXY v2 header (DGRAM) naming the real client and
// the address it sent to, and the reply carries no header.
func TestUDPSendsProxyV2(t *testing.T) {
	// The backend answers with what the PROXY header in front of the
	// datagram says.
	be := lbtest.NewUDP(t, "be", func(req []byte) [][]byte {
		reply := "no header"
		if hl, err := proxyheader.Length(req); err == nil {
			if h, err := proxyheader.Parse(req[:hl]); err == nil {
				reply = fmt.Sprintf("v%d udp=%v src=%s dst=%s payload=%s", h.Version, h.UDP, h.Source, h.Destination, req[hl:])
			}
		}
		return [][]byte{[]byte(reply)}
	})

	h := startServer(t, udpListenerTOML("u", "p", "")+poolTOML("p", `proxy_protocol = "v2"`, be.Addr))
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
