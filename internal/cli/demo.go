package cli

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/fsm"
)

const (
	demoNodes = 5
	// demoGrace is how long the demo may run past --duration while the
	// system has not recovered yet: 40 s + 20 s keeps the default run
	// within a minute, and a slow machine still gets to see the recovery.
	demoGrace = 20 * time.Second
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "[--duration D] [--http ADDR]")
	duration := fs.Duration("duration", 40*time.Second,
		"run length: the aggregator stops at 1/4 of it and comes back at 5/8; the run goes on at most 20s longer until every node is back")
	httpAddr := fs.String("http", "127.0.0.1:0", "HTTP address of the aggregator's API (port 0 picks a free one)")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	if err := checkHTTP(*httpAddr); err != nil {
		return err
	}
	if *duration < 4*time.Second {
		return usageError("--duration %s: want at least 4s", *duration)
	}
	d := &demo{
		tl:       &timeline{w: stdout, start: time.Now()},
		duration: *duration,
		stopAt:   *duration / 4,
		downtime: *duration*5/8 - *duration/4,
		http:     *httpAddr,
	}
	return d.run(ctx)
}

// demo runs an aggregator and five senders in one process, on loopback,
// stops the aggregator for a while and reports how the system recovered.
// One goroutine (run) drives the phases; the senders' observers only
// update their demoSender.
type demo struct {
	tl                         *timeline
	duration, stopAt, downtime time.Duration
	http                       string

	key     crypto.PrivKey
	listen  string
	agg     *runningAggregator
	beats   uint64 // received by aggregator runs already stopped
	senders []*demoSender

	stoppedAt, restartedAt, sendersBackAt, nodesUpAt time.Time
}

type demoSender struct {
	name     string
	host     host.Host
	svc      *heartbeat.Service
	mu       sync.Mutex
	beatings int // transitions into Beating
	beating  bool
}

func (d *demo) run(ctx context.Context) error {
	var err error
	if d.key, _, err = crypto.GenerateEd25519Key(nil); err != nil {
		return err
	}
	d.listen = "/ip4/127.0.0.1/tcp/0"
	if err := d.startAggregator(); err != nil {
		return err
	}
	defer d.shutdown()
	// Restart on the same port, and keep the HTTP URL stable too.
	d.listen = d.agg.host.Addrs()[0].String()
	d.http = d.agg.httpURL[len("http://"):]
	target := d.agg.dialable()
	d.tl.printf("demo", "aggregator %s", target)
	d.tl.printf("demo", "http       %s/api/nodes  %s/api/summary  %s/metrics", d.agg.httpURL, d.agg.httpURL, d.agg.httpURL)
	d.tl.printf("demo", "%d senders beat every 1s; the aggregator stops at +%s for %s", demoNodes, d.stopAt, d.downtime)

	for i := 1; i <= demoNodes; i++ {
		s, err := d.startSender(i, target)
		if err != nil {
			return err
		}
		d.senders = append(d.senders, s)
	}

	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		select {
		case <-ctx.Done():
			// Interrupted (SIGINT/SIGTERM): a clean stop, with the report so far.
			d.report()
			return nil
		case <-tick.C:
		}
		now, elapsed := time.Now(), time.Since(d.tl.start)
		beating := d.beating()
		var sum tracker.Summary
		if d.agg != nil {
			sum = d.agg.agg.Tracker().Summary()
		}
		switch {
		case d.stoppedAt.IsZero() && elapsed >= d.stopAt && beating == demoNodes:
			// Stop only once every sender is beating, however slow the start.
			d.tl.printf("demo", "stopping the aggregator")
			d.stopAggregator()
			d.stoppedAt = now
		case !d.stoppedAt.IsZero() && d.restartedAt.IsZero() && now.Sub(d.stoppedAt) >= d.downtime:
			if err := d.startAggregator(); err != nil {
				return fmt.Errorf("restart the aggregator: %w", err)
			}
			d.restartedAt = now
			d.tl.printf("demo", "aggregator back, same identity and address")
		case !d.restartedAt.IsZero():
			if beating == demoNodes && d.sendersBackAt.IsZero() {
				d.sendersBackAt = now
			}
			if sum.ByState[tracker.Up] == demoNodes && d.nodesUpAt.IsZero() {
				d.nodesUpAt = now
			}
		}
		if line := summaryLine(d.agg != nil, sum); line != last {
			last = line
			d.tl.printf("aggregator", "      %s", line)
		}
		recovered := !d.sendersBackAt.IsZero() && !d.nodesUpAt.IsZero()
		if (elapsed >= d.duration && recovered) || elapsed >= d.duration+demoGrace {
			d.report()
			return nil
		}
	}
}

