package main

// complete.go: shell completion of pool names and backend addresses, asked
// of the running lbctl. `lbctl backend drain <TAB>` lists the pools, `lbctl
// backend drain web <TAB>` that pool's backends, through the same client
// (flags, config, token) the command itself would use. The shells call
// `lbctl __complete ...` (cobra) from the scripts `make install` installs.

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/lbctl/lbctl/pkg/server"
	"github.com/spf13/cobra"
)

// completionTimeout bounds the status request behind one completion: a
// shell waits for it.
const completionTimeout = 3 * time.Second

// completeBackendArgs completes the first n arguments of a backend command:
// POOL, then (n = 2) ADDRESS among that pool's backends. Later arguments,
// and every argument when the running lbctl cannot be asked, get no
// completion (and no file names).
func completeBackendArgs(f *clientFlags, n int) cobra.CompletionFunc {
	return func(_ *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		const none = cobra.ShellCompDirectiveNoFileComp
		if len(args) >= n {
			return nil, none
		}
		st, err := completionStatus(f)
		if err != nil {
			cobra.CompDebugln("lbctl: no completion: "+err.Error(), false)
			return nil, none
		}
		var out []cobra.Completion
		for _, p := range st.Pools {
			if len(args) == 0 {
				if strings.HasPrefix(p.Name, toComplete) {
					out = append(out, cobra.CompletionWithDesc(p.Name, fmt.Sprintf("%s, %s", p.Algorithm, plural(len(p.Backends), "backend"))))
				}
				continue
			}
			if p.Name != args[0] {
				continue
			}
			for _, b := range p.Backends {
				if strings.HasPrefix(b.Address, toComplete) {
					out = append(out, cobra.CompletionWithDesc(b.Address, fmt.Sprintf("health %s, %s", b.Health, b.Admin)))
				}
			}
		}
		sort.Strings(out)
		return out, none
	}
}

// completionStatus asks the running lbctl for its status, as f's command
// would, within completionTimeout.
func completionStatus(f *clientFlags) (server.Status, error) {
	var st server.Status
	c, err := f.client()
	if err != nil {
		return st, err
	}
	c.http.Timeout = completionTimeout
	err = c.do(http.MethodGet, "/api/v1/status", &st)
	return st, err
}

// completeConfigFlags makes every --config flag below root complete TOML
// files only.
func completeConfigFlags(root *cobra.Command) {
	walk(root, func(c *cobra.Command) {
		if c.Flags().Lookup("config") != nil {
			c.RegisterFlagCompletionFunc("config", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
				return []cobra.Completion{"toml"}, cobra.ShellCompDirectiveFilterFileExt
			})
		}
	})
}
