package cli

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/term"

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
	// demoTick paces the demo's phases and the live table; no time the
	// demo reports is rounded to it.
	demoTick = 250 * time.Millisecond
	// demoPacingWindow is the aggregator's pacing window in the demo: the
	// senders' reconnect period.
	demoPacingWindow = 2 * time.Second
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "[--duration D] [--http ADDR] [--output auto|table|timeline]")
	duration := fs.Duration("duration", 40*time.Second,
		"run length: the aggregator stops at 1/4 of it and comes back at 5/8; the run goes on at most 20s longer until every node is back")
	httpAddr := fs.String("http", "127.0.0.1:0", "HTTP address of the aggregator's dashboard and API (port 0 picks a free one)")
	output := fs.String("output", "auto", "table: a live table updated in place; timeline: one line per event; auto: table on a terminal")
	if err := parse(fs, args, stdout); err != nil {
		return err
	}
	if err := checkHTTP(*httpAddr); err != nil {
		return err
	}
	if *duration < 4*time.Second {
		return usageError("--duration %s: want at least 4s", *duration)
	}
	table := false
	switch *output {
	case "auto":
		table = isTerminal(stdout)
	case "table":
		table = true
	case "timeline":
	default:
		return usageError("--output %q: want auto, table or timeline", *output)
	}
	d := newDemo(stdout, time.Now(), table)
	d.duration, d.stopAt, d.downtime, d.http = *duration, *duration/4, *duration*5/8-*duration/4, *httpAddr
	return d.run(ctx)
}

// isTerminal reports whether w is a terminal, where the live table can
// redraw in place (not a pipe, a file or /dev/null).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// demo runs an aggregator and five senders in one process, on loopback,
// stops the aggregator for a while and reports how the system recovered.
// One goroutine (run) drives the phases; the senders' observers and the
// aggregator's log record what happened, at the time it happened.
type demo struct {
	out                        io.Writer
	start                      time.Time
	tl                         *timeline
	table                      *liveTable // nil: a plain timeline
	duration, stopAt, downtime time.Duration
	http                       string
	data                       string // the store's directory: a temporary one

	key     crypto.PrivKey
	listen  string
	agg     *runningAggregator
	aggID   peer.ID
	beats   uint64 // received by aggregator runs already stopped
	senders []*demoSender

	stoppedAt, endedAt time.Time
	interrupted        bool

	mu            sync.Mutex        // guards what the observers and logs record, and restartedAt
	restartedAt   time.Time         // written by run only
	aggState      map[string]string // the aggregator's view, from its log: nickname → state
	aggChanged    chan struct{}     // closed and replaced at every change of aggState
	sendersBackAt time.Time
	nodesUpAt     time.Time
}

type demoSender struct {
	name string
	fork bool
	host host.Host
	svc  *heartbeat.Service

	mu       sync.Mutex
	state    fsm.State
	beatings int // transitions into Beating
}

func newDemo(out io.Writer, start time.Time, table bool) *demo {
	d := &demo{out: out, start: start, aggState: make(map[string]string), aggChanged: make(chan struct{})}
	emit := func(line string) { fmt.Fprintln(out, line) }
	if table {
		d.table = newLiveTable(out)
		emit = d.table.event
	}
	d.tl = newTimeline(start, emit)
	return d
}

func (d *demo) say(format string, args ...any) {
	d.tl.line(time.Now(), "demo", fmt.Sprintf(format, args...))
}

