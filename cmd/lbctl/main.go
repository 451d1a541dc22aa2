// Command lbctl is a Layer-4 (TCP and UDP) load balancer. See README.md.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "unknown"
)

// Exit statuses (SPEC "Command line").
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// exitError carries the exit status a command ends with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error { return &exitError{code: code, err: err} }

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int { return runWith(args, os.Stdout, os.Stderr) }

// runWith runs the command line args, writing to stdout and stderr, and
// returns the exit status.
func runWith(args []string, stdout, stderr io.Writer) int {
	cmd := newRootCmd()
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	err := cmd.Execute()
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintln(stderr, "lbctl:", ee.err)
		}
		return ee.code
	}
	// Errors cobra raises itself: unknown command or flag, wrong arguments.
	fmt.Fprintln(stderr, "lbctl:", err)
	fmt.Fprintln(stderr, "Run 'lbctl --help' for usage.")
	return exitUsage
}
