package sim

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"
)

// FaultKind names a fault an Action injects.
type FaultKind uint8

// The faults. Those with a duration (Action.For) heal by themselves at
// At+For; AggregatorResetAll is instantaneous.
const (
	// AggregatorCrash kills the aggregator process: every connection is
	// reset (the senders see RemoteReset), dials are refused at once, and
	// after For it restarts with an empty tracker.
	AggregatorCrash FaultKind = iota + 1
	// AggregatorShutdown is an orderly stop: every stream is closed (the
	// senders see RemoteClosed), dials are refused, and after For it starts
	// again with an empty tracker.
	AggregatorShutdown
	// AggregatorStall makes the aggregator stop reading its streams for
	// For: lines pile up in the send windows, the tracker sees silence, and
	// writers block once a window is full. It still accepts connections and
	// streams, answers keepalives and sweeps. On resume it reads the backlog.
	AggregatorStall
	// AggregatorResetAll resets every open stream at once; connections stay.
	AggregatorResetAll
	// Partition silences the selected nodes' paths for For: nothing is
	// delivered either way (it is held and delivered on heal if the
	// connection survived), new dials hang, and keepalive kills the
	// connections if the partition outlasts it.
	Partition
	// NodeCrash kills the selected nodes' processes (their kernel resets
	// their connections); after For each starts again as a fresh process
	// with a fresh machine.
	NodeCrash
	// NodePause freezes the selected nodes for For (SIGSTOP, a VM pause, a
	// long GC): they handle nothing, their timers fire late, and keepalive
	// or the aggregator's idle timeout may end their streams meanwhile.
	NodePause
	// DialBlackhole makes new connections from the selected nodes hang
	// (their SYNs are dropped) for For; established connections are fine.
	// A dial that hangs ends only at the sender's dial timeout.
	DialBlackhole
	// LatencySpike adds Extra one-way latency on the selected nodes' paths
	// for For. A round trip above the keepalive timeout kills connections;
	// handshakes slower than the dial timeout fail.
	LatencySpike
	// Impostor runs, for For, a second sender with each selected node's
	// key (a copied identity, or one target given twice): it opens a
	// stream, beats every BeatPeriod, and when its stream is superseded
	// opens a new one within one BeatPeriod, superseding the node's own.
	// On heal it is killed: its stream, if it holds one, is reset.
	Impostor
	// SybilFill opens, at At, streams under throwaway identities until the
	// tracker is full; each beats once and is reset (the identities are
	// never seen again). It lasts For, which must cover the tracker's
	// DownRetention so that honest newcomers get in before it heals.
	SybilFill

	numFaults
)

var faultNames = [numFaults]string{"", "aggregator-crash", "aggregator-shutdown", "aggregator-stall",
	"aggregator-reset-all", "partition", "node-crash", "node-pause", "dial-blackhole", "latency-spike", "impostor", "sybil-fill"}

// String returns the fault's name as traces and reports print it
// ("aggregator-crash", "partition", ...).
func (k FaultKind) String() string {
	if k > 0 && k < numFaults {
		return faultNames[k]
	}
	return "FaultKind(" + strconv.Itoa(int(k)) + ")"
}

// nodeScoped reports whether the fault applies to a selection of nodes.
func (k FaultKind) nodeScoped() bool { return k >= Partition && k <= Impostor }

// Action is one timed fault of a scenario.
type Action struct {
	// At is when the fault begins, relative to the start of the run.
	At time.Duration
	// Fault is what happens.
	Fault FaultKind
	// For is how long the fault lasts (the restart delay of a crash); it
	// must be positive for every fault but AggregatorResetAll.
	For time.Duration
	// Nodes selects, for a node fault, the node indices (0 to Nodes-1) it
	// applies to. When nil, Fraction selects them.
	Nodes []int
	// Fraction, when Nodes is nil, selects max(1, round(Fraction*Nodes))
	// nodes at random (from the run's seed); 0 selects every node.
	Fraction float64
	// Extra is a LatencySpike's added one-way latency.
	Extra time.Duration
}

