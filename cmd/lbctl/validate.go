package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newValidateCmd() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Load and check a config file, printing every problem found",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := loadConfig(configPath)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (%d listeners, %d pools)\n", cfg.File, len(cfg.Listeners), len(cfg.Pools))
			return nil
		},
	}
	cmd.Flags().StringVarP(&configPath, "config", "c", "", "config file (default: $LBCTL_CONFIG, ./lbctl.toml, /etc/lbctl/lbctl.toml)")
	return cmd
}
