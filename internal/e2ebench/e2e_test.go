//go:build unix

package e2ebench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/gologshim"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"go.uber.org/goleak"

	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/wire"
)

// The sender process: the benchmark runs this test binary again with
// senderEnv set to the aggregator's address, so that the senders' CPU time
// (their half of noise and yamux) is not counted in the aggregator's.
const (
	senderEnv  = "HEARTBEAT_E2E_AGGREGATOR"
	sendersEnv = "HEARTBEAT_E2E_SENDERS"
	linesEnv   = "HEARTBEAT_E2E_LINES"
	everyEnv   = "HEARTBEAT_E2E_EVERY"
)

func TestMain(m *testing.M) {
	if os.Getenv("GOLOG_LOG_LEVEL") == "" {
		gologshim.SetDefaultHandler(slog.DiscardHandler)
	}
	if addr := os.Getenv(senderEnv); addr != "" {
		if err := senderMain(addr); err != nil {
			fmt.Fprintln(os.Stderr, "e2ebench sender:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// beatLines returns node's canonical 2019 lines (json.Encoder output), one
// slice per line with its '\n': the head changes every 10 lines, as a
// Filecoin head changes every 30 s epoch under a 3 s BeatPeriod, and all
// nodes share it.
func beatLines(node, n int) ([][]byte, error) {
	lines := make([][]byte, n)
	for i := range lines {
		epoch := 3_000_000 + i/10
		b, err := wire.AppendLine(nil, wire.Heartbeat{
			Head:         "{ bafy2bzaceb" + strconv.Itoa(epoch) + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa }",
			Height:       uint64(epoch),
			Nickname:     "node-" + strconv.Itoa(node),
			MinerAddress: "f0" + strconv.Itoa(1000+node),
		})
		if err != nil {
			return nil, err
		}
		lines[i] = b
	}
	return lines, nil
}

// senderMain runs in the child process: one libp2p host per sender (TCP,
// noise, yamux), each with one heartbeat stream to the aggregator. Every
// sender writes one line, then the process prints "ready" and waits for a
// line on stdin; then every sender writes its other lines, one Write per
// line as the heartbeat service does, and closes its stream. With an
// interval, each sender writes one line per interval, the senders evenly
// staggered, so that lines arrive one by one as from a real fleet;
// without, as fast as the aggregator reads.
func senderMain(addr string) error {
	senders, err := strconv.Atoi(os.Getenv(sendersEnv))
	if err != nil {
		return fmt.Errorf("%s: %w", sendersEnv, err)
	}
	lines, err := strconv.Atoi(os.Getenv(linesEnv))
	if err != nil {
		return fmt.Errorf("%s: %w", linesEnv, err)
	}
	every, err := time.ParseDuration(os.Getenv(everyEnv))
	if err != nil {
		return fmt.Errorf("%s: %w", everyEnv, err)
	}
	target, err := peer.AddrInfoFromString(addr)
	if err != nil {
		return fmt.Errorf("aggregator address: %w", err)
	}
	ctx := context.Background()
	streams := make([]io.WriteCloser, senders)
	all := make([][][]byte, senders)
	for i := range senders {
		h, err := libp2p.New(libp2p.NoListenAddrs,
			libp2p.Transport(tcp.NewTCPTransport),
			libp2p.Security(noise.ID, noise.New),
			libp2p.Muxer(yamux.ID, yamux.DefaultTransport))
		if err != nil {
			return fmt.Errorf("sender host: %w", err)
		}
		defer h.Close()
		if err := h.Connect(ctx, *target); err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		s, err := h.NewStream(ctx, target.ID, wire.ProtocolID)
		if err != nil {
			return fmt.Errorf("open stream: %w", err)
		}
		if all[i], err = beatLines(i, lines); err != nil {
			return err
		}
		if _, err := s.Write(all[i][0]); err != nil {
			return fmt.Errorf("first line: %w", err)
		}
		streams[i] = s
	}
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for go: %w", err)
	}
	var wg sync.WaitGroup
	errs := make([]error, senders)
	// Paced: one ticker at every/senders kicks the senders in turn, so each
	// writes once per every and their writes are spread evenly (a kick a
	// slow sender has not taken yet is dropped, never queued).
	kicks := make([]chan struct{}, senders)
	for i := range kicks {
		kicks[i] = make(chan struct{}, 1)
	}
	done := make(chan struct{})
	if every > 0 {
		t := time.NewTicker(every / time.Duration(senders))
		defer t.Stop()
		go func() {
			for n := 0; ; n++ {
				select {
				case <-t.C:
					select {
					case kicks[n%senders] <- struct{}{}:
					default:
					}
				case <-done:
					return
				}
			}
		}()
	}
	for i, s := range streams {
		wg.Go(func() {
			for _, l := range all[i][1:] {
				if every > 0 {
					<-kicks[i]
				}
				if _, err := s.Write(l); err != nil {
					errs[i] = fmt.Errorf("write: %w", err)
					return
				}
			}
			errs[i] = s.Close()
		})
	}
	wg.Wait()
	close(done)
	// Stay until the aggregator has read everything: it closes stdin.
	_, _ = io.Copy(io.Discard, os.Stdin)
	return errors.Join(errs...)
}

// processCPU is this process's user plus system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// variant is one way to build the aggregator for an A/B run: set switches
// the code under test before the aggregator is built, and undoes them.
type variant struct {
	name string
	set  func() (undo func())
}

// variants are measured in rotating order within each round. The build as
// it is comes first; a temporary A/B (see docs/benchmarks.md) adds more.
var variants = []variant{{name: "as-built", set: func() func() { return func() {} }}}

// e2eRound runs one aggregator host, starts the sender process, waits for
// every sender's first line, and returns the aggregator process's CPU time
// per heartbeat for the rest.
func e2eRound(tb testing.TB, senders, lines int, every time.Duration) time.Duration {
	tb.Helper()
	cfg := aggregator.Config{}
	hostOpts, err := aggregator.HostOptions(cfg, nil)
	if err != nil {
		tb.Fatal(err)
	}
	h, err := libp2p.New(append([]libp2p.Option{libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0")}, hostOpts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	defer h.Close()
	agg, err := aggregator.New(h, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	defer agg.Close()
	addrs, err := peer.AddrInfoToP2pAddrs(&peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()})
	if err != nil {
		tb.Fatal(err)
	}
	addr := addrs[0] // the one loopback TCP address

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), senderEnv+"="+addr.String(),
		sendersEnv+"="+strconv.Itoa(senders), linesEnv+"="+strconv.Itoa(lines), everyEnv+"="+every.String())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	defer func() {
		_ = stdin.Close()
		if err := cmd.Wait(); err != nil {
			tb.Errorf("sender process: %v", err)
		}
	}()
	if ready, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || ready != "ready\n" {
		tb.Fatalf("sender process: %q, %v", ready, err)
	}
	tr := agg.Tracker()
	// The tracker's beat counter is polled: the aggregator has no event
	// for "n heartbeats tracked", and a poll every 20 ms costs the same in
	// every variant.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	guard := time.After(2 * time.Minute)
	waitBeats := func(n uint64) {
		for tr.Summary().Beats < n {
			select {
			case <-tick.C:
			case <-guard:
				tb.Fatalf("%d of %d heartbeats after 2 minutes", tr.Summary().Beats, n)
			}
		}
	}
	waitBeats(uint64(senders))
	before := processCPU()
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		tb.Fatal(err)
	}
	total := uint64(senders * lines)
	waitBeats(total)
	cpu := processCPU() - before
	return cpu / time.Duration(total-uint64(senders))
}

// BenchmarkAggregatorLibp2p measures the aggregator's CPU time per heartbeat
// end to end: sender hosts in a child process, each with its own TCP
// connection (noise, yamux) and heartbeat stream, write lines, one Write per
// line as the heartbeat service does; the aggregator host reads, decodes and
// tracks them. The figure is the aggregator process's user+system CPU
// (getrusage) from the moment every stream is open until the last line is
// tracked, divided by the heartbeats in that window: connection setup is
// excluded; garbage collection, the sweeper and the libp2p host's own
// goroutines are included. Wall time is not reported: the machine is
// shared, and CPU time is what the hot paths cost.
//
//   - paced: 200 senders, one line every 20 ms each, staggered: 10,000
//     heartbeats/s arriving one by one, as from 30,000 nodes beating every
//     3 s. The aggregator mostly waits; each heartbeat costs a wakeup, a
//     read, a noise frame and a yamux frame.
//   - flood: 100 senders writing 2,000 lines each as fast as the aggregator
//     reads: the aggregator saturated, its stream handlers busy on both
//     cores at once. Reads then carry many lines each, so the network's
//     share per heartbeat is smallest and decoding's and tracking's largest.
//
// Each op is one round of every variant, in rotating order, so that an A/B
// is interleaved; run with -benchtime Nx.
func BenchmarkAggregatorLibp2p(b *testing.B) {
	for _, c := range []struct {
		name           string
		senders, lines int
		every          time.Duration
	}{
		{"paced", 200, 300, 20 * time.Millisecond},
		{"flood", 100, 2000, 0},
	} {
		b.Run(c.name, func(b *testing.B) {
			per := make([][]float64, len(variants))
			round := 0
			for b.Loop() {
				for j := range variants {
					k := (j + round) % len(variants)
					undo := variants[k].set()
					per[k] = append(per[k], float64(e2eRound(b, c.senders, c.lines, c.every).Nanoseconds()))
					undo()
				}
				var line strings.Builder
				for k, v := range variants {
					fmt.Fprintf(&line, " %s %.0f", v.name, per[k][len(per[k])-1])
				}
				b.Logf("round %d cpu-ns/beat:%s", round, line.String())
				round++
			}
			for k, v := range variants {
				if k > 0 {
					// Per round, this variant over the build as it is: the
					// rounds ran side by side, so the ratio is steadier
					// than either figure.
					ratios := make([]float64, len(per[k]))
					for i := range per[k] {
						ratios[i] = per[k][i] / per[0][i]
					}
					b.ReportMetric(median(ratios), v.name+"/as-built")
				}
				b.ReportMetric(median(per[k]), v.name+"-cpu-ns/beat")
			}
		})
	}
}

// median returns the median of xs, leaving xs as it is.
func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}
