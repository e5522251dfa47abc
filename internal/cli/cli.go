// Package cli implements the heartbeat command. Main takes its arguments
// and output streams, so tests run every command in-process.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/aggregator/metrics"
	"github.com/p2pbeat/heartbeat/wire2"
)

// Exit codes (docs/cli.md has the table).
const (
	exitOK    = 0
	exitError = 1 // a runtime failure: a port in use, an unreadable key file
	exitUsage = 2 // a usage error: bad command, flag or flag value
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
		{"nodes", "list an aggregator's nodes (GET /api/nodes)", runNodes},
		{"forget", "retire a node: kept as retired, no longer alerts (DELETE /api/nodes/{peer})", runForget},
		{"load", "run many sender identities against one aggregator, to size it", runLoad},
		{"sim", "run the deterministic many-node simulation (see docs/simulation.md)", runSim},
		{"diagram", "print the sender's state diagram (Mermaid or DOT)", runDiagram},
		{"version", "print the module version", runVersion},
	}
}

// usageErr is an error the user made on the command line: exit code 2.
type usageErr struct{ err error }

func (e *usageErr) Error() string { return e.err.Error() }
func (e *usageErr) Unwrap() error { return e.err }

// loggedErr is an error the command already logged, as JSON with
// --log-json: Main prints nothing more, so every line stays JSON.
type loggedErr struct{ err error }

func (e *loggedErr) Error() string { return e.err.Error() }
func (e *loggedErr) Unwrap() error { return e.err }

// usageError makes a usage error, formatted as fmt.Errorf.
func usageError(format string, args ...any) error {
	return &usageErr{fmt.Errorf(format, args...)}
}

// Main runs the command named by args[0] and returns the process exit code.
// Help goes to stdout (exit 0); misuse goes to stderr (exit 2).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help":
		printUsage(stdout)
		return exitOK
	case "-version", "--version":
		args = []string{"version"}
	case "help":
		if len(args) == 1 {
			printUsage(stdout)
			return exitOK
		}
		if len(args) > 2 {
			fmt.Fprintf(stderr, "heartbeat help: want one command, got %q\n", args[1:])
			return exitUsage
		}
		args = []string{args[1], "-h"}
	}
	c, ok := lookup(args[0])
	if !ok {
		fmt.Fprintf(stderr, "heartbeat: unknown command %q\nRun 'heartbeat help' for the commands.\n", args[0])
		return exitUsage
	}
	err := c.run(ctx, args[1:], stdout, stderr)
	var usage *usageErr
	var logged *loggedErr
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &logged) && errors.As(err, &usage):
		return exitUsage
	case errors.As(err, &logged):
		return exitError
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "heartbeat %s: %v\nRun 'heartbeat help %s' for usage.\n", c.name, err, c.name)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "heartbeat %s: %v\n", c.name, err)
		return exitError
	}
}

func lookup(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: heartbeat <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'heartbeat help <command>' for a command's flags, 'heartbeat --version' for the version.")
}

// version is the module version and VCS revision of this binary, from its
// build information: a tag such as v1.2.0 after `go install …@v1.2.0`, a
// pseudo-version or "(devel)" for a build from a checkout.
func version() string {
	v := moduleVersion()
	var rev, dirty string
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+modified"
				}
			}
		}
	}
	s := "heartbeat " + v
	if rev != "" && !strings.Contains(v, rev[:min(12, len(rev))]) {
		s += " " + rev[:min(12, len(rev))] + dirty
	}
	return fmt.Sprintf("%s %s %s/%s", s, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// moduleVersion is the module's version from the build information, as
// heartbeat_build_info reports it.
func moduleVersion() string {
	v, _ := metrics.BuildVersion()
	return v
}

func runVersion(_ context.Context, args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("version", "")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	_, err := fmt.Fprintln(stdout, version())
	return err
}

// newFlagSet returns a flag set that reports errors instead of exiting or
// printing: parse prints the help, and Main the error.
func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), strings.TrimSpace("usage: heartbeat "+name+" "+synopsis))
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprint(fs.Output(), "\nflags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parse parses args. -h or --help prints the help to stdout and returns
// flag.ErrHelp; a bad flag, a bad value or a stray argument is a usage error.
func parse(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// parseFlags is parse without the check for arguments after the flags,
// for a command that takes some.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return err
		}
		return &usageErr{err}
	}
	return nil
}

