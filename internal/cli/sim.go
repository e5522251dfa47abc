package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/sim"
)

func runSim(_ context.Context, args []string, stdout, stderr io.Writer) error {
	var names strings.Builder
	for _, s := range sim.Scenarios() {
		fmt.Fprintf(&names, "\n  %-20s %s", s.Name, s.Description)
	}
	fs := newFlagSet("sim", "--nodes N --duration D --seed S --scenario NAME [--protocol v1|v2|mixed] [--accept-rate R]\n"+
		"       [--pacing-window D] [--trace FILE] [--csv FILE]\n\nscenarios:"+names.String())
	nodes := fs.Int("nodes", 1000, "simulated senders")
	duration := fs.Duration("duration", time.Hour, "virtual time to simulate")
	seed := fs.Uint64("seed", 1, "seed of every random choice: the same seed gives the same trace")
	scenario := fs.String("scenario", "steady", "scenario name (see above)")
	tracePath := fs.String("trace", "", "write the trace to this file")
	csvPath := fs.String("csv", "", "write the per-state counts over time as CSV to this file")
	protocol := fs.String("protocol", "v1", "what the senders speak: v1, v2, or mixed (the lower half of the nodes v1, the upper half v2); v1 replays every run from before v2")
	var pf pacingFlags
	pf.register(fs)
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	proto, err := sim.ParseProtocol(*protocol)
	if err != nil {
		return usageError("--protocol %q: want v1, v2 or mixed", *protocol)
	}
	acceptRate, pacingWindow, err := pf.values()
	if err != nil {
		return err
	}
	p := sim.Params{Nodes: *nodes, Duration: *duration, Seed: *seed, Scenario: *scenario, Protocol: proto}
	if acceptRate != aggregator.DefaultAcceptRate || pacingWindow != aggregator.DefaultPacingWindow {
		p.Pacing = sim.Pacing{AcceptRate: acceptRate, PacingWindow: pacingWindow}
	}
	var files []*os.File
	open := func(path string) (*bufio.Writer, error) {
		f, err := os.Create(path)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
		return bufio.NewWriterSize(f, 1<<20), nil
	}
	var bufs []*bufio.Writer
	if *tracePath != "" {
		w, err := open(*tracePath)
		if err != nil {
			return err
		}
		p.Trace, bufs = w, append(bufs, w)
	}
	if *csvPath != "" {
		w, err := open(*csvPath)
		if err != nil {
			return err
		}
		p.CSV, bufs = w, append(bufs, w)
	}
	rep, err := sim.Run(p)
	for _, b := range bufs {
		if ferr := b.Flush(); ferr != nil && err == nil {
			err = ferr
		}
	}
	for _, f := range files {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	if rep != nil {
		if werr := rep.WriteText(stdout); werr != nil && err == nil {
			err = werr
		}
	}
	var inv *sim.InvariantError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &inv):
		return err // the error says how to replay the seed
	case rep == nil:
		return simFlags.usage(err) // invalid parameters
	}
	return err
}
