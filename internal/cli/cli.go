// Package cli implements the heartbeat command. Main takes its arguments
// and output streams, so tests run every command in-process.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"demo", "run an aggregator and 5 senders on loopback, restart the aggregator, report", runDemo},
		{"aggregate", "run an aggregator: libp2p listener, metrics and HTTP API", runAggregate},
		{"beat", "run a sender with a synthetic chain", runBeat},
		{"sim", "run the deterministic many-node simulation (see docs/simulation.md)", runSim},
		{"diagram", "print the sender's state diagram (Mermaid or DOT)", runDiagram},
	}
}

// errUsage marks an error the user made on the command line: exit code 2.
var errUsage = errors.New("usage")

// usageError wraps err so that Main exits with 2 after printing it.
func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}

// Main runs the command named by args[0] and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printUsage(stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp):
			return exitOK
		case errors.Is(err, errUsage):
			fmt.Fprintf(stderr, "heartbeat %s: %v\n", c.name, err)
			return exitUsage
		default:
			fmt.Fprintf(stderr, "heartbeat %s: %v\n", c.name, err)
			return exitError
		}
	}
	fmt.Fprintf(stderr, "heartbeat: unknown command %q\n\n", args[0])
	printUsage(stderr)
	return exitUsage
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: heartbeat <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'heartbeat <command> -h' for a command's flags.")
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: heartbeat %s %s\n\nflags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args, turning a bad flag or a stray argument into a usage error.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError("%v", err)
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// logFlags are the logging flags every long-running command takes.
type logFlags struct {
	level string
	json  bool
}

func (l *logFlags) register(fs *flag.FlagSet, def string) {
	fs.StringVar(&l.level, "log-level", def, "log level: trace, debug, info, warn, error")
	fs.BoolVar(&l.json, "log-json", false, "log JSON lines (for Loki, Elasticsearch)")
}

func (l *logFlags) logger(name string, w io.Writer) (hclog.Logger, error) {
	level := hclog.LevelFromString(l.level)
	if level == hclog.NoLevel {
		return nil, usageError("--log-level %q: want one of trace, debug, info, warn, error", l.level)
	}
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: level, JSONFormat: l.json, Output: w}), nil
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}
