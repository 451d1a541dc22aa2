package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/lbctl/lbctl/pkg/config"
	"github.com/spf13/cobra"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "lbctl",
		Short:         "A Layer-4 (TCP and UDP) load balancer",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Reached only without a command: a usage error (exit 2).
		RunE: func(cmd *cobra.Command, args []string) error {
			return withCode(exitUsage, fmt.Errorf("missing command\n%s", cmd.UsageString()))
		},
	}
	root.AddCommand(newServeCmd(), newValidateCmd(), newVersionCmd())
	root.AddCommand(newClientCmds()...)
	return root
}

// defaultConfigPaths are tried in order when --config is not given, after
// $LBCTL_CONFIG.
var defaultConfigPaths = []string{"./lbctl.toml", "/etc/lbctl/lbctl.toml"}

// findConfig returns the config file to use: the flag, else $LBCTL_CONFIG,
// else the first default path that exists.
func findConfig(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if env := os.Getenv("LBCTL_CONFIG"); env != "" {
		return env, nil
	}
	for _, p := range defaultConfigPaths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no config file: give --config, set LBCTL_CONFIG, or create one of %v", defaultConfigPaths)
}

// loadConfig finds and loads the config, mapping every failure to exit
// status 2.
func loadConfig(flag string) (*config.Config, string, error) {
	path, err := findConfig(flag)
	if err != nil {
		return nil, "", withCode(exitUsage, err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		var errs config.Errors
		if errors.As(err, &errs) {
			return nil, path, withCode(exitUsage, fmt.Errorf("invalid configuration (%d problems):\n%w", len(errs), err))
		}
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return nil, path, withCode(exitUsage, err)
		}
		return nil, path, withCode(exitUsage, err)
	}
	return cfg, path, nil
}
