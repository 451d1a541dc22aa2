package server

import (
	"net/netip"

	"github.com/lbctl/lbctl/pkg/config"
)

// admits reports whether the listener's access list (allow, deny) lets
// addr in: deny wins, an empty allow admits everyone, and an IPv4-mapped
// IPv6 address matches IPv4 rules (config.Match). It is check 2 of a
// listener's admission (admission.go).
func admits(lc *config.Listener, addr netip.Addr) bool {
	if config.Match(lc.Deny, addr) {
		return false
	}
	return len(lc.Allow) == 0 || config.Match(lc.Allow, addr)
}
