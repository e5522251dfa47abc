package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/internal/loadgen"
)

// fdsPerSender is what one sender identity costs in open files over TCP
// (its connection; over QUIC all senders share one UDP socket); fdsSpare
// covers the rest of the process.
const (
	fdsPerSender = 1
	fdsSpare     = 64
)

func runLoad(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := newFlagSet("load", "--target MULTIADDR --nodes N [--period D] [--reconnect-period D] [--ramp D] [--dial-concurrency C] [--duration D] [--report-every D] [--protocol v1|v2|auto] [--trace FILE] [--log-level L] [--log-json]")
	target := fs.String("target", "", "aggregator multiaddr ending in /p2p/<peer-id> (required): a /tcp/ address dials TCP, a /udp/…/quic-v1 one QUIC")
	nodes := fs.Int("nodes", 0, "number of sender identities, each a libp2p host of its own (required)")
	period := fs.Duration("period", heartbeat.DefaultBeatPeriod, "each sender's beat period")
	reconnect := fs.Duration("reconnect-period", heartbeat.DefaultReconnectPeriod, "each sender's reconnect period (±20% jitter)")
	ramp := fs.Duration("ramp", 0, "spread the senders' starts over this time (0: as fast as --dial-concurrency allows)")
	dialConc := fs.Int("dial-concurrency", loadgen.DefaultDialConcurrency, "dials in flight at most, across all senders")
	duration := fs.Duration("duration", 0, "stop after this time (0: run until interrupted)")
	every := fs.Duration("report-every", 5*time.Second, "time between report lines")
	proto := fs.String("protocol", heartbeat.ProtocolV1, "protocols the senders offer: v1 (the 2019 lines; the aggregator learns each period), v2 (Hello with the period, acknowledged beats) or auto (v2, then v1)")
	tracePath := fs.String("trace", "", "write one line per sender event (up, lost, late beat) to this file, to tell false suspicion from real silence")
	var lf logFlags
	lf.register(fs, "info")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	switch {
	case *target == "":
		return usageError("--target is required")
	case *nodes <= 0:
		return usageError("--nodes %d: want at least 1", *nodes)
	case *dialConc <= 0:
		return usageError("--dial-concurrency %d: want at least 1", *dialConc)
	case *ramp < 0:
		return usageError("--ramp %s: want 0 or a positive duration", *ramp)
	case *duration < 0:
		return usageError("--duration %s: want 0 or a positive duration", *duration)
	case *proto != heartbeat.ProtocolV1 && *proto != heartbeat.ProtocolV2 && *proto != heartbeat.ProtocolAuto:
		return usageError("--protocol %q: want v1, v2 or auto", *proto)
	}
	for _, perr := range []error{positive("period", *period), positive("reconnect-period", *reconnect), positive("report-every", *every)} {
		if perr != nil {
			return perr
		}
	}
	if _, err := heartbeat.ParseTarget(*target); err != nil {
		return usageError("--target: %v", err)
	}
	log, err := lf.logger("load", stderr)
	if err != nil {
		return err
	}
	defer func() { err = lf.failed(log, "load", err) }()

	need := uint64(*nodes*fdsPerSender + fdsSpare)
	if strings.Contains(*target, "/quic-v1") {
		need = fdsSpare
	}
	soft, hard, rerr := loadgen.RaiseOpenFiles()
	switch {
	case rerr != nil:
		log.Warn("open-files limit not raised", "soft", soft, "hard", hard, "error", rerr)
	case soft < need:
		log.Warn("open-files limit below what the senders need: raise the hard limit (ulimit -Hn) or lower --nodes",
			"open_files_limit", soft, "need", need)
	default:
		log.Info("open-files limit", "open_files_limit", soft, "need", need)
	}

	var trace io.Writer
	if *tracePath != "" {
		f, err := os.Create(*tracePath)
		if err != nil {
			return fmt.Errorf("--trace: %w", err)
		}
		defer func() {
			if cerr := f.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("--trace: %w", cerr)
			}
		}()
		trace = f
	}
	g, err := loadgen.New(loadgen.Config{Target: *target, Nodes: *nodes, Period: *period, ReconnectPeriod: *reconnect,
		Ramp: *ramp, DialConcurrency: *dialConc, Protocol: *proto, Log: log, Trace: trace})
	if err != nil {
		return usageError("%v", err)
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	fmt.Fprintf(stdout, "load: %d senders beating every %s to %s\n", *nodes, *period, *target)
	start := time.Now()
	ran := make(chan error, 1)
	go func() { ran <- g.Run(ctx) }()
	tick := time.NewTicker(*every)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			printLoad(stdout, "", time.Since(start), g.Stats())
		case err := <-ran:
			printLoad(stdout, "final ", time.Since(start), g.Stats())
			return err
		}
	}
}

// printLoad prints one report line: key=value pairs, stable names.
func printLoad(w io.Writer, prefix string, elapsed time.Duration, s loadgen.Stats) {
	last := ""
	if s.LastError != nil {
		last = fmt.Sprintf(" last_error=%q", s.LastError.Error())
	}
	fmt.Fprintf(w, "%st=%s started=%d connected=%d beaten=%d beats=%d write_errors=%d dial_errors=%d reconnects=%d host_errors=%d gc_cycles=%d gc_pause_total=%s gc_pause_max=%s sched_latency_p99=%s%s\n",
		prefix, elapsed.Round(time.Second), s.Started, s.Connected, s.Beaten, s.BeatsWritten, s.WriteErrors, s.DialErrors,
		s.Reconnects, s.HostErrors, s.GCCycles, s.GCPauseTotal.Round(time.Microsecond), s.GCPauseMax.Round(time.Microsecond),
		s.SchedLatencyP99.Round(time.Microsecond), last)
}
