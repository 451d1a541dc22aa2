package main

// backend.go: `lbctl backend ...`, the run-time changes to a pool's
// backends through the admin API: admin states (drain, enable, disable),
// backends added and removed, weight overrides and kills. Each prints one
// line saying what changed; failures exit 1, usage errors 2.

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/lbctl/lbctl/pkg/server"
	"github.com/spf13/cobra"
)

// drainPoll is how often `backend drain --wait` asks for the status.
var drainPoll = 500 * time.Millisecond

func newBackendCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backend add|remove|weight|kill|drain|enable|disable POOL ADDRESS",
		Short: "Change a pool's backends at run time",
		// Reached only without a known action: a usage error (exit 2).
		RunE: func(cmd *cobra.Command, args []string) error {
			return withCode(exitUsage, fmt.Errorf("missing or unknown action %q: want add, remove, weight, kill, drain, enable or disable\n%s",
				strings.Join(args, " "), cmd.UsageString()))
		},
	}
	cmd.AddCommand(
		newBackendAddCmd(), newBackendRemoveCmd(), newBackendWeightCmd(), newBackendKillCmd(),
		newBackendDrainCmd(),
		newBackendAdminCmd("enable", "Let a backend take new connections again"),
		newBackendAdminCmd("disable", "Take a backend out of service (no new connections)"),
	)
	return cmd
}

// backendPath is the API path of backend address in pool, with suffix.
func backendPath(pool, address, suffix string) string {
	return "/api/v1/pools/" + url.PathEscape(pool) + "/backends/" + url.PathEscape(address) + suffix
}

// backendCmd is a command on one backend, POOL ADDRESS plus extra
// arguments: do gets the admin API client.
func backendCmd(use, short string, args cobra.PositionalArgs, f *clientFlags, do func(cmd *cobra.Command, c *adminClient, args []string) error) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			return do(cmd, c, args)
		},
		// POOL and ADDRESS complete from the running lbctl.
		ValidArgsFunction: completeBackendArgs(f, 2),
	}
	f.register(cmd)
	return cmd
}

func newBackendAdminCmd(action, short string) *cobra.Command {
	var f clientFlags
	return backendCmd(action+" POOL ADDRESS", short, cobra.ExactArgs(2), &f,
		func(cmd *cobra.Command, c *adminClient, args []string) error {
			var b server.BackendStatus
			if err := c.do(http.MethodPost, backendPath(args[0], args[1], "/"+action), &b); err != nil {
				return withCode(exitFailure, err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), backendMessage(args[0], b))
			return nil
		})
}

func newBackendDrainCmd() *cobra.Command {
	var (
		f       clientFlags
		wait    bool
		timeout time.Duration
	)
	cmd := backendCmd("drain POOL ADDRESS [--wait [--timeout 5m]]",
		"Stop new connections to a backend; established ones continue", cobra.ExactArgs(2), &f,
		func(cmd *cobra.Command, c *adminClient, args []string) error {
			var b server.BackendStatus
			if err := c.do(http.MethodPost, backendPath(args[0], args[1], "/drain"), &b); err != nil {
				return withCode(exitFailure, err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), backendMessage(args[0], b))
			if !wait {
				return nil
			}
			return waitDrained(cmd, c, args[0], b.Address, b.Active, timeout)
		})
	cmd.PreRunE = func(cmd *cobra.Command, _ []string) error {
		if cmd.Flags().Changed("timeout") && !wait {
			return withCode(exitUsage, errors.New("--timeout needs --wait"))
		}
		if timeout <= 0 {
			return withCode(exitUsage, fmt.Errorf("--timeout %v: want a positive duration", timeout))
		}
		return nil
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "return once the backend has no active connection (exit 1 at --timeout)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long --wait waits")
	return cmd
}

