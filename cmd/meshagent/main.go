// Command meshagent is the meshagent CLI and daemon: it creates trust
// anchors, agent identities, credentials and capability tokens, and runs an
// agent on the mesh with a local API for agents written in any language.
//
// Exit codes: 0 on success, 1 when something is invalid or refused, 2 on a
// usage error. Errors go to stderr in one line.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// usageError marks a mistake in how the command was called (exit 2).
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// failure marks an error returned by a command's work (exit 1).
type failure struct{ err error }

func (f failure) Error() string { return f.err.Error() }
func (f failure) Unwrap() error { return f.err }

// action wraps a command body so that its errors exit 1, except usage
// errors, which exit 2.
func action(f func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := f(cmd, args)
		var u usageError
		if err == nil || errors.As(err, &u) {
			return err
		}
		return failure{err}
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	return runContext(context.Background(), args, stdout, stderr)
}

// runContext is run until ctx ends: a daemon started by `run` stops then,
// as on SIGINT.
func runContext(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "meshagent: "+strings.ReplaceAll(err.Error(), "\n", " "))
	var f failure
	if errors.As(err, &f) {
		return 1
	}
	return 2
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "meshagent",
		Short:         "Cryptographic trust for every message between AI agents",
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newInitCmd(), newIDCmd(), newCACmd(), newTokenCmd(), newBenchCmd(), newMCPCmd(), newVersionCmd(), newAuditCmd())
	addDaemonCommands(root)
	return root
}

// exactArgs is cobra.ExactArgs with a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %d argument(s), got %d", cmd.CommandPath(), n, len(args))
		}
		return nil
	}
}

// required marks flags required, with a usage error when one is missing.
func required(cmd *cobra.Command, names ...string) {
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		for _, n := range names {
			if !c.Flags().Changed(n) {
				return usagef("%s: --%s is required", c.CommandPath(), n)
			}
		}
		if prev != nil {
			return prev(c, args)
		}
		return nil
	}
}