// String renders a for reports and traces.
func (a Action) String() string {
	s := "+" + a.At.String() + " " + a.Fault.String()
	if a.Fault == LatencySpike {
		s += " +" + a.Extra.String()
	}
	if a.Fault.nodeScoped() {
		switch {
		case a.Nodes != nil:
			s += " on " + strconv.Itoa(len(a.Nodes)) + " nodes"
		case a.Fraction > 0:
			s += fmt.Sprintf(" on %.3g of the nodes", a.Fraction)
		default:
			s += " on all nodes"
		}
	}
	if a.For > 0 {
		s += " for " + a.For.String()
	}
	return s
}

// end is when a heals.
func (a Action) end() time.Duration { return a.At + a.For }

// ScenarioInfo describes a built-in scenario.
type ScenarioInfo struct {
	// Name is what Params.Scenario (and `heartbeat sim --scenario`) takes.
	Name string
	// Description is one line for `heartbeat sim --help`.
	Description string
}

// scenario builds the fault script for a run.
type scenario struct {
	info ScenarioInfo
	// build returns the actions for c's duration; w0 and w1 bound the
	// window in which faults may happen (a warm-up before it, a liveness
	// phase after it). It returns errTooShort when the window cannot hold
	// them, with the duration it would need.
	build func(c *config, rng *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error)
	// prepare, if set, adjusts the configuration before the run (the
	// senders' periods).
	prepare func(c *config)
	// check, if set, is the scenario's own expectation, checked at the end
	// of the run on top of the invariants: it returns what went wrong, or "".
	check func(s *sim) string
}

// warmUp is the fault-free time at the start of every scenario: the nodes
// connect and the tracker leaves its startup grace.
const warmUp = time.Minute

const restartAfter = 30 * time.Second

// newcomerAfter is when, after the warm-up (and the sybil-fill scenario's
// flood), its honest newcomer starts.
const newcomerAfter = 10 * time.Second