// positive checks that a duration flag is above zero: a zero would
// otherwise silently mean "the default" further down.
func positive(name string, d time.Duration) error {
	if d <= 0 {
		return usageError("--%s %s: want a positive duration such as 3s", name, d)
	}
	return nil
}

// flagSet reports whether the command line set the flag name.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// pacingFlags are the reconnect-pacing flags of aggregate and sim (the
// simulated aggregator paces with the real one's package, aggregator/pacing).
type pacingFlags struct {
	rate   *float64
	window *time.Duration
}

func (p *pacingFlags) register(fs *flag.FlagSet) {
	p.rate = fs.Float64("accept-rate", aggregator.DefaultAcceptRate,
		"new v2 streams accepted in any second; past it they get GoAway with a retry-after slot (0: no pacing)")
	p.window = fs.Duration("pacing-window", aggregator.DefaultPacingWindow,
		"GoAway's retry-after is at most this (shutdown: drawn uniformly from [0, min(this, startup grace/2)))")
}

// values checks the flags (exit 2 naming the flag) and returns them as the
// configs take them: a negative rate turns pacing off (0 would take the
// default).
func (p *pacingFlags) values() (rate float64, window time.Duration, err error) {
	rate, window = *p.rate, *p.window
	// Written so that NaN fails too (every comparison with it is false),
	// and +Inf: a rate must be finite (0 turns pacing off).
	if !(rate >= 0) || math.IsInf(rate, 0) {
		return 0, 0, usageError("--accept-rate %v: want 0 (no pacing) or a positive rate", rate)
	}
	if rate == 0 {
		rate = -1
	}
	if err := positive("pacing-window", window); err != nil {
		return 0, 0, err
	}
	if window > wire2.MaxRetryAfter {
		return 0, 0, usageError("--pacing-window %v: at most %v (a sender waits no longer)", window, wire2.MaxRetryAfter)
	}
	return rate, window, nil
}

// logFlags are the logging flags every long-running command takes.
type logFlags struct {
	level string
	json  bool
}

func (l *logFlags) register(fs *flag.FlagSet, def string) {
	fs.StringVar(&l.level, "log-level", def, "log level: trace, debug, info, warn, error")
	fs.BoolVar(&l.json, "log-json", false, "log JSON lines (for Loki, Elasticsearch); go-libp2p's lines too")
}

// logger builds the command's logger, and routes go-libp2p's own log
// records through it, so that every line has one format.
func (l *logFlags) logger(name string, w io.Writer) (hclog.Logger, error) {
	level := hclog.LevelFromString(l.level)
	if level == hclog.NoLevel {
		return nil, usageError("--log-level %q: want one of trace, debug, info, warn, error", l.level)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: name, Level: level, JSONFormat: l.json, Output: w})
	routeLibp2pLogs(log)
	return log, nil
}

// failed is how a command that logs JSON reports an error that comes after
// its logger exists: as one more JSON line, not as plain text.
func (l *logFlags) failed(log hclog.Logger, command string, err error) error {
	if err == nil || !l.json || errors.Is(err, flag.ErrHelp) {
		return err
	}
	log.Error(command+" failed", "error", err)
	return &loggedErr{err}
}

// listFlag collects a repeatable, comma-separated flag. An empty item
// (`--allow ""`, a trailing comma) is an error, never skipped: `--allow
// "$IDS"` with IDS unset must not start an aggregator open to everyone.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			return errors.New("empty item")
		}
		*l = append(*l, s)
	}
	return nil
}