// waitDrained polls the status until backend address of pool has no active
// connection (or has left the pool), or timeout passes.
func waitDrained(cmd *cobra.Command, c *adminClient, pool, address string, active int64, timeout time.Duration) error {
	start := time.Now()
	deadline := start.Add(timeout)
	for active > 0 {
		left := time.Until(deadline)
		if left <= 0 {
			return withCode(exitFailure, fmt.Errorf("pool %s backend %s: %s still active after %v",
				pool, address, plural(int(active), "connection"), timeout))
		}
		time.Sleep(min(drainPoll, left))
		var st server.Status
		if err := c.do(http.MethodGet, "/api/v1/status", &st); err != nil {
			return withCode(exitFailure, err)
		}
		active = activeOf(st, pool, address)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "pool %s backend %s: drained, no active connection (waited %v)\n",
		pool, address, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// activeOf is the active connections of backend address in pool; a backend
// no longer there has none.
func activeOf(st server.Status, pool, address string) int64 {
	for _, p := range st.Pools {
		if p.Name != pool {
			continue
		}
		for _, b := range p.Backends {
			if b.Address == address {
				return b.Active
			}
		}
	}
	return 0
}

func newBackendAddCmd() *cobra.Command {
	var (
		f      clientFlags
		weight int
		backup bool
	)
	cmd := backendCmd("add POOL ADDRESS [--weight N] [--backup]",
		"Add a backend (IP:port) to a pool; it stays until removed, across reloads", cobra.ExactArgs(2), &f,
		func(cmd *cobra.Command, c *adminClient, args []string) error {
			body := map[string]any{"address": args[1], "weight": weight, "backup": backup}
			var b server.BackendStatus
			if err := c.send(http.MethodPost, "/api/v1/pools/"+url.PathEscape(args[0])+"/backends", body, &b); err != nil {
				return withCode(exitFailure, err)
			}
			role := ""
			if b.Backup {
				role = ", backup"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pool %s backend %s: added (weight %d%s, health %s)\n", args[0], b.Address, b.Weight, role, b.Health)
			return nil
		})
	cmd.ValidArgsFunction = completeBackendArgs(&f, 1) // the pool; the address is new
	cmd.Flags().IntVar(&weight, "weight", 1, "the backend's weight, 0..1000000")
	cmd.Flags().BoolVar(&backup, "backup", false, "a backup: takes connections only while no primary is eligible")
	return cmd
}

func newBackendRemoveCmd() *cobra.Command {
	var f clientFlags
	return backendCmd("remove POOL ADDRESS", "Remove a backend added with `backend add` (it drains as by drain_timeout)",
		cobra.ExactArgs(2), &f,
		func(cmd *cobra.Command, c *adminClient, args []string) error {
			var b server.BackendStatus
			if err := c.do(http.MethodDelete, backendPath(args[0], args[1], ""), &b); err != nil {
				return withCode(exitFailure, err)
			}
			msg := fmt.Sprintf("pool %s backend %s: removed, takes no new connections", args[0], b.Address)
			if b.Active > 0 {
				msg += "; " + establishedContinue(b.Active) + " up to the pool's drain_timeout"
			}
			fmt.Fprintln(cmd.OutOrStdout(), msg)
			return nil
		})
}

func newBackendWeightCmd() *cobra.Command {
	var (
		f     clientFlags
		reset bool
	)
	// POOL ADDRESS N, or POOL ADDRESS --reset.
	args := func(cmd *cobra.Command, args []string) error {
		if reset {
			if len(args) != 2 {
				return fmt.Errorf("with --reset, accepts 2 arg(s) (POOL ADDRESS), received %d", len(args))
			}
			return nil
		}
		if len(args) != 3 {
			return fmt.Errorf("accepts 3 arg(s) (POOL ADDRESS WEIGHT, or POOL ADDRESS --reset), received %d", len(args))
		}
		if _, err := strconv.Atoi(args[2]); err != nil {
			return fmt.Errorf("weight %q is not a whole number", args[2])
		}
		return nil
	}
	cmd := backendCmd("weight POOL ADDRESS WEIGHT|--reset",
		"Override a backend's weight (kept across reloads and refreshes), or --reset to the source's", args, &f,
		func(cmd *cobra.Command, c *adminClient, args []string) error {
			var weight *int
			if !reset {
				n, _ := strconv.Atoi(args[2])
				weight = &n
			}
			var b server.BackendStatus
			if err := c.send(http.MethodPatch, backendPath(args[0], args[1], ""), map[string]*int{"weight": weight}, &b); err != nil {
				return withCode(exitFailure, err)
			}
			how := "override"
			if reset {
				how = "override removed"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pool %s backend %s: weight %d (%s)\n", args[0], b.Address, b.Weight, how)
			return nil
		})
	cmd.Flags().BoolVar(&reset, "reset", false, "remove the override: back to the weight its source gives")
	return cmd
}

func newBackendKillCmd() *cobra.Command {
	var f clientFlags
	return backendCmd("kill POOL ADDRESS", "Reset a backend's established connections and end its UDP sessions",
		cobra.ExactArgs(2), &f,
		func(cmd *cobra.Command, c *adminClient, args []string) error {
			var out struct {
				Killed int64 `json:"killed"`
			}
			if err := c.do(http.MethodPost, backendPath(args[0], args[1], "/kill"), &out); err != nil {
				return withCode(exitFailure, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pool %s backend %s: killed %d (established connections and UDP sessions reset)\n",
				args[0], args[1], out.Killed)
			return nil
		})
}

// backendMessage says what a backend's new admin state means.
func backendMessage(pool string, b server.BackendStatus) string {
	msg := fmt.Sprintf("pool %s backend %s: %s (health %s)", pool, b.Address, b.Admin, b.Health)
	if b.Admin != "enabled" {
		msg += ", takes no new connections; " + establishedContinue(b.Active)
	}
	return msg
}

// establishedContinue says that n established connections go on.
func establishedContinue(n int64) string {
	if n == 1 {
		return "1 established connection continues"
	}
	return fmt.Sprintf("%d established connections continue", n)
}
