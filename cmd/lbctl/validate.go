package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/spf13/cobra"
)

func newValidateCmd() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Load and check a config file, printing every problem found",
		Long: `Load and check a config file, printing every problem found.

Backend host names are resolved, as serve and reload do; discovery sources
are not contacted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := loadConfig(configPath)
			if err != nil {
				return err
			}
			// Host names are resolved as serve and reload will: a name that
			// does not resolve is a problem with its file:line, like the others.
			_, err = config.ResolveBackends(cfg, func(ctx context.Context, host string) ([]netip.Addr, error) {
				return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
			})
			if err != nil {
				var errs config.Errors
				errors.As(err, &errs)
				return withCode(exitUsage, fmt.Errorf("invalid configuration (%d problems):\n%w", len(errs), err))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (%d listeners, %d pools)\n", cfg.File, len(cfg.Listeners), len(cfg.Pools))
			return nil
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "config file (default: $LBCTL_CONFIG, ./lbctl.toml, /etc/lbctl/lbctl.toml)")
	return cmd
}
