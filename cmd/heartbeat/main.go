// Command heartbeat runs the heartbeat system: an aggregator, a sender, a
// one-command demo of both, the deterministic simulation and the state
// diagram. Run `heartbeat help` for the commands; see docs/cli.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/p2pbeat/heartbeat/internal/cli"
)

func main() {
	// SIGINT/SIGTERM cancel the context: every command shuts down cleanly.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
