package main

// gen.go: `lbctl gen man DIR`, hidden, used by `make install` (and `make
// docs-gen`) to write the man pages from the same texts as --help. The
// shell completions come from cobra's `lbctl completion bash|zsh|fish`.

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func newGenCmd() *cobra.Command {
	gen := &cobra.Command{
		Use:    "gen",
		Short:  "Generate documentation (used by make install)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withCode(exitUsage, fmt.Errorf("missing what to generate: lbctl gen man DIR"))
		},
	}
	gen.AddCommand(&cobra.Command{
		Use:    "man DIR",
		Short:  "Write lbctl.1 and one man page per command (lbctl-backend-drain.1, ...) into DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := genMan(cmd.Root(), args[0]); err != nil {
				return withCode(exitFailure, err)
			}
			return nil
		},
	})
	return gen
}

// genMan writes the man pages of root and every command below it into
// dir (created if need be), each readable by all. The date is today's, or
// $SOURCE_DATE_EPOCH's for a reproducible build.
func genMan(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	walk(root, func(c *cobra.Command) { c.DisableAutoGenTag = true })
	header := &doc.GenManHeader{Section: "1", Source: "lbctl " + version, Manual: "lbctl manual"}
	if err := doc.GenManTree(root, header, dir); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	pages, err := filepath.Glob(filepath.Join(dir, "lbctl*.1"))
	if err != nil {
		return err
	}
	for _, p := range pages {
		if err := os.Chmod(p, 0o644); err != nil {
			return err
		}
	}
	return nil
}
