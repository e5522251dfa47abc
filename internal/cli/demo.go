package cli

import (
	"context"
	"errors"
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

const demoNodes = 5

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "[--duration D]", stderr)
	duration := fs.Duration("duration", 40*time.Second, "run length; the aggregator stops at 1/4 of it and comes back at 5/8")
	httpAddr := fs.String("http", "127.0.0.1:0", "HTTP address of the aggregator's API (port 0 picks a free one)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *duration < 4*time.Second {
		return usageError("--duration %s: want at least 4s", *duration)
	}
	d := &demo{
		tl:        &timeline{w: stdout, start: time.Now()},
		duration:  *duration,
		stopAt:    *duration / 4,
		restartAt: *duration * 5 / 8,
		http:      *httpAddr,
	}
	return d.run(ctx)
}

// demo runs an aggregator and five senders in one process, on loopback.
type demo struct {
	tl                          *timeline
	duration, stopAt, restartAt time.Duration
	http                        string

	key     crypto.PrivKey
	listen  string
	mu      sync.Mutex
	agg     *runningAggregator
	beats   uint64 // received by aggregators already stopped
	senders []*demoSender

	recovered struct {
		restartedAt, sendersAt, aggregatorAt time.Time
	}
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
	ctx, cancel := context.WithTimeout(ctx, d.duration)
	defer cancel()
	var err error
	if d.key, _, err = crypto.GenerateEd25519Key(nil); err != nil {
		return err
	}
	d.listen = "/ip4/127.0.0.1/tcp/0"
	if err := d.startAggregator(); err != nil {
		return err
	}
	// Restart on the same port, and keep the HTTP URL stable too.
	d.listen = d.agg.host.Addrs()[0].String()
	d.http = d.agg.httpURL[len("http://"):]
	target := d.agg.dialable()
	d.tl.printf("demo", "aggregator %s", target)
	d.tl.printf("demo", "http       %s/api/nodes  %s/api/summary  %s/metrics", d.agg.httpURL, d.agg.httpURL, d.agg.httpURL)
	d.tl.printf("demo", "%d senders beat every 1s; the aggregator stops at +%s and comes back at +%s", demoNodes, d.stopAt, d.restartAt)

	genesis := time.Now()
	for i := 1; i <= demoNodes; i++ {
		s, err := d.startSender(i, target, genesis)
		if err != nil {
			d.shutdown()
			return err
		}
		d.senders = append(d.senders, s)
	}

	watchDone := make(chan struct{})
	go d.watch(ctx, watchDone)

	stop := time.NewTimer(d.stopAt)
	restart := time.NewTimer(d.restartAt)
	defer stop.Stop()
	defer restart.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-stop.C:
			d.tl.printf("demo", "stopping the aggregator")
			d.stopAggregator()
		case <-restart.C:
			if err := d.startAggregator(); err != nil {
				d.tl.printf("demo", "restart failed: %v", err)
				continue
			}
			d.mu.Lock()
			d.recovered.restartedAt = time.Now()
			d.mu.Unlock()
			d.tl.printf("demo", "aggregator back, same identity and address")
		}
	}
	<-watchDone
	d.report()
	d.shutdown()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return nil
	}
	return ctx.Err()
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
	d.mu.Lock()
	d.agg = r
	d.mu.Unlock()
	return nil
}

func (d *demo) stopAggregator() {
	d.mu.Lock()
	r := d.agg
	d.agg = nil
	d.mu.Unlock()
	if r == nil {
		return
	}
	beats := r.agg.Tracker().Summary().Beats
	if err := r.stop(); err != nil {
		d.tl.printf("demo", "aggregator stop: %v", err)
	}
	d.mu.Lock()
	d.beats += beats
	d.mu.Unlock()
}

func (d *demo) startSender(i int, target string, genesis time.Time) (*demoSender, error) {
	h, err := libp2p.New(libp2p.NoListenAddrs)
	if err != nil {
		return nil, fmt.Errorf("sender host: %w", err)
	}
	s := &demoSender{name: fmt.Sprintf("node-%d", i), host: h}
	// 30 s epochs, as Filecoin's; the last node is on a fork: in dispute.
	chain := syntheticChain{genesis: genesis, period: 30 * time.Second, now: time.Now}
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
	if err != nil {
		h.Close()
		return nil, err
	}
	if err := s.svc.Start(context.Background()); err != nil {
		h.Close()
		return nil, err
	}
	return s, nil
}

// watch prints the aggregator's summary whenever it changes, and notes
// when the system recovered after the restart.
func (d *demo) watch(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		d.mu.Lock()
		r, restarted := d.agg, d.recovered.restartedAt
		d.mu.Unlock()
		beating := 0
		for _, s := range d.senders {
			s.mu.Lock()
			if s.beating {
				beating++
			}
			s.mu.Unlock()
		}
		now := time.Now()
		if !restarted.IsZero() && beating == demoNodes && d.recovered.sendersAt.IsZero() {
			d.recovered.sendersAt = now
		}
		line := "down"
		if r != nil {
			sum := r.agg.Tracker().Summary()
			// No height here: it grows every second, and this line
			// prints only when membership or consensus changes.
			line = fmt.Sprintf("nodes %d: up %d, suspect %d, down %d, left %d; in consensus %d, in dispute %d",
				sum.Nodes, sum.ByState[tracker.Up], sum.ByState[tracker.Suspect], sum.ByState[tracker.Down], sum.ByState[tracker.Left],
				sum.InConsensus, sum.InDispute)
			if !restarted.IsZero() && sum.ByState[tracker.Up] == demoNodes && d.recovered.aggregatorAt.IsZero() {
				d.recovered.aggregatorAt = now
			}
		}
		if line != last {
			last = line
			d.tl.printf("aggregator", "      %s", line)
		}
	}
}

func (d *demo) report() {
	d.mu.Lock()
	received := d.beats
	if d.agg != nil {
		received += d.agg.agg.Tracker().Summary().Beats
	}
	rec := d.recovered
	d.mu.Unlock()
	var sent uint64
	reconnects := 0
	for _, s := range d.senders {
		sent += s.svc.Status().BeatsSent
		s.mu.Lock()
		if s.beatings > 1 {
			reconnects += s.beatings - 1
		}
		s.mu.Unlock()
	}
	w := d.tl.w
	fmt.Fprintln(w)
	fmt.Fprintln(w, "report")
	fmt.Fprintf(w, "  senders                 %d\n", demoNodes)
	fmt.Fprintf(w, "  heartbeats sent         %d\n", sent)
	fmt.Fprintf(w, "  heartbeats received     %d (the difference was in flight when the aggregator stopped)\n", received)
	fmt.Fprintf(w, "  reconnects              %d\n", reconnects)
	switch {
	case rec.restartedAt.IsZero():
		fmt.Fprintln(w, "  recovery                the aggregator did not come back within the run")
	default:
		fmt.Fprintf(w, "  all senders beating     %s after the restart\n", since(rec.restartedAt, rec.sendersAt))
		fmt.Fprintf(w, "  all nodes up            %s after the restart (aggregator's view)\n", since(rec.restartedAt, rec.aggregatorAt))
	}
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
