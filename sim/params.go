package sim

import (
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	hbaggregator "github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/aggregator/pacing"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/wire2"
)

// MaxNodes bounds Params.Nodes: node ids are five or more digits and node
// indices travel in 32-bit event fields.
const MaxNodes = 1_000_000

// DefaultStart is the virtual time a run starts at when Params.Start is zero.
// A fixed instant (not the wall clock, not 1970) keeps traces reproducible
// and readable.
var DefaultStart = time.Date(2025, time.January, 1, 0, 0, 0, 0, time.UTC)

// Params configures one run. Nodes and Duration are required; every other
// zero field takes the default its comment gives. Run validates Params and
// names the offending field in its error.
type Params struct {
	// Nodes is the number of simulated senders, 1 to MaxNodes.
	Nodes int
	// Duration is the virtual time simulated. Scenarios with faults need
	// room for their faults and a liveness phase after the last one heals;
	// Run says how much when Duration is too short.
	Duration time.Duration
	// Seed drives every random choice of the run.
	Seed uint64
	// Scenario names a built-in scenario (see Scenarios); "" means "steady".
	Scenario string
	// Script adds fault actions to the scenario's own, at times relative to
	// the start of the run.
	Script []Action

	// Trace, if not nil, receives the text trace: one line per state
	// change, log line, dial, stream end, tracker change, fault and sample.
	// Report.TraceHash is the FNV-64a hash of exactly these bytes, computed
	// whether or not Trace is set.
	Trace io.Writer
	// TraceBeats adds a line for every heartbeat sent and received. It
	// makes the trace (and its hash) much larger and the run slower.
	TraceBeats bool
	// CSV, if not nil, receives the samples (per-state counts over time) as
	// CSV, with a header row.
	CSV io.Writer
	// SampleEvery is the period of the samples; default: Duration/30
	// rounded up to a round value (1s, 2s, 5s, 10s, 15s, 30s, 1m, ...).
	// A sample is also taken right after every fault begins and heals.
	SampleEvery time.Duration

	// Sender is the senders' machine configuration; the zero value means
	// fsm.DefaultConfig(). Its Seed is ignored: each node's machine seed is
	// derived from Seed, its index and its restart count.
	Sender fsm.Config
	// Tracker configures the simulated aggregator's tracker. Zero fields
	// take the tracker's defaults, except ExpectedPeriod (default
	// Sender.BeatPeriod) and MaxNodes (default max(Nodes, the tracker's)).
	Tracker tracker.Config
	// Network configures the network model; zero fields take defaults.
	Network Network
	// StartWithin spreads the nodes' start times uniformly over
	// [0, StartWithin); default 10s, so beats do not all fall on the same
	// instants. Negative means every node starts at once.
	StartWithin time.Duration
	// Start is the virtual time of the start of the run; default
	// DefaultStart.
	Start time.Time

	// Protocol is what the senders speak (default ProtocolV1); the
	// simulated aggregator serves both, as aggregator.DefaultProtocols.
	Protocol Protocol
	// Pacing is the simulated aggregator's reconnect pacing of new v2
	// streams; zero fields take the real aggregator's defaults.
	Pacing Pacing

	// hooks lets tests inside the package break things on purpose.
	hooks *hooks
}

// Network is the network model's configuration. The zero value of each
// field means the default given in its comment.
type Network struct {
	// MinLatency and MaxLatency bound each node's base one-way latency to
	// the aggregator, drawn once per node, uniformly (default 10ms and
	// 150ms).
	MinLatency, MaxLatency time.Duration
	// Jitter is added to the latency of every message, uniformly in
	// [0, Jitter) (default 10ms). Streams stay ordered: a message never
	// arrives before one sent earlier on the same connection.
	Jitter time.Duration
	// SendWindow is the per-stream send window in bytes: writes complete at
	// once while the bytes the aggregator has not read fit in it, then
	// block (default 256 KiB, yamux's).
	SendWindow int
	// LineSize is the size of one heartbeat line in bytes (default: the
	// encoded size of a simulated heartbeat, about 130 bytes).
	LineSize int
	// KeepAliveInterval and KeepAliveTimeout: a connection whose path goes
	// silent (partition, paused peer, round trip above the timeout) dies
	// between KeepAliveTimeout and KeepAliveInterval+KeepAliveTimeout
	// later, on both sides (default 30s and 10s, yamux's keepalive).
	KeepAliveInterval, KeepAliveTimeout time.Duration
	// IdleTimeout is the aggregator's read deadline per stream: a stream
	// with no line for that long is reset (default 30s).
	IdleTimeout time.Duration
	// SweepEvery is how often the aggregator runs the tracker's silence
	// detection (default 1s).
	SweepEvery time.Duration
}