var scenarios = []scenario{
	{info: ScenarioInfo{"steady", "no faults: every node connects and beats for the whole run"},
		build: func(*config, *rand.Rand, time.Duration, time.Duration) ([]Action, time.Duration, error) {
			return nil, 0, nil
		}},
	{info: ScenarioInfo{"aggregator-restart", "the aggregator crashes a third of the way in and restarts 30s later with an empty tracker (v2 senders: paced at --accept-rate)"},
		build: func(_ *config, _ *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			if w1-w0 < 2*restartAfter {
				return nil, 2 * restartAfter, errTooShort
			}
			at := w0 + (w1-w0-restartAfter)/3
			return []Action{{At: at, Fault: AggregatorCrash, For: restartAfter}}, 0, nil
		}},
	{info: ScenarioInfo{"aggregator-shutdown", "the aggregator stops in order (closes every stream) a third of the way in and starts again 30s later"},
		build: func(_ *config, _ *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			if w1-w0 < 2*restartAfter {
				return nil, 2 * restartAfter, errTooShort
			}
			at := w0 + (w1-w0-restartAfter)/3
			return []Action{{At: at, Fault: AggregatorShutdown, For: restartAfter}}, 0, nil
		}},
	{info: ScenarioInfo{"aggregator-stall", "the aggregator stops reading for 80% of the run; v1 writers block only once a 256 KiB window fills (about 1h40m of beats), v2 senders notice within 3 beats (no Acks)"},
		build: func(_ *config, _ *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			if w1-w0 < time.Minute {
				return nil, time.Minute, errTooShort
			}
			return []Action{{At: w0 + (w1-w0)/10, Fault: AggregatorStall, For: (w1 - w0) * 8 / 10}}, 0, nil
		},
		check: stallNoticedByV2},
	{info: ScenarioInfo{"reset-storm", "the aggregator resets every stream at once, three times: no node turns Suspect or Down (each reconnects within its allowance)"},
		check: noFalseVerdicts,
		build: func(_ *config, _ *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			if w1-w0 < time.Minute {
				return nil, time.Minute, errTooShort
			}
			var out []Action
			for k := 1; k <= 3; k++ {
				out = append(out, Action{At: w0 + (w1-w0)*time.Duration(k)/4, Fault: AggregatorResetAll})
			}
			return out, 0, nil
		}},
	{info: ScenarioInfo{"mixed-periods", "no faults; half the nodes beat every 3s, the other half every 10s (alert senders) to one default aggregator: 0 flaps"},
		build: func(*config, *rand.Rand, time.Duration, time.Duration) ([]Action, time.Duration, error) {
			return nil, 0, nil
		},
		prepare: func(c *config) { c.slowPeriod = 10 * time.Second },
		check: func(s *sim) string {
			if s.suspects+s.downs > 0 {
				return fmt.Sprintf("%d Suspect and %d Down transitions, want none", s.suspects, s.downs)
			}
			return ""
		}},
	{info: ScenarioInfo{"aggregator-partition", "the aggregator loses every node (silence) for 2m: one disruption episode, no node Down, all Up within the bound after the heal"},
		build: func(_ *config, _ *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			if w1-w0 < 3*time.Minute {
				return nil, 3 * time.Minute, errTooShort
			}
			return []Action{{At: w0 + (w1-w0-2*time.Minute)/3, Fault: Partition, For: 2 * time.Minute}}, 0, nil
		},
		check: func(s *sim) string {
			if s.downs > 0 || s.disruptions != 1 {
				return fmt.Sprintf("%d Down transitions and %d disruption episodes, want 0 and 1", s.downs, s.disruptions)
			}
			return ""
		}},
	{info: ScenarioInfo{"node-crash", "5% of the nodes crash, each at a random instant of one minute, while the rest beat, and restart 3m later: each Down within DownAfter of its period after its reconnect allowance, plus a sweep"},
		build: func(c *config, rng *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			if w1-w0 < 5*time.Minute {
				return nil, 5 * time.Minute, errTooShort
			}
			at := w0 + (w1-w0-4*time.Minute)/3
			var out []Action
			for _, i := range selectNodes(rng, c.Nodes, nil, 0.05) {
				out = append(out, Action{At: at + uniform(rng, 0, time.Minute), Fault: NodeCrash, For: 3 * time.Minute, Nodes: []int{i}})
			}
			if out == nil { // 0.05 of one node is every node
				out = []Action{{At: at, Fault: NodeCrash, For: 3 * time.Minute}}
			}
			return out, 0, nil
		},
		check: func(s *sim) string {
			switch {
			case len(s.detections) != s.crashes:
				return fmt.Sprintf("%d of %d crashed nodes marked Down", len(s.detections), s.crashes)
			case s.lateDetections > 0:
				return fmt.Sprintf("%d detections too slow, first: %s", s.lateDetections, s.lateDetail)
			}
			return noFalseVerdicts(s)
		}},
	{info: ScenarioInfo{"duplicate-identity", "a second sender with one node's key runs for 3m (the two supersede each other): the tracker flags the duplicate within its DuplicateWindow"},
		build: func(_ *config, _ *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			if w1-w0 < 4*time.Minute {
				return nil, 4 * time.Minute, errTooShort
			}
			return []Action{{At: w0 + (w1-w0-3*time.Minute)/3, Fault: Impostor, For: 3 * time.Minute, Fraction: 0.01}}, 0, nil
		},
		check: func(s *sim) string {
			for _, i := range s.dupWatch {
				n := &s.nodes[i]
				if n.flaggedAt == 0 || time.Duration(n.flaggedAt-n.impSince) > s.c.tracker.DuplicateWindow {
					return fmt.Sprintf("%s: duplicate identity not flagged within %s of the impostor's start (flagged at +%s, started +%s)",
						n.id, s.c.tracker.DuplicateWindow, time.Duration(n.flaggedAt-s.start), time.Duration(n.impSince-s.start))
				}
			}
			if len(s.dupWatch) == 0 {
				return "no impostor ran"
			}
			return ""
		}},
	{info: ScenarioInfo{"sybil-fill", "after the warm-up, throwaway identities fill the tracker (MaxNodes = nodes+3, DownRetention 2m); an honest newcomer gets in once the retention passes"},
		build: func(c *config, _ *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			d := (c.sybilBound() + newcomerAfter + time.Minute).Round(time.Second)
			if w1-w0 < d {
				return nil, d, errTooShort
			}
			return []Action{{At: w0, Fault: SybilFill, For: d}}, 0, nil
		},
		prepare: func(c *config) {
			c.tracker.MaxNodes = c.Nodes + 3
			c.tracker.DownRetention = 2 * time.Minute
			c.newcomer = true
		},
		check: func(s *sim) string {
			up := time.Duration(s.newcomerUp - s.fillAt)
			switch {
			case s.throwaways == 0:
				return "the flood opened no identity"
			case s.newcomerUp == 0:
				return "the newcomer never got in"
			case up <= s.c.tracker.DownRetention:
				return fmt.Sprintf("the newcomer got in %s after the flood, before the retention (%s) passed: the flood did not fill the tracker", up, s.c.tracker.DownRetention)
			case up > s.c.sybilBound():
				return fmt.Sprintf("the newcomer got in %s after the flood, bound %s", up, s.c.sybilBound())
			}
			return ""
		}},
	{info: ScenarioInfo{"partition", "a random quarter of the nodes is cut off (silence, not resets) for half the run, then healed"},
		build: func(_ *config, _ *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			if w1-w0 < 2*time.Minute {
				return nil, 2 * time.Minute, errTooShort
			}
			return []Action{{At: w0 + (w1-w0)/4, Fault: Partition, For: (w1 - w0) / 2, Fraction: 0.25}}, 0, nil
		}},
	{info: ScenarioInfo{"flapping", "the aggregator crashes again and again: up 30s-2m, down 5s-40s, until the liveness phase"},
		build: func(_ *config, rng *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			if w1-w0 < 2*time.Minute {
				return nil, 2 * time.Minute, errTooShort
			}
			var out []Action
			for t := w0; ; {
				t += uniform(rng, 30*time.Second, 2*time.Minute)
				down := uniform(rng, 5*time.Second, 40*time.Second)
				if t+down > w1 {
					break
				}
				out = append(out, Action{At: t, Fault: AggregatorCrash, For: down})
				t += down
			}
			return out, 0, nil
		}},
	{info: ScenarioInfo{"node-churn", "random nodes crash and restart (1s-2m later) or pause (1s-90s), one event every 20-90s"},
		build: func(_ *config, rng *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			if w1-w0 < 2*time.Minute {
				return nil, 2 * time.Minute, errTooShort
			}
			var out []Action
			for t := w0; ; {
				t += uniform(rng, 20*time.Second, 90*time.Second)
				a := Action{At: t, Fault: NodeCrash, For: uniform(rng, time.Second, 2*time.Minute), Fraction: 0.01 + 0.09*rng.Float64()}
				if rng.IntN(2) == 0 {
					a.Fault, a.For = NodePause, uniform(rng, time.Second, 90*time.Second)
				}
				if a.end() > w1 {
					break
				}
				out = append(out, a)
			}
			return out, 0, nil
		}},
	{info: ScenarioInfo{"latency-spike", "+5s one-way on a quarter of the nodes for 2m, later +12s on every node for 1m (keepalives fail, handshakes time out)"},
		build: func(_ *config, _ *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			if w1-w0 < 6*time.Minute {
				return nil, 6 * time.Minute, errTooShort
			}
			return []Action{
				{At: w0 + (w1-w0)/4, Fault: LatencySpike, Extra: 5 * time.Second, For: 2 * time.Minute, Fraction: 0.25},
				{At: w0 + (w1-w0)*2/3, Fault: LatencySpike, Extra: 12 * time.Second, For: time.Minute},
			}, 0, nil
		}},
	{info: ScenarioInfo{"blackhole", "the aggregator crashes for 30s while half the nodes' new connections are black-holed for 3m (dials hang until their timeout)"},
		build: func(_ *config, _ *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			if w1-w0 < 4*time.Minute {
				return nil, 4 * time.Minute, errTooShort
			}
			at := w0 + (w1-w0-3*time.Minute)/3
			return []Action{
				{At: at, Fault: DialBlackhole, For: 3 * time.Minute, Fraction: 0.5},
				{At: at, Fault: AggregatorCrash, For: restartAfter},
			}, 0, nil
		}},
	{info: ScenarioInfo{"long-outage", "the aggregator is down for 24h after the warm-up (needs --duration of at least about 24h3m)"},
		build: func(_ *config, _ *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			if w1-w0 < 24*time.Hour {
				return nil, 24 * time.Hour, errTooShort
			}
			return []Action{{At: w0, Fault: AggregatorCrash, For: 24 * time.Hour}}, 0, nil
		}},
	{info: ScenarioInfo{"chaos", "random faults of every kind, overlapping, one every 3m on average, then a fault-free liveness phase"},
		build: func(_ *config, rng *rand.Rand, w0, w1 time.Duration) ([]Action, time.Duration, error) {
			if w1-w0 < 2*time.Minute {
				return nil, 2 * time.Minute, errTooShort
			}
			return chaos(rng, w0, w1), 0, nil
		}},
}

