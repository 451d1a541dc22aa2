package config

import (
	"fmt"
	"net/netip"
	"time"
)

// The [bgp] table: lbctl announces service addresses to routers.
//
//	[bgp]
//	asn = 65010
//	router_id = "10.0.0.21"
//	withdraw_delay = "2s"
//	  [[bgp.peers]]
//	  address = "10.0.0.1"
//	  asn = 65000
//	  [[bgp.announce]]
//	  prefix = "10.99.0.1/32"
//	  listeners = ["web"]

// Defaults of the [bgp] table.
const (
	DefaultWithdrawDelay = 2 * time.Second
	DefaultBGPPort       = 179
)

// BGP is the [bgp] table.
type BGP struct {
	ASN      uint32     // 1..4294967295
	RouterID netip.Addr // a non-zero IPv4 address
	// WithdrawDelay is how long lbctl waits at SIGTERM between withdrawing
	// every prefix and closing its listeners, so that routers stop sending
	// new flows first. Default 2s.
	WithdrawDelay time.Duration
	Peers         []BGPPeer  // at least one, addresses unique, in file order
	Announce      []Announce // prefixes unique, in file order
}

// BGPPeer is one [[bgp.peers]] entry: a router lbctl connects to.
type BGPPeer struct {
	Address netip.Addr
	ASN     uint32
	Port    int // 1-65535, default 179
}

// Announce is one [[bgp.announce]] entry.
type Announce struct {
	Prefix netip.Prefix // as written (host bits zero), IPv4 or IPv6
	// Listeners are names of Config.Listeners: the prefix is announced
	// while one of their pools has an eligible backend. At least one.
	Listeners []string
}

// bgp decodes the [bgp] table; listeners are the names of the configured
// listeners.
func (d *decoder) bgp(t *table, listeners map[string]bool) *BGP {
	b := &BGP{WithdrawDelay: DefaultWithdrawDelay}
	if v, ok := t.asn("asn"); ok {
		b.ASN = v
	} else if !t.has("asn") {
		t.errf("asn", "required: lbctl's own AS number (1-4294967295)")
	}
	if s, ok := t.str("router_id"); ok {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() || a.IsUnspecified() {
			t.errf("router_id", "must be a non-zero IPv4 address such as \"10.0.0.21\", got %q", s)
		} else {
			b.RouterID = a
		}
	} else if !t.has("router_id") {
		t.errf("router_id", "required: an IPv4 address of this instance, unique among the routers' peers")
	}
	if v, ok := t.duration("withdraw_delay", false); ok {
		b.WithdrawDelay = v
	}

	peers, _ := t.tables("peers")
	if len(peers) == 0 && (!t.has("peers") || lenArray(t.m["peers"]) == 0) {
		t.errf("peers", "at least one [[bgp.peers]] is required: the routers to announce to")
	}
	seenPeer := map[netip.Addr]*table{}
	for _, pt := range peers {
		p := BGPPeer{Port: DefaultBGPPort}
		if s, ok := pt.str("address"); ok {
			a, err := netip.ParseAddr(s)
			switch {
			case err != nil || a.Zone() != "" || a.IsUnspecified():
				pt.errf("address", "must be the router's IP address, got %q", s)
			case seenPeer[a.Unmap()] != nil:
				first := seenPeer[a.Unmap()]
				pt.errf("address", "duplicate peer %q (first at %s, line %d)", s, first.path, first.keyLine("address"))
			default:
				p.Address = a.Unmap()
				seenPeer[p.Address] = pt
			}
		} else if !pt.has("address") {
			pt.errf("address", "required: the router's IP address")
		}
		if v, ok := pt.asn("asn"); ok {
			p.ASN = v
		} else if !pt.has("asn") {
			pt.errf("asn", "required: the router's AS number (1-4294967295)")
		}
		if v, ok := pt.integer("port", 1); ok {
			if v > 65535 {
				pt.errf("port", "must be at most 65535, got %d", v)
			}
			p.Port = v
		}
		pt.finish()
		b.Peers = append(b.Peers, p)
	}

	announce, _ := t.tables("announce")
	seenPrefix := map[netip.Prefix]*table{}
	for _, at := range announce {
		var a Announce
		if s, ok := at.str("prefix"); ok {
			p, err := netip.ParsePrefix(s)
			switch {
			case err != nil || p.Addr().Zone() != "":
				at.errf("prefix", "must be a CIDR prefix such as \"10.99.0.1/32\", got %q", s)
			case p.Masked() != p:
				at.errf("prefix", "%q has host bits set (the network is %s)", s, p.Masked())
			case seenPrefix[p] != nil:
				first := seenPrefix[p]
				at.errf("prefix", "duplicate prefix %q (first at %s, line %d)", s, first.path, first.keyLine("prefix"))
			default:
				a.Prefix = p
				seenPrefix[p] = at
			}
		} else if !at.has("prefix") {
			at.errf("prefix", "required: the service address to announce, such as \"10.99.0.1/32\"")
		}
		if items, ok := at.array("listeners"); ok {
			if len(items) == 0 {
				at.errf("listeners", "must name at least one listener: the prefix is announced while one of them has an eligible backend")
			}
			for _, it := range items {
				name, isString := it.v.(string)
				switch {
				case !isString:
					d.add(it.path, it.line, "expected a listener name, got %s", tomlType(it.v))
				case !listeners[name]:
					d.add(it.path, it.line, "unknown listener %q", name)
				default:
					a.Listeners = append(a.Listeners, name)
				}
			}
		} else if !at.has("listeners") {
			at.errf("listeners", "required: the listeners whose backends decide whether the prefix is announced")
		}
		at.finish()
		b.Announce = append(b.Announce, a)
	}
	t.finish()
	return b
}

// asn returns the AS number at key: an integer from 1 to 4294967295.
func (t *table) asn(key string) (uint32, bool) {
	v, ok := t.get(key)
	if !ok {
		return 0, false
	}
	n, isInt := v.(int64)
	if !isInt || n < 1 || n > 1<<32-1 {
		t.errf(key, "must be an AS number from 1 to 4294967295, got %s", tomlValue(v))
		return 0, false
	}
	return uint32(n), true
}

// tomlValue formats a decoded value for messages.
func tomlValue(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("%q", x)
	case int64, float64, bool:
		return fmt.Sprint(x)
	}
	return "a " + tomlType(v)
}