func (d *demo) run(ctx context.Context) error {
	var err error
	if d.key, _, err = crypto.GenerateEd25519Key(nil); err != nil {
		return err
	}
	if d.aggID, err = peer.IDFromPrivateKey(d.key); err != nil {
		return err
	}
	// The aggregator comes back on the ports it had. Ports the kernel picks
	// for port 0 come from its ephemeral range, which it also hands to
	// outgoing connections: on a busy machine one of those took the freed
	// port during the outage and the restart failed with "address already
	// in use". Ports below that range are only ever taken by an explicit
	// bind.
	port, err := restartablePort("127.0.0.1")
	if err != nil {
		return err
	}
	d.listen = fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)
	if host, p, err := net.SplitHostPort(d.http); err == nil && p == "0" {
		if port, err = restartablePort(host); err != nil {
			return err
		}
		d.http = net.JoinHostPort(host, strconv.Itoa(port))
	}
	// The store lives for the run: the restarted aggregator finds the
	// nodes it knew (not yet seen until they beat again).
	if d.data, err = os.MkdirTemp("", "heartbeat-demo-"); err != nil {
		return fmt.Errorf("demo store: %w", err)
	}
	defer os.RemoveAll(d.data)
	if err := d.startAggregator(); err != nil {
		return err
	}
	// Restart on the same port, and keep the HTTP URL stable too.
	d.listen = d.agg.host.Addrs()[0].String()
	d.http = d.agg.httpURL[len("http://"):]
	target := d.agg.dialable()
	d.say("aggregator %s", target)
	d.say("dashboard  %s/  (live for the whole run; offline while the aggregator is stopped)", d.agg.httpURL)
	d.say("http       %s/api/nodes  %s/api/summary  %s/metrics", d.agg.httpURL, d.agg.httpURL, d.agg.httpURL)
	d.say("%d senders beat every 1s; the aggregator stops at +%s and comes back at +%s", demoNodes, d.stopAt, d.stopAt+d.downtime)
	d.say("node-%d is on a fork on purpose (same heights, other heads), so it shows \"in dispute\":", demoNodes)
	d.say("an Up node whose head is not the one most Up nodes report")

	// Every sender exists before any starts: their observers read the list.
	for i := 1; i <= demoNodes; i++ {
		s, err := d.newSender(i, target)
		if err != nil {
			d.shutdown()
			return err
		}
		d.senders = append(d.senders, s)
	}
	for _, s := range d.senders {
		if err := s.svc.Start(context.Background()); err != nil {
			d.shutdown()
			return err
		}
	}

	err = d.loop(ctx)
	d.endedAt = time.Now()
	if d.table != nil {
		d.table.finish(d.rows(), d.status())
	}
	d.shutdown()
	d.tl.flush()
	d.report()
	return err
}

// loop drives the phases until the run ends, is interrupted, or fails.
func (d *demo) loop(ctx context.Context) error {
	tick := time.NewTicker(demoTick)
	defer tick.Stop()
	last := ""
	for {
		select {
		case <-ctx.Done():
			// Interrupted (SIGINT/SIGTERM): a clean stop, and an honest report.
			d.interrupted = true
			return nil
		case <-tick.C:
		}
		now := time.Now()
		elapsed := now.Sub(d.start)
		switch {
		case d.stoppedAt.IsZero() && elapsed >= d.stopAt && d.beatingCount() == demoNodes:
			// Stop only once every sender is beating, however slow the start.
			d.say("stopping the aggregator")
			d.stoppedAt = time.Now()
			d.stopAggregator()
		case !d.stoppedAt.IsZero() && d.restartedAt.IsZero() && now.Sub(d.stoppedAt) >= d.downtime:
			d.mu.Lock() // the observers read it
			d.restartedAt = time.Now()
			d.mu.Unlock()
			if err := d.startAggregator(); err != nil {
				return fmt.Errorf("restart the aggregator: %w", err)
			}
			d.say("aggregator back, same identity and address")
		}
		if line := summaryLine(d.agg != nil, d.summary()); line != last {
			last = line
			d.tl.line(time.Now(), "aggregator", "      "+line)
		}
		if d.table != nil {
			d.table.draw(d.rows(), d.status())
		}
		if (elapsed >= d.duration && d.recovered()) || elapsed >= d.duration+demoGrace {
			return nil
		}
	}
}

func (d *demo) summary() tracker.Summary {
	if d.agg == nil {
		return tracker.Summary{}
	}
	return d.agg.agg.Tracker().Summary()
}

func (d *demo) recovered() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.sendersBackAt.IsZero() && !d.nodesUpAt.IsZero()
}

// summaryLine is the aggregator's view in one line. It leaves out the
// height, which grows every epoch: the line prints only when membership
// or consensus changes.
func summaryLine(up bool, sum tracker.Summary) string {
	if !up {
		return "down"
	}
	unseen := ""
	if n := sum.ByState[tracker.Unknown]; n > 0 {
		// Restored from the store after the restart, not beating yet.
		unseen = fmt.Sprintf(", not yet seen %d", n)
	}
	return fmt.Sprintf("nodes %d: up %d, suspect %d, down %d, left %d%s; in consensus %d, in dispute %d",
		sum.Nodes, sum.ByState[tracker.Up], sum.ByState[tracker.Suspect], sum.ByState[tracker.Down], sum.ByState[tracker.Left],
		unseen, sum.InConsensus, sum.InDispute)
}

func (d *demo) beatingCount() int {
	n := 0
	for _, s := range d.senders {
		s.mu.Lock()
		if s.state == fsm.Beating {
			n++
		}
		s.mu.Unlock()
	}
	return n
}