// stallNoticedByV2 requires every v2 sender Beating on a proven stream
// when the stall began to drop that stream within StallBound (an Ack
// overdue); v1 senders are only counted.
func stallNoticedByV2(s *sim) string {
	if s.watchV2 == 0 {
		return ""
	}
	if len(s.stallV2) != s.watchV2 {
		return fmt.Sprintf("%d of %d v2 senders noticed the stall", len(s.stallV2), s.watchV2)
	}
	b := s.c.stallBound()
	for _, d := range s.stallV2 {
		if d > b {
			return fmt.Sprintf("a v2 sender noticed the stall %s after it began, bound %s", d, b)
		}
	}
	return ""
}

// stallBound is how soon after a stall begins a v2 sender Beating on a
// proven stream drops it: its first unread Beat goes out within one
// period, and its Ack is overdue 2×BeatPeriod plus the last RTT later.
func (c *config) stallBound() time.Duration {
	return 3*max(c.sender.BeatPeriod, c.slowPeriod) + 2*(c.net.MaxLatency+c.net.Jitter)
}

// noFalseVerdicts requires that no healthy node was marked Suspect or Down.
func noFalseVerdicts(s *sim) string {
	if s.falseSuspect+s.falseDown > 0 {
		return fmt.Sprintf("%d false Suspect and %d false Down transitions, want none", s.falseSuspect, s.falseDown)
	}
	return ""
}

