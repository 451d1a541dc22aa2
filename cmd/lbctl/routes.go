package main

import (
	"slices"
	"strings"

	"github.com/lbctl/lbctl/pkg/server"
)

// poolColumn is a listener's POOL in the status table: its pool, then the
// pools its routes (TLS server names) send to, in route order without
// repeats: "web", "fallback +routes api,shop", "routes api,shop" (a
// listener served by routes alone).
func poolColumn(l server.ListenerStatus) string {
	if len(l.Routes) == 0 {
		return l.Pool
	}
	var pools []string
	for _, r := range l.Routes {
		if !slices.Contains(pools, r.Pool) {
			pools = append(pools, r.Pool)
		}
	}
	s := "routes " + strings.Join(pools, ",")
	if l.Pool != "" {
		s = l.Pool + " +" + s
	}
	return s
}