func (d *demo) startAggregator() error {
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Info, JSONFormat: true, Output: logWriter{t: d.tl, who: "aggregator", seen: d.aggregatorLog}})
	routeLibp2pLogs(hclog.New(&hclog.LoggerOptions{Level: hclog.Info, JSONFormat: true, Output: logWriter{t: d.tl, who: "libp2p"}}))
	d.mu.Lock()
	clear(d.aggState) // a new aggregator starts with no nodes
	d.mu.Unlock()
	r, err := startAggregator(aggregatorSetup{
		key: d.key, listen: d.listen, http: d.http, log: log, data: d.data,
		// The senders' GoAway at the stop spreads their return over
		// demoPacingWindow, not the default minute, which would outlast
		// the run.
		cfg: aggregator.Config{ExpectedPeriod: time.Second, MaxNodes: 100, PacingWindow: demoPacingWindow},
	})
	if err != nil {
		return err
	}
	d.agg = r
	return nil
}

// aggregatorLog follows the aggregator's view of the nodes from its state
// change lines, to time the recovery to the line.
func (d *demo) aggregatorLog(at time.Time, m map[string]any) {
	if m["@message"] != "node state changed" {
		return
	}
	nick, _ := m["nickname"].(string)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.aggState[nick], _ = m["to"].(string)
	close(d.aggChanged)
	d.aggChanged = make(chan struct{})
	up := 0
	for _, st := range d.aggState {
		if st == tracker.Up.String() {
			up++
		}
	}
	if up == demoNodes && !d.restartedAt.IsZero() && d.nodesUpAt.IsZero() {
		d.nodesUpAt = at
	}
}

func (d *demo) stopAggregator() {
	if d.agg == nil {
		return
	}
	d.beats += d.agg.agg.Tracker().Summary().Beats
	if err := d.agg.stop(); err != nil {
		d.say("aggregator stop: %v", err)
	}
	d.agg = nil
}

// newSender builds sender i, not started yet.
func (d *demo) newSender(i int, target string) (*demoSender, error) {
	h, err := libp2p.New(libp2p.NoListenAddrs)
	if err != nil {
		return nil, fmt.Errorf("sender host: %w", err)
	}
	s := &demoSender{name: fmt.Sprintf("node-%d", i), host: h, fork: i == demoNodes}
	// 30 s epochs, as Filecoin's; the last node is on a fork: in dispute.
	chain := syntheticChain{genesis: mainnetGenesis, period: 30 * time.Second, now: time.Now}
	if s.fork {
		chain.fork = "fork"
	}
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Info, JSONFormat: true, Output: logWriter{t: d.tl, who: s.name}})
	// Protocol v2 (auto, the default): the table's RTT is the senders' own
	// Beat-to-Ack round trip, and the aggregator's stop reaches them as a
	// GoAway with a retry-after.
	s.svc, err = heartbeat.New(h, heartbeat.Config{
		BeatTarget: target, BeatPeriod: "1s", ReconnectPeriod: "2s", Nickname: s.name,
	}, chain.head,
		heartbeat.WithLogger(log),
		heartbeat.WithObserver(func(o heartbeat.Observation) {
			if o.From == o.To {
				return
			}
			d.tl.transition(o.At, s.name, o.From, o.To)
			s.mu.Lock()
			s.state = o.To
			if o.To == fsm.Beating {
				s.beatings++
			}
			s.mu.Unlock()
			if o.To == fsm.Beating {
				d.senderBeating(o.At)
			}
		}),
	)
	if err != nil {
		h.Close()
		return nil, err
	}
	return s, nil
}