// chaos draws random faults in [w0, w1): exponential gaps (mean 3m), a kind
// chosen uniformly, random selections and durations clipped to w1.
func chaos(rng *rand.Rand, w0, w1 time.Duration) []Action {
	var out []Action
	t := w0
	for {
		t += time.Duration(rng.ExpFloat64() * float64(3*time.Minute))
		if t >= w1-time.Second {
			break
		}
		// The faults up to LatencySpike: chaos predates Impostor and
		// SybilFill, and its seeds keep their runs.
		a := Action{At: t, Fault: FaultKind(1 + rng.IntN(int(LatencySpike)))}
		switch a.Fault {
		case AggregatorCrash:
			a.For = uniform(rng, 5*time.Second, 3*time.Minute)
		case AggregatorShutdown:
			a.For = uniform(rng, 5*time.Second, 2*time.Minute)
		case AggregatorStall:
			a.For = uniform(rng, 5*time.Second, 10*time.Minute)
		case Partition:
			a.For, a.Fraction = uniform(rng, 5*time.Second, 15*time.Minute), 0.01+0.49*rng.Float64()
		case NodeCrash:
			a.For, a.Fraction = uniform(rng, time.Second, 5*time.Minute), 0.01+0.19*rng.Float64()
		case NodePause:
			a.For, a.Fraction = uniform(rng, time.Second, 3*time.Minute), 0.01+0.19*rng.Float64()
		case DialBlackhole:
			a.For, a.Fraction = uniform(rng, 10*time.Second, 10*time.Minute), 0.05+0.95*rng.Float64()
		case LatencySpike:
			a.For, a.Fraction = uniform(rng, 5*time.Second, 5*time.Minute), 0.05+0.95*rng.Float64()
			a.Extra = uniform(rng, 100*time.Millisecond, 15*time.Second)
		}
		if a.Fault != AggregatorResetAll {
			a.For = min(a.For, w1-t)
			if a.For < time.Second {
				continue
			}
		}
		out = append(out, a)
	}
	return out
}

// uniform draws a duration uniformly in [lo, hi).
func uniform(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)))
}

// Scenarios lists the built-in scenarios, in a fixed order, for
// `heartbeat sim --help` and for Params.Scenario.
func Scenarios() []ScenarioInfo {
	out := make([]ScenarioInfo, len(scenarios))
	for i, s := range scenarios {
		out[i] = s.info
	}
	return out
}

func findScenario(name string) (*scenario, bool) {
	if name == "" {
		name = "steady"
	}
	for i := range scenarios {
		if scenarios[i].info.Name == name {
			return &scenarios[i], true
		}
	}
	return nil, false
}