// summaryLine is the aggregator's view in one line. It leaves out the
// height, which grows every epoch: the line prints only when membership
// or consensus changes.
func summaryLine(up bool, sum tracker.Summary) string {
	if !up {
		return "down"
	}
	return fmt.Sprintf("nodes %d: up %d, suspect %d, down %d, left %d; in consensus %d, in dispute %d",
		sum.Nodes, sum.ByState[tracker.Up], sum.ByState[tracker.Suspect], sum.ByState[tracker.Down], sum.ByState[tracker.Left],
		sum.InConsensus, sum.InDispute)
}

func (d *demo) beating() int {
	n := 0
	for _, s := range d.senders {
		s.mu.Lock()
		if s.beating {
			n++
		}
		s.mu.Unlock()
	}
	return n
}

func (d *demo) startAggregator() error {
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Info, JSONFormat: true, Output: logWriter{d.tl, "aggregator"}})
	r, err := startAggregator(aggregatorSetup{
		key: d.key, listen: d.listen, http: d.http, log: log,
		cfg: aggregator.Config{ExpectedPeriod: time.Second, MaxNodes: 100},
	})
	if err != nil {
		return err
	}
	d.agg = r
	return nil
}

func (d *demo) stopAggregator() {
	if d.agg == nil {
		return
	}
	d.beats += d.agg.agg.Tracker().Summary().Beats
	if err := d.agg.stop(); err != nil {
		d.tl.printf("demo", "aggregator stop: %v", err)
	}
	d.agg = nil
}

func (d *demo) startSender(i int, target string) (*demoSender, error) {
	h, err := libp2p.New(libp2p.NoListenAddrs)
	if err != nil {
		return nil, fmt.Errorf("sender host: %w", err)
	}
	s := &demoSender{name: fmt.Sprintf("node-%d", i), host: h}
	// 30 s epochs, as Filecoin's; the last node is on a fork: in dispute.
	chain := syntheticChain{genesis: mainnetGenesis, period: 30 * time.Second, now: time.Now}
	if i == demoNodes {
		chain.fork = "fork"
	}
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Info, JSONFormat: true, Output: logWriter{d.tl, s.name}})
	s.svc, err = heartbeat.New(h, heartbeat.Config{
		BeatTarget: target, BeatPeriod: "1s", ReconnectPeriod: "2s", Nickname: s.name,
	}, chain.head,
		heartbeat.WithLogger(log),
		heartbeat.WithObserver(func(o heartbeat.Observation) {
			if o.From == o.To {
				return
			}
			d.tl.printf(s.name, "      %s -> %s", o.From, o.To)
			s.mu.Lock()
			s.beating = o.To == fsm.Beating
			if s.beating {
				s.beatings++
			}
			s.mu.Unlock()
		}),
	)
	if err == nil {
		err = s.svc.Start(context.Background())
	}
	if err != nil {
		h.Close()
		return nil, err
	}
	return s, nil
}

func (d *demo) report() {
	received := d.beats
	if d.agg != nil {
		received += d.agg.agg.Tracker().Summary().Beats
	}
	var sent uint64
	reconnects := 0
	for _, s := range d.senders {
		sent += s.svc.Status().BeatsSent
		s.mu.Lock()
		reconnects += max(s.beatings-1, 0)
		s.mu.Unlock()
	}
	d.tl.block(func(w io.Writer) {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "report")
		fmt.Fprintf(w, "  senders                 %d\n", demoNodes)
		fmt.Fprintf(w, "  heartbeats sent         %d\n", sent)
		note := ""
		if received < sent {
			note = " (the difference was in flight when the aggregator stopped)"
		}
		fmt.Fprintf(w, "  heartbeats received     %d%s\n", received, note)
		fmt.Fprintf(w, "  reconnects              %d\n", reconnects)
		if d.restartedAt.IsZero() {
			fmt.Fprintln(w, "  recovery                the aggregator was not restarted within the run")
			return
		}
		fmt.Fprintf(w, "  aggregator down         %s\n", d.restartedAt.Sub(d.stoppedAt).Round(10*time.Millisecond))
		fmt.Fprintf(w, "  all senders beating     %s after the restart\n", since(d.restartedAt, d.sendersBackAt))
		fmt.Fprintf(w, "  all nodes up            %s after the restart (aggregator's view)\n", since(d.restartedAt, d.nodesUpAt))
	})
}

func since(from, to time.Time) string {
	if to.IsZero() {
		return "not within the run"
	}
	return to.Sub(from).Round(10 * time.Millisecond).String()
}

func (d *demo) shutdown() {
	for _, s := range d.senders {
		_ = s.svc.Close()
		_ = s.host.Close()
	}
	d.stopAggregator()
}
