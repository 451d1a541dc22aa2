package bgp

import (
	"testing"

	"go.uber.org/goleak"
)

// GoBGP's main loop (BgpServer.Serve) never returns: one per Speaker is
// expected to remain (see the package comment).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/osrg/gobgp/v3/pkg/server.(*BgpServer).Serve"))
}