// buildScript returns the run's actions, sorted by time, with every node
// selection resolved to explicit, sorted indices (nil meaning all nodes), and
// the time the last fault heals.
func buildScript(c *config, rng *rand.Rand) ([]Action, time.Duration, error) {
	sc, ok := findScenario(c.Scenario)
	if !ok {
		names := make([]string, len(scenarios))
		for i, s := range scenarios {
			names[i] = s.info.Name
		}
		return nil, 0, fieldErr("Scenario", "%q is not a scenario; choose one of %v", c.Scenario, names)
	}
	w0 := warmUp
	w1 := c.Duration - c.liveness
	acts, need, err := sc.build(c, rng, w0, max(w1, w0))
	if err != nil {
		min := (w0 + need + c.liveness).Round(time.Second)
		return nil, 0, fieldErr("Duration", "(%s) is %v: scenario %q needs at least %s (a %s warm-up, %s of faults, a %s liveness phase)",
			c.Duration, err, sc.info.Name, min, w0, need, c.liveness.Round(time.Second))
	}
	// Cut the built-in scenarios' times to the millisecond: the same runs,
	// and traces and reports that read "+10m9.346s", not nine decimals.
	// Truncating never moves a heal later, out of its window.
	for i := range acts {
		acts[i].At = acts[i].At.Truncate(time.Millisecond)
		acts[i].For = acts[i].For.Truncate(time.Millisecond)
		acts[i].Extra = acts[i].Extra.Truncate(time.Millisecond)
	}
	acts = append(acts, c.Script...)
	out := make([]Action, 0, len(acts))
	var healed time.Duration
	for i, a := range acts {
		if err := validateAction(c, a); err != nil {
			return nil, 0, fmt.Errorf("sim: action %d (%s): %w", i, a, err)
		}
		if a.Fault.nodeScoped() {
			a.Nodes = selectNodes(rng, c.Nodes, a.Nodes, a.Fraction)
		} else {
			a.Nodes = nil
		}
		a.Fraction = 0
		healed = max(healed, a.end())
		out = append(out, a)
	}
	slices.SortStableFunc(out, func(a, b Action) int { return cmp.Compare(a.At, b.At) })
	if healed+c.liveness > c.Duration {
		return nil, 0, fieldErr("Duration", "(%s) is %v: the last fault heals at %s and the liveness phase needs %s after it",
			c.Duration, errTooShort, healed, c.liveness.Round(time.Second))
	}
	return out, healed, nil
}

func validateAction(c *config, a Action) error {
	switch {
	case a.Fault == 0 || a.Fault >= numFaults:
		return fmt.Errorf("unknown fault %d", a.Fault)
	case a.At < 0 || a.At >= c.Duration:
		//lint:ignore ST1005 the message starts with the Action field it names
		return fmt.Errorf("At (%s) must be in [0, Duration)", a.At)
	case a.Fault != AggregatorResetAll && a.For <= 0:
		//lint:ignore ST1005 the message starts with the Action field it names
		return fmt.Errorf("For must be positive, got %s", a.For)
	case a.end() > c.Duration:
		return fmt.Errorf("ends at %s, after Duration (%s)", a.end(), c.Duration)
	case a.Fault == LatencySpike && a.Extra <= 0:
		//lint:ignore ST1005 the message starts with the Action field it names
		return fmt.Errorf("Extra must be positive, got %s", a.Extra)
	case a.Fraction < 0 || a.Fraction > 1:
		//lint:ignore ST1005 the message starts with the Action field it names
		return fmt.Errorf("Fraction must be in [0, 1], got %v", a.Fraction)
	}
	for _, n := range a.Nodes {
		if n < 0 || n >= c.Nodes {
			return fmt.Errorf("node index %d out of range [0, %d)", n, c.Nodes)
		}
	}
	return nil
}

// selectNodes resolves a selection: explicit indices (sorted, deduplicated),
// nil for all nodes, or a seeded random subset of max(1, round(f*n)).
func selectNodes(rng *rand.Rand, n int, explicit []int, f float64) []int {
	if explicit != nil {
		out := slices.Clone(explicit)
		slices.Sort(out)
		return slices.Compact(out)
	}
	if f == 0 || f >= 1 {
		return nil
	}
	k := max(1, int(f*float64(n)+0.5))
	if k >= n {
		return nil
	}
	// Partial Fisher-Yates over a permutation of [0, n).
	perm := make([]int, n)
	for i := range perm {
		perm[i] = i
	}
	for i := 0; i < k; i++ {
		j := i + rng.IntN(n-i)
		perm[i], perm[j] = perm[j], perm[i]
	}
	out := perm[:k:k]
	slices.Sort(out)
	return out
}
