package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"
)

// versionLine is what `lbctl version` and `lbctl --version` print.
func versionLine() string {
	return fmt.Sprintf("lbctl %s (commit %s, %s, %s/%s)", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version, commit and Go version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), versionLine())
		},
	}
}
