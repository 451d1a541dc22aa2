package main

import (
	"errors"
	"fmt"
	"os"
	"sort"

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
	// --version prints what `lbctl version` prints.
	root.Version = versionLine()
	root.SetVersionTemplate("{{.Version}}\n")
	root.InitDefaultVersionFlag() // now, so that the man page lists it
	root.Flags().Lookup("version").Usage = "print version, commit and Go version (as lbctl version)"
	root.AddCommand(newServeCmd(), newValidateCmd(), newVersionCmd(), newGenCmd())
	root.AddCommand(newClientCmds()...)
	root.InitDefaultCompletionCmd() // now, so that it gets its examples too
	applyHelp(root)
	completeConfigFlags(root)
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

// loadConfig finds and loads the config, then runs config.CheckTokenFile
// and checks on it; every failure exits 2, and every problem found (each
// a config.Errors) is reported at once, in the order of the file's lines.
func loadConfig(flag string, checks ...func(*config.Config) error) (*config.Config, string, error) {
	path, err := findConfig(flag)
	if err != nil {
		return nil, "", withCode(exitUsage, err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		var errs config.Errors
		if errors.As(err, &errs) {
			return nil, path, invalidConfig(errs)
		}
		// Missing or unreadable (fs.ErrNotExist, fs.ErrPermission): the
		// error names the file.
		return nil, path, withCode(exitUsage, err)
	}
	var all config.Errors
	for _, check := range append([]func(*config.Config) error{config.CheckTokenFile}, checks...) {
		err := check(cfg)
		var errs config.Errors
		switch {
		case err == nil:
		case errors.As(err, &errs):
			all = append(all, errs...)
		default:
			return nil, path, withCode(exitUsage, err)
		}
	}
	if len(all) > 0 {
		// By line, as Load sorts its own; problems without a line last.
		sort.SliceStable(all, func(i, j int) bool {
			li, lj := all[i].Line, all[j].Line
			return li != 0 && (lj == 0 || li < lj)
		})
		return nil, path, invalidConfig(all)
	}
	return cfg, path, nil
}

// invalidConfig is the error for a config with problems: a count, then
// each problem on a line of its own (exit 2).
func invalidConfig(errs config.Errors) error {
	return withCode(exitUsage, fmt.Errorf("invalid configuration (%s):\n%w", plural(len(errs), "problem"), errs))
}