// senderBeating times the moment every sender beats again after the restart.
func (d *demo) senderBeating(at time.Time) {
	if d.beatingCount() != demoNodes {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.restartedAt.IsZero() && d.sendersBackAt.IsZero() && at.After(d.restartedAt) {
		d.sendersBackAt = at
	}
}

// shutdown stops the senders, which close their streams in order, then
// the aggregator. It gives the aggregator up to demoLeftWait to read each
// end and mark the node Left before the senders' hosts close: closing a
// host right after a stream can drop the stream's queued end, which the
// aggregator then sees as a reset.
func (d *demo) shutdown() {
	for _, s := range d.senders {
		_ = s.svc.Close()
	}
	if d.agg != nil {
		d.waitLeft(demoLeftWait)
	}
	for _, s := range d.senders {
		_ = s.host.Close()
	}
	d.stopAggregator()
}

// demoLeftWait bounds the wait for the aggregator to mark the stopped
// senders Left; on loopback it takes milliseconds.
const demoLeftWait = 2 * time.Second

// waitLeft waits until the aggregator has no sender in a state other than
// Left, or until limit passes.
func (d *demo) waitLeft(limit time.Duration) {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for {
		d.mu.Lock()
		changed, pending := d.aggChanged, 0
		for _, st := range d.aggState {
			if st != tracker.Left.String() {
				pending++
			}
		}
		d.mu.Unlock()
		if pending == 0 {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			return
		}
	}
}

// report prints what happened, after the shutdown lines. Each recovery
// figure is measured from the events themselves, and an interrupted run
// says how far it got instead of claiming an outcome.
func (d *demo) report() {
	received := d.beats
	var sent uint64
	reconnects := 0
	for _, s := range d.senders {
		sent += s.svc.Status().BeatsSent
		s.mu.Lock()
		reconnects += max(s.beatings-1, 0)
		s.mu.Unlock()
	}
	d.mu.Lock()
	sendersBackAt, nodesUpAt := d.sendersBackAt, d.nodesUpAt
	d.mu.Unlock()
	w := d.out
	fmt.Fprintln(w)
	fmt.Fprintln(w, "report")
	ran := d.endedAt.Sub(d.start).Round(100 * time.Millisecond)
	if d.interrupted {
		fmt.Fprintf(w, "  run                     interrupted at +%s\n", ran)
	} else {
		fmt.Fprintf(w, "  run                     %s\n", ran)
	}
	fmt.Fprintf(w, "  senders                 %d\n", demoNodes)
	fmt.Fprintf(w, "  heartbeats sent         %d\n", sent)
	note := ""
	if received < sent {
		note = fmt.Sprintf(" (%d in flight when an aggregator stopped)", sent-received)
	}
	fmt.Fprintf(w, "  heartbeats received     %d%s\n", received, note)
	fmt.Fprintf(w, "  reconnects              %d\n", reconnects)
	fmt.Fprintf(w, "  round trip (v2 acks)    %s\n", d.roundTrips())
	switch {
	case d.stoppedAt.IsZero() && d.interrupted:
		fmt.Fprintf(w, "  recovery                not tested: interrupted before the aggregator stop due at +%s\n", d.stopAt)
		return
	case d.stoppedAt.IsZero():
		fmt.Fprintf(w, "  recovery                not tested: the senders were not all beating by the end, so the aggregator was never stopped\n")
		return
	case d.restartedAt.IsZero():
		fmt.Fprintf(w, "  recovery                not tested: interrupted while the aggregator was down (stopped at +%s, restart due at +%s)\n",
			d.since(d.stoppedAt), d.since(d.stoppedAt.Add(d.downtime)))
		return
	}
	fmt.Fprintf(w, "  aggregator down         %s (+%s to +%s)\n", d.restartedAt.Sub(d.stoppedAt).Round(time.Millisecond),
		d.since(d.stoppedAt), d.since(d.restartedAt))
	fmt.Fprintf(w, "  all senders beating     %s\n", d.after(sendersBackAt))
	fmt.Fprintf(w, "  all nodes up            %s (aggregator's view)\n", d.after(nodesUpAt))
}

// roundTrips lists each sender's smoothed Beat-to-Ack round trip (RFC
// 6298), "-" for one that has none (no Ack yet, or it spoke v1).
func (d *demo) roundTrips() string {
	parts := make([]string, 0, len(d.senders))
	for _, s := range d.senders {
		parts = append(parts, s.name+" "+rttText(s.svc.Status().SmoothedRTT))
	}
	return strings.Join(parts, ", ")
}

func (d *demo) since(t time.Time) time.Duration { return t.Sub(d.start).Round(10 * time.Millisecond) }

// after says when t came after the restart, or why it did not come.
func (d *demo) after(t time.Time) string {
	switch {
	case !t.IsZero():
		return t.Sub(d.restartedAt).Round(time.Millisecond).String() + " after the restart"
	case d.interrupted:
		return "not yet when the run was interrupted"
	}
	return "not within the run"
}

// Ports the demo picks for itself: below Linux's default ephemeral range
// (32768–60999, net.ipv4.ip_local_port_range) and the IANA dynamic range
// (49152–65535) that macOS, the BSDs and Windows use, so that no outgoing
// connection takes one while the aggregator is down.
const demoPortLow, demoPortHigh = 20000, 32767

// restartablePort returns a port in [demoPortLow, demoPortHigh] free on
// host now, tried in a random order; an error if 100 tries find none.
func restartablePort(host string) (int, error) {
	var err error
	for range 100 {
		port := demoPortLow + rand.IntN(demoPortHigh-demoPortLow+1)
		var ln net.Listener
		if ln, err = net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port))); err == nil {
			return port, ln.Close()
		}
	}
	return 0, fmt.Errorf("no free port on %s in %d-%d: %w", host, demoPortLow, demoPortHigh, err)
}
