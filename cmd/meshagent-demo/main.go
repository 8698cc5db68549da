//go:build meshsim

// Command meshagent-demo runs a small mesh on 127.0.0.1 (an orchestrator,
// two sub-agents and a log service, over TCP and TLS 1.3) and shows the
// calls that pass and the attacks that fail, one row each. It is what
// `make demo` runs.
//
// It lives apart from the meshagent daemon because it builds its mesh with
// the simulations package and plays attacks through raw senders that the
// product binary does not carry.
//
// Exit codes: 0 when every row came out as it must, 1 otherwise; the error
// goes to stderr in one line.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// demoTimeout bounds the whole demo: on a loaded machine it takes a few
// seconds.
const demoTimeout = 60 * time.Second

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintf(stderr, "meshagent-demo: takes no arguments, got %q\n", strings.Join(args, " "))
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()
	if err := runDemo(ctx, stdout); err != nil {
		fmt.Fprintln(stderr, "meshagent-demo: "+strings.ReplaceAll(err.Error(), "\n", " "))
		return 1
	}
	return 0
}
