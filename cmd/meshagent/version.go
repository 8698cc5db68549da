package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"
)

// version and revision are stamped in by `make release` (and the
// Dockerfile) with -ldflags "-X main.version=... -X main.revision=...":
// `git describe --tags --always --dirty` and the commit. A plain `go
// build` leaves them as below.
var (
	version  = "dev"
	revision = "unknown"
)

// buildInfo is what this binary says about itself: `meshagent version`
// and the meshagent_build_info metric.
type buildInfo struct {
	Version, Revision, GoVersion string
}

func currentBuild() buildInfo {
	return buildInfo{Version: version, Revision: revision, GoVersion: runtime.Version()}
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print this binary's version, revision and Go version",
		Args:  exactArgs(0),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			b := currentBuild()
			fmt.Fprintf(cmd.OutOrStdout(), "meshagent %s\nrevision %s\nbuilt with %s\n", b.Version, b.Revision, b.GoVersion)
			return nil
		}),
	}
}
