// Command fakenew is a new lbctl for the failure tests of lbctl upgrade
// (cmd/lbctl/upgrade_test.go): it takes the handover channel, reads the
// listeners and the state, says "ready" and then dies, as a new binary
// that crashes in the middle of the handover would.
package main

import (
	"fmt"
	"os"
	"time"

	"github.com/lbctl/lbctl/pkg/upgrade"
)

func main() {
	c, err := upgrade.FromEnv()
	if err != nil || c == nil {
		fmt.Fprintln(os.Stderr, "fakenew: no upgrade channel:", err)
		os.Exit(3)
	}
	for {
		m, err := c.Recv(30 * time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fakenew:", err)
			os.Exit(3)
		}
		m.CloseFiles()
		if m.Kind == "state" {
			break
		}
	}
	if err := c.Send(upgrade.Message{Kind: "ready", Meta: []byte(`{"pid":0}`)}); err != nil {
		os.Exit(3)
	}
	os.Exit(4) // dies before it has taken anything over
}