// Network defaults.
const (
	DefaultMinLatency        = 10 * time.Millisecond
	DefaultMaxLatency        = 150 * time.Millisecond
	DefaultJitter            = 10 * time.Millisecond
	DefaultSendWindow        = 256 << 10
	DefaultKeepAliveInterval = 30 * time.Second
	DefaultKeepAliveTimeout  = 10 * time.Second
	DefaultIdleTimeout       = 30 * time.Second
	DefaultSweepEvery        = time.Second
	DefaultStartWithin       = 10 * time.Second
)

// Protocol is the heartbeat protocol the simulated senders speak.
type Protocol uint8

// The protocol mixes. Every v2 sender drives its machine with the v2
// events (Welcome, Ack, Ack overdue, GoAway); the aggregator answers it as
// aggregator/v2.go does.
const (
	// ProtocolV1: every sender speaks fil/heartbeat/1.0.0 (JSON lines, no
	// acknowledgement). The default, so that every run, trace and figure
	// from before v2 replays byte for byte.
	ProtocolV1 Protocol = iota
	// ProtocolV2: every sender speaks /fil/heartbeat/2.0.0.
	ProtocolV2
	// ProtocolMixed: nodes 0 to Nodes/2-1 speak v1, the others v2 (by
	// index, not drawn, so a trace tells them apart: the upper half is v2).
	ProtocolMixed
)

var protocolNames = [...]string{"v1", "v2", "mixed"}

