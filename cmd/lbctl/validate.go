package main

import (
	"context"
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
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Host names are resolved as serve and reload will: a name that
			// does not resolve is a problem with its file:line, like the others.
			cfg, _, err := loadConfig(configPath, func(cfg *config.Config) error {
				_, err := config.ResolveBackends(cfg, func(ctx context.Context, host string) ([]netip.Addr, error) {
					return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
				})
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (%s, %s)\n", cfg.File,
				plural(len(cfg.Listeners), "listener"), plural(len(cfg.Pools), "pool"))
			return nil
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "config file (default: $LBCTL_CONFIG, ./lbctl.toml, /etc/lbctl/lbctl.toml)")
	return cmd
}
