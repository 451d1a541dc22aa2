package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

const bgpListeners = `
[listeners.web]
bind = "127.0.0.1:8080"
pool = "web"
[listeners.dns]
protocol = "udp"
bind = "127.0.0.1:5353"
pool = "web"
[[pools.web.backends]]
address = "127.0.0.1:9001"
`

// The [bgp] table as the SPEC shows it, with two peers and two prefixes:
// values, defaults and the file order.
func TestBGPValues(t *testing.T) {
	cfg := mustParse(t, bgpListeners+`
[bgp]
asn = 4200000001
router_id = "10.0.0.21"
  [[bgp.peers]]
  address = "10.0.0.1"
  asn = 65000
  [[bgp.peers]]
  address = "fd00::1"
  asn = 65001
  port = 1179
  [[bgp.announce]]
  prefix = "10.99.0.1/32"
  listeners = ["web", "dns"]
  [[bgp.announce]]
  prefix = "fd99::/64"
  listeners = ["dns"]
`)
	want := &BGP{
		ASN: 4200000001, RouterID: netip.MustParseAddr("10.0.0.21"), WithdrawDelay: 2 * time.Second,
		Peers: []BGPPeer{
			{Address: netip.MustParseAddr("10.0.0.1"), ASN: 65000, Port: 179},
			{Address: netip.MustParseAddr("fd00::1"), ASN: 65001, Port: 1179},
		},
		Announce: []Announce{
			{Prefix: netip.MustParsePrefix("10.99.0.1/32"), Listeners: []string{"web", "dns"}},
			{Prefix: netip.MustParsePrefix("fd99::/64"), Listeners: []string{"dns"}},
		},
	}
	if !reflect.DeepEqual(cfg.BGP, want) {
		t.Fatalf("BGP = %+v\nwant %+v", cfg.BGP, want)
	}
	cfg = mustParse(t, bgpListeners+`
[bgp]
asn = 65010
router_id = "10.0.0.21"
withdraw_delay = "0s"
peers = [{ address = "10.0.0.1", asn = 65010 }]
`)
	if cfg.BGP.WithdrawDelay != 0 || len(cfg.BGP.Announce) != 0 || len(cfg.BGP.Peers) != 1 {
		t.Fatalf("BGP = %+v", cfg.BGP)
	}
	if cfg := mustParse(t, bgpListeners); cfg.BGP != nil {
		t.Fatalf("no [bgp] table: BGP = %+v, want nil", cfg.BGP)
	}
}

// Every mistake in [bgp] names its line and key.
func TestBGPErrors(t *testing.T) {
	// bgpListeners is 9 lines: [bgp] is line 10.
	tests := []struct {
		name, src, want string
	}{
		{"bad asn", `
[bgp]
asn = 0
router_id = "10.0.0.21"
peers = [{ address = "10.0.0.1", asn = 4294967296 }]
`, `
t.toml:11: bgp.asn: must be an AS number from 1 to 4294967295, got 0
t.toml:13: bgp.peers[0].asn: must be an AS number from 1 to 4294967295, got 4294967296
`},
		{"asn not an integer", `
[bgp]
asn = "65010"
router_id = "10.0.0.21"
peers = [{ address = "10.0.0.1", asn = 65000 }]
`, `
t.toml:11: bgp.asn: must be an AS number from 1 to 4294967295, got "65010"
`},
		{"bad router_id", `
[bgp]
asn = 65010
router_id = "fd00::21"
peers = [{ address = "10.0.0.1", asn = 65000 }]
`, `
t.toml:12: bgp.router_id: must be a non-zero IPv4 address such as "10.0.0.21", got "fd00::21"
`},
		{"missing keys and no peers", `
[bgp]
withdraw_delay = "soon"
`, `
t.toml:10: bgp.asn: required: lbctl's own AS number (1-4294967295)
t.toml:10: bgp.router_id: required: an IPv4 address of this instance, unique among the routers' peers
t.toml:10: bgp.peers: at least one [[bgp.peers]] is required: the routers to announce to
t.toml:11: bgp.withdraw_delay: invalid duration "soon"
`},
		{"empty peers", `
[bgp]
asn = 65010
router_id = "10.0.0.21"
peers = []
`, `
t.toml:13: bgp.peers: at least one [[bgp.peers]] is required: the routers to announce to
`},
		{"bad and duplicate peers", `
[bgp]
asn = 65010
router_id = "10.0.0.21"
  [[bgp.peers]]
  address = "10.0.0.1"
  asn = 65000
  [[bgp.peers]]
  address = "10.0.0.1"
  asn = 65001
  [[bgp.peers]]
  address = "router.example"
  asn = 65000
  port = 70000
  [[bgp.peers]]
  asn = 65000
  color = "blue"
`, `
t.toml:17: bgp.peers[1].address: duplicate peer "10.0.0.1" (first at bgp.peers[0], line 14)
t.toml:20: bgp.peers[2].address: must be the router's IP address, got "router.example"
t.toml:22: bgp.peers[2].port: must be at most 65535, got 70000
t.toml:23: bgp.peers[3].address: required: the router's IP address
t.toml:25: bgp.peers[3].color: unknown key
`},
		{"bad, duplicate prefix and unknown listener", `
[bgp]
asn = 65010
router_id = "10.0.0.21"
peers = [{ address = "10.0.0.1", asn = 65000 }]
  [[bgp.announce]]
  prefix = "10.99.0.1/32"
  listeners = ["web"]
  [[bgp.announce]]
  prefix = "10.99.0.1/32"
  listeners = ["web", "nope"]
  [[bgp.announce]]
  prefix = "10.99.0.1/24"
  listeners = []
  [[bgp.announce]]
  prefix = "10.99.0.1"
  [[bgp.announce]]
  listeners = ["web", 3]
`, `
t.toml:18: bgp.announce[1].prefix: duplicate prefix "10.99.0.1/32" (first at bgp.announce[0], line 15)
t.toml:19: bgp.announce[1].listeners[1]: unknown listener "nope"
t.toml:21: bgp.announce[2].prefix: "10.99.0.1/24" has host bits set (the network is 10.99.0.0/24)
t.toml:22: bgp.announce[2].listeners: must name at least one listener: the prefix is announced while one of them has an eligible backend
t.toml:23: bgp.announce[3].listeners: required: the listeners whose backends decide whether the prefix is announced
t.toml:24: bgp.announce[3].prefix: must be a CIDR prefix such as "10.99.0.1/32", got "10.99.0.1"
t.toml:25: bgp.announce[4].prefix: required: the service address to announce, such as "10.99.0.1/32"
t.toml:26: bgp.announce[4].listeners[1]: expected a listener name, got integer
`},
		{"unknown key", `
[bgp]
asn = 65010
router_id = "10.0.0.21"
peers = [{ address = "10.0.0.1", asn = 65000 }]
withdraw_dealy = "1s"
`, `
t.toml:14: bgp.withdraw_dealy: unknown key (did you mean "withdraw_delay"?)
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErrors(t, bgpListeners+strings.TrimPrefix(tt.src, "\n"), tt.want)
		})
	}
}