// String is the name ParseProtocol takes: "v1", "v2" or "mixed".
func (p Protocol) String() string {
	if int(p) < len(protocolNames) {
		return protocolNames[p]
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// ParseProtocol parses "v1", "v2" or "mixed".
func ParseProtocol(s string) (Protocol, error) {
	for i, n := range protocolNames {
		if s == n {
			return Protocol(i), nil
		}
	}
	return 0, fmt.Errorf("sim: protocol %q: want v1, v2 or mixed", s)
}

// Pacing is the simulated aggregator's reconnect pacing, as
// aggregator.Config's AcceptRate and PacingWindow, run by the aggregator's
// own code (package aggregator/pacing, on the virtual clock, fresh when
// the aggregator starts): at most AcceptRate new v2 streams in any second;
// past it a new v2 stream gets GoAway whose retry-after is its slot (at
// most PacingWindow) and is closed in order. A stream from a node the
// tracker holds Up or Suspect is not paced. Shutdown's and a full
// tracker's GoAway draw the retry-after uniformly from [0, PacingWindow).
// v1 streams are never paced and take no room, as in the real aggregator:
// a v1 sender cannot be told when to come back.
type Pacing struct {
	// AcceptRate is new v2 streams per second; 0 takes
	// aggregator.DefaultAcceptRate, negative turns pacing off.
	AcceptRate float64
	// PacingWindow bounds GoAway's retry-after, at most
	// wire2.MaxRetryAfter; 0 takes aggregator.DefaultPacingWindow.
	PacingWindow time.Duration
}

// hooks are test-only ways to make the simulator misbehave, so the tests can
// prove the invariants catch it.
type hooks struct {
	// afterStep may append fake effects to what a machine returned; the
	// shell then executes and checks them as if the machine had.
	afterStep func(node int, now time.Time, effects []fsm.Effect) []fsm.Effect
	// dropLine, if it returns true, makes the aggregator lose a line from
	// node (a buggy handler): the stream stays open, the tracker never
	// hears of the beat.
	dropLine func(node int, now time.Time) bool
	// checkerPolicy, if set, is the backoff policy the invariant checker
	// believes in (the machines run with Params.Sender's).
	checkerPolicy *fsm.BackoffPolicy
	// ackSeq, if set, is the seq the aggregator acknowledges when it read
	// node's Beat seq (a buggy v2 handler).
	ackSeq func(node int, seq uint32) uint32
}

// config is Params with every default applied, validated.
type config struct {
	Params
	sender     fsm.Config
	tracker    tracker.Config // defaults applied
	trackerIn  tracker.Config // as given (plus the simulator's defaults), for tracker.New
	net        Network
	start      time.Time
	sample     time.Duration
	lineSize   int
	policy     fsm.BackoffPolicy // what the checker believes
	liveness   time.Duration     // bound for the liveness phase
	normalSpan time.Duration     // see beatsNormally
	// slowPeriod, when set, is the BeatPeriod of every odd-indexed node
	// (scenario mixed-periods: alert senders beside default ones).
	slowPeriod time.Duration
	// newcomer, when set, starts the last node just after the warm-up
	// (scenario sybil-fill: an honest sender arriving after a flood).
	newcomer bool
	// pacing with its defaults applied; rate 0 means no pacing.
	pacing Pacing
	// v2From is the index of the first v2 node (Nodes: none).
	v2From int32
	// frameSize is the size of one v2 Beat frame in bytes.
	frameSize int
}

// v2 reports whether node idx speaks protocol v2.
func (c *config) v2(idx int32) bool { return idx >= c.v2From }

// anyV2 reports whether some node speaks protocol v2.
func (c *config) anyV2() bool { return int(c.v2From) < c.Nodes }

// senderFor is node idx's machine configuration.
func (c *config) senderFor(idx int32) fsm.Config {
	cfg := c.sender
	if c.slowPeriod > 0 && idx%2 == 1 {
		cfg.BeatPeriod = c.slowPeriod
	}
	return cfg
}

// periodFor is node idx's BeatPeriod.
func (c *config) periodFor(idx int32) time.Duration { return c.senderFor(idx).BeatPeriod }

// spanFor is how long node idx must have beaten normally for the tracker
// to see it Up: one Suspect threshold of its own period (the tracker scales
// SuspectAfter by each node's learned period) plus the slowest delivery.
func (c *config) spanFor(idx int32) time.Duration {
	p := c.periodFor(idx)
	if p == c.tracker.ExpectedPeriod {
		return c.normalSpan
	}
	return time.Duration(float64(c.tracker.SuspectAfter)*float64(p)/float64(c.tracker.ExpectedPeriod)) + c.net.MaxLatency + c.net.Jitter
}

// ParamError is an invalid Params field: Field names it by its Go path
// ("Nodes", "Network.MaxLatency"), Reason says why, naming by their Go
// names the fields it was checked against.
type ParamError struct {
	Field, Reason string
}

func (e *ParamError) Error() string { return "sim: Params." + e.Field + " " + e.Reason }

func fieldErr(field, format string, args ...any) error {
	return &ParamError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// resolve applies the defaults and validates p.
func (p Params) resolve() (*config, error) {
	c := &config{Params: p}
	if p.Nodes < 1 || p.Nodes > MaxNodes {
		return nil, fieldErr("Nodes", "must be between 1 and %d, got %d", MaxNodes, p.Nodes)
	}
	if p.Duration <= 0 {
		return nil, fieldErr("Duration", "must be positive, got %s", p.Duration)
	}
	if p.Duration > 10*365*24*time.Hour {
		return nil, fieldErr("Duration", "must be at most ten years of virtual time, got %s", p.Duration)
	}
	c.sender = p.Sender
	if c.sender == (fsm.Config{}) {
		c.sender = fsm.DefaultConfig()
	}
	if err := c.sender.Validate(); err != nil {
		return nil, fmt.Errorf("sim: Params.Sender: %w", err)
	}
	if b := c.sender.Backoff; b.Growth > 1 && b.Max == 0 {
		return nil, fieldErr("Sender.Backoff.Max", "must be set when Growth > 1: without a cap no liveness bound exists")
	}
	c.policy = c.sender.Backoff
	if p.hooks != nil && p.hooks.checkerPolicy != nil {
		c.policy = *p.hooks.checkerPolicy
	}

	c.tracker = p.Tracker
	if c.tracker.ExpectedPeriod == 0 {
		c.tracker.ExpectedPeriod = c.sender.BeatPeriod
	}
	if c.tracker.MaxNodes == 0 {
		c.tracker.MaxNodes = max(p.Nodes, tracker.DefaultMaxNodes)
	}
	// The scenario may set tracker fields (sybil-fill: MaxNodes,
	// DownRetention) before the defaults are applied.
	sc, scOK := findScenario(p.Scenario)
	if scOK && sc.prepare != nil {
		sc.prepare(c)
	}
	// trackerIn is what the aggregator is built with; c.tracker, with every
	// default applied, is what the checks read. They differ: a negative
	// ReconnectAllowance or StartupGrace ("none") reads back as 0, which
	// tracker.New would take for "the default".
	c.trackerIn = c.tracker
	probe, err := tracker.New(c.trackerIn, DefaultStart)
	if err != nil {
		return nil, fmt.Errorf("sim: Params.Tracker: %w", err)
	}
	c.tracker = probe.Config()

	n := p.Network
	setDur := func(d *time.Duration, def time.Duration, name string) error {
		switch {
		case *d < 0:
			return fieldErr("Network."+name, "must not be negative, got %s", *d)
		case *d == 0:
			*d = def
		}
		return nil
	}
	for _, f := range []struct {
		d    *time.Duration
		def  time.Duration
		name string
	}{
		{&n.MinLatency, DefaultMinLatency, "MinLatency"},
		{&n.MaxLatency, DefaultMaxLatency, "MaxLatency"},
		{&n.Jitter, DefaultJitter, "Jitter"},
		{&n.KeepAliveInterval, DefaultKeepAliveInterval, "KeepAliveInterval"},
		{&n.KeepAliveTimeout, DefaultKeepAliveTimeout, "KeepAliveTimeout"},
		{&n.IdleTimeout, DefaultIdleTimeout, "IdleTimeout"},
		{&n.SweepEvery, DefaultSweepEvery, "SweepEvery"},
	} {
		if err := setDur(f.d, f.def, f.name); err != nil {
			return nil, err
		}
	}
	if n.MaxLatency < n.MinLatency {
		return nil, fieldErr("Network.MaxLatency", "(%s) must be at least MinLatency (%s)", n.MaxLatency, n.MinLatency)
	}
	// Beats arrive BeatPeriod apart give or take the latency spread; if the
	// spread could push a gap past SuspectAfter, a healthy node would turn
	// Suspect and the "no node Down while it beats normally" invariant would
	// be meaningless.
	if spread := n.MaxLatency - n.MinLatency + n.Jitter; c.sender.BeatPeriod+spread >= c.tracker.SuspectAfter {
		return nil, fieldErr("Network.MaxLatency", "spread (MaxLatency-MinLatency+Jitter = %s) plus BeatPeriod (%s) must stay below the tracker's SuspectAfter (%s)",
			spread, c.sender.BeatPeriod, c.tracker.SuspectAfter)
	}
	if n.SendWindow < 0 {
		return nil, fieldErr("Network.SendWindow", "must not be negative, got %d", n.SendWindow)
	}
	if n.SendWindow == 0 {
		n.SendWindow = DefaultSendWindow
	}
	if n.LineSize < 0 {
		return nil, fieldErr("Network.LineSize", "must not be negative, got %d", n.LineSize)
	}
	c.lineSize = n.LineSize
	if c.lineSize == 0 {
		c.lineSize = defaultLineSize()
	}
	if n.SendWindow < c.lineSize {
		return nil, fieldErr("Network.SendWindow", "(%d) must hold at least one line (%d bytes)", n.SendWindow, c.lineSize)
	}
	c.net = n

	switch {
	case p.StartWithin < 0:
		c.StartWithin = 0
	case p.StartWithin == 0:
		c.StartWithin = DefaultStartWithin
	}
	c.start = p.Start
	if c.start.IsZero() {
		c.start = DefaultStart
	}
	// Round(0) strips a monotonic reading; UTC keeps the trace readable.
	c.start = c.start.Round(0)

	c.sample = p.SampleEvery
	if c.sample < 0 {
		return nil, fieldErr("SampleEvery", "must not be negative, got %s", p.SampleEvery)
	}
	if c.sample == 0 {
		c.sample = roundUp(p.Duration / 30)
	}
	if p.Duration/c.sample > 1_000_000 {
		return nil, fieldErr("SampleEvery", "(%s) gives more than a million samples over %s", c.sample, p.Duration)
	}

	switch p.Protocol {
	case ProtocolV1:
		c.v2From = int32(p.Nodes)
	case ProtocolV2:
		c.v2From = 0
	case ProtocolMixed:
		c.v2From = int32(p.Nodes / 2)
	default:
		return nil, fieldErr("Protocol", "must be ProtocolV1, ProtocolV2 or ProtocolMixed, got %d", p.Protocol)
	}
	pc := p.Pacing
	switch {
	case pc.AcceptRate == 0:
		pc.AcceptRate = hbaggregator.DefaultAcceptRate
	case pc.AcceptRate < 0:
		pc.AcceptRate = 0
	}
	if math.IsNaN(pc.AcceptRate) || math.IsInf(pc.AcceptRate, 0) {
		return nil, fieldErr("Pacing.AcceptRate", "must be a finite number, got %v", pc.AcceptRate)
	}
	if pc.AcceptRate > 0 && (pc.AcceptRate < pacing.MinRate || pc.AcceptRate > pacing.MaxRate) {
		return nil, fieldErr("Pacing.AcceptRate", "must be between %g and %g a second, or negative, got %v", float64(pacing.MinRate), float64(pacing.MaxRate), pc.AcceptRate)
	}
	if pc.PacingWindow < 0 || pc.PacingWindow > wire2.MaxRetryAfter {
		return nil, fieldErr("Pacing.PacingWindow", "must be between 0 and %s, got %s", wire2.MaxRetryAfter, pc.PacingWindow)
	}
	if pc.PacingWindow == 0 {
		pc.PacingWindow = hbaggregator.DefaultPacingWindow
	}
	c.pacing = pc
	c.frameSize = defaultFrameSize()

	c.liveness = livenessBound(c)
	// A node has beaten normally for this long when the tracker must see it
	// Up: one SuspectAfter of silence plus the slowest delivery.
	c.normalSpan = c.tracker.SuspectAfter + n.MaxLatency + n.Jitter
	return c, nil
}

// livenessBound is how long after the last fault heals every node must be
// Beating and Up at the aggregator. The worst case chains: the slowest
// detection of a broken stream or dial (dial or write timeout, keepalive,
// idle timeout), the longest retry delay, a full connection handshake (two
// round trips) and the first heartbeat's trip, plus a beat and a sweep of
// slack.
func livenessBound(c *config) time.Duration {
	maxLat := c.net.MaxLatency + c.net.Jitter
	detect := max(c.sender.DialTimeout, c.sender.WriteTimeout,
		c.net.KeepAliveInterval+c.net.KeepAliveTimeout, c.net.IdleTimeout)
	retry := c.sender.Backoff.Delay(1, 1)
	if b := c.sender.Backoff; b.Growth > 1 {
		retry = b.Delay(1<<20, 1) // saturated at Max (+jitter)
	}
	bound := detect + retry + 6*maxLat + max(c.sender.BeatPeriod, c.slowPeriod) + c.net.SweepEvery + 5*time.Second
	if c.anyV2() {
		bound += c.pacingBound()
	}
	return bound
}

// pacingBound is what v2 adds to the liveness bound: the time the
// aggregator's pacing needs to admit every v2 node at its accept rate,
// plus two longest GoAway waits (the window plus the sender's upward
// spread): one for a GoAway at shutdown or from a busy aggregator, one
// more for a node paced again on its return. It is not a worst case (a
// node back at its slot can find the rate taken by newcomers and be paced
// again), but the slots use only pacing.Headroom of the rate, so a third
// GoAway in a row is rare; a seed that hits one fails liveness and says
// so.
func (c *config) pacingBound() time.Duration {
	wait := c.sender.Backoff.After(c.pacing.PacingWindow, c.sender.BeatPeriod, fsm.MaxRetryAfter, 1)
	var admit time.Duration
	if c.pacing.AcceptRate > 0 {
		v2 := float64(c.Nodes - int(c.v2From))
		admit = time.Duration(v2 / c.pacing.AcceptRate * float64(time.Second))
	}
	return admit + 2*wait
}

// roundUp rounds d up to a round sampling period.
func roundUp(d time.Duration) time.Duration {
	steps := []time.Duration{
		time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second, 30 * time.Second,
		time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 30 * time.Minute,
		time.Hour, 2 * time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour,
	}
	for _, s := range steps {
		if d <= s {
			return s
		}
	}
	return (d + 24*time.Hour - 1) / (24 * time.Hour) * (24 * time.Hour)
}

// errTooShort is matched by the error Run returns when Duration cannot hold
// the scenario's faults and its liveness phase.
var errTooShort = errors.New("too short for the scenario")
