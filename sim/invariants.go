package sim

import (
	"fmt"
	"strings"
	"time"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/fsm"
)

// The invariants, as InvariantError.Rule names them. docs/simulation.md says
// how each is checked.
const (
	// RuleRejected: a machine rejected an event (a bug in the shell: the
	// simulator handed it an event its state does not accept), or a
	// component could not be built.
	RuleRejected = "fsm-rejected"
	// RuleBeatOutsideBeating: a heartbeat was sent outside Beating, or on
	// no open stream.
	RuleBeatOutsideBeating = "beat-outside-beating"
	// RuleOneStream: a node held more than one live stream after a step.
	RuleOneStream = "one-stream"
	// RuleBackoff: a retry was armed, or a dial made, outside the backoff
	// policy's bounds after a failure.
	RuleBackoff = "backoff-bounds"
	// RuleLogPolicy: the log lines broke the policy: one WARN per outage,
	// then DEBUG, ERROR strictly more than ErrorEvery after the last
	// WARN/ERROR, one INFO on recovery, fixed levels for the other lines.
	RuleLogPolicy = "log-policy"
	// RuleLiveness: a bound after the last fault healed (and at the end of
	// the run), some node was not Beating or not Up at the aggregator.
	RuleLiveness = "liveness"
	// RuleDownWhileBeating: the tracker turned a node Suspect or Down while
	// it was beating normally (Beating for a while, no fault on its path).
	RuleDownWhileBeating = "down-while-beating"
	// RuleScenario: the scenario's own expectation failed at the end of the
	// run (reset-storm: no false Suspect; node-crash: every crash detected
	// within its bound; ...).
	RuleScenario = "scenario-expectation"
	// RuleSeq (v2): a sender's Beat seqs are 1, 2, 3… per boot, one more
	// per Beat written, across reconnects; the aggregator reads them in
	// that order: one more per Beat on a stream, and growing across the
	// streams of one boot.
	RuleSeq = "v2-seq"
	// RuleAck (v2): every Ack a sender reads acknowledges a Beat written on
	// that stream and not yet acknowledged, and no sender logs a protocol
	// error (the simulated aggregator keeps the protocol).
	RuleAck = "v2-ack"
	// RuleGoAway (v2): a sender that got GoAway does not dial again before
	// its retry-after (raised to its BeatPeriod: the protocol's rule,
	// literally, docs/protocol.md), nor, unless paused, after the longest
	// the policy allows (BackoffPolicy.After with the highest draw).
	RuleGoAway = "v2-goaway-retry-after"
)

// InvariantError is the error Run returns when an invariant breaks. Its
// message names the rule, the node, the virtual time, the seed and the
// scenario, and gives the command that replays the run.
type InvariantError struct {
	// Rule is one of the Rule constants.
	Rule string
	// Node is the node's id ("n00042"), or "" for a rule about the whole
	// system.
	Node string
	// At is the virtual time of the violation, since the start of the run.
	At time.Duration
	// Detail says what was seen and what was expected.
	Detail string
	// Seed, Scenario, Nodes and Duration identify the run.
	Seed     uint64
	Scenario string
	Nodes    int
	Duration time.Duration
	// Replay is the command that runs the same simulation again.
	Replay string
}

// Error says which rule broke, where, when, and how to replay the run.
func (e *InvariantError) Error() string {
	who := "the system"
	if e.Node != "" {
		who = "node " + e.Node
	}
	return fmt.Sprintf("sim: invariant %s violated at +%s by %s: %s (seed %d, scenario %s; replay: %s)",
		e.Rule, e.At, who, e.Detail, e.Seed, e.Scenario, e.Replay)
}

// violate records the first violation; the loop stops on it.
func (s *sim) violate(n *node, rule, format string, args ...any) {
	if s.err != nil {
		return
	}
	c := s.c
	replay := fmt.Sprintf("go run ./cmd/heartbeat sim --nodes %d --duration %s --seed %d --scenario %s",
		c.Nodes, c.Duration, c.Seed, scenarioName(c.Scenario))
	if c.Protocol != ProtocolV1 {
		replay += " --protocol " + c.Protocol.String()
		if c.Pacing != (Pacing{}) {
			replay += fmt.Sprintf(" --accept-rate %g --pacing-window %s", c.pacing.AcceptRate, c.pacing.PacingWindow)
		}
	}
	if c.Sender != (fsm.Config{}) || c.Network != (Network{}) || c.Tracker != (tracker.Config{}) ||
		len(c.Script) > 0 || c.StartWithin != DefaultStartWithin || c.hooks != nil {
		replay = "sim.Run with the same Params (they set fields the command line does not): " + replay
	}
	e := &InvariantError{
		Rule: rule, At: time.Duration(s.now - s.start), Detail: fmt.Sprintf(format, args...),
		Seed: c.Seed, Scenario: scenarioName(c.Scenario), Nodes: c.Nodes, Duration: c.Duration, Replay: replay,
	}
	if n != nil {
		e.Node = string(n.id)
	}
	s.err = e
	s.tr.begin(s.now, "sim").str(" VIOLATION ").str(rule).str(" ").str(e.Node).str(" ").quote(e.Detail).end()
}

// checkStep checks a step that did more than beat: transitions, log lines,
// dials, retries, stream counts. The checker keeps its own account of each
// node (outage, failures, last WARN/ERROR), derived from the policies as
// documented, not from the machine's internals.
func (s *sim) checkStep(n *node, ev fsm.Event, from fsm.State, effs []fsm.Effect) {
	to := n.m.State()
	if from != to {
		s.states[from]--
		s.states[to]++
		if from == fsm.Beating && n.stallWatch && s.agg.stall > 0 {
			s.stallNoticed(n)
		}
		switch to {
		case fsm.Beating:
			n.beatingSince = s.now
			s.watch()
		case fsm.Backoff:
			n.failAt, n.pausedSinceFail = s.now, false
			n.goAway = ev.Kind == fsm.GoAwayReceived
			if n.goAway {
				// Not a failure: the retry-after it asked for, and an
				// outage (the recovery logs INFO).
				n.goAsked = ev.RetryAfter
				n.inOutage = true
			} else if ev.Kind == fsm.DialFailed || ev.Kind == fsm.DialTimedOut || logsKind(effs, fsm.LogConnectFailed) {
				// A failed attempt, or a stream refused before its first
				// beat survived (logged as a connect failure).
				n.connFailures++
				n.failN = n.connFailures
			} else if ev.Kind == fsm.RemoteClosed && !n.proven {
				// Ended in order before it was proven: the backoff, no
				// failure counted.
				n.failN = max(1, n.connFailures)
				n.inOutage = true
			} else {
				// A lost proven stream: the rejoin, within one BeatPeriod.
				n.failN = 0
				n.inOutage = true
			}
		}
	}
	connected, sent := 0, false
	for i := range effs {
		e := &effs[i]
		switch e.Kind {
		case fsm.Log:
			if l := e.Log.Level; l >= fsm.LevelDebug && l <= fsm.LevelError {
				n.logs[l-1]++
			}
			if e.Log.Kind == fsm.LogConnected {
				connected++
			}
			s.checkLog(n, e.Log)
		case fsm.Dial:
			if from == fsm.Backoff {
				s.checkRetryGap(n)
			}
		case fsm.ArmTimer:
			if e.Timer == fsm.RetryTimer {
				s.checkRetryDelay(n, e.At)
			}
		case fsm.Send:
			sent = true
		}
	}
	if to == fsm.Beating && from != fsm.Beating {
		n.proven = false
	}
	// A v1 stream is proven when the beat after its first write comes due
	// with the stream still open, a v2 stream by its first Ack
	// (docs/state-machine.md): the recovery is logged then, not when the
	// stream opens.
	recovered := ev.Kind == fsm.BeatDue && from == fsm.Beating && to == fsm.Beating && sent && !n.proven && !n.v2
	if n.v2 {
		recovered = ev.Kind == fsm.AckReceived && ev.Attempt == n.m.Attempt() && from == fsm.Beating && to == fsm.Beating && !n.proven
	}
	want := 0
	if recovered && n.inOutage {
		want = 1
	}
	if connected != want {
		s.violate(n, RuleLogPolicy, "%d INFO %q lines on %s (%s -> %s), want %d (one per recovery from an outage)",
			connected, "connected", ev.Kind, from, to, want)
	}
	if recovered {
		n.proven = true
		n.inOutage, n.outFailures, n.loudAt, n.connFailures = false, 0, 0, 0
		n.goneAway = false
	}
	if k := n.openStreams(); k > 1 {
		s.violate(n, RuleOneStream, "%d live streams after %s", k, ev.Kind)
	}
}

// logLevels is the level every line but a connect failure must have.
var logLevels = map[fsm.LogKind]fsm.Level{
	fsm.LogConnected:    fsm.LevelInfo,
	fsm.LogWriteFailed:  fsm.LevelWarn,
	fsm.LogRemoteClosed: fsm.LevelInfo,
	fsm.LogRemoteReset:  fsm.LevelWarn,
	fsm.LogBeatSkipped:  fsm.LevelDebug,
	fsm.LogAckOverdue:   fsm.LevelWarn,
	fsm.LogBeatPeriod:   fsm.LevelInfo,
}

// checkLog checks one log line against the policy. A connect failure is
// WARN if it is the first of the outage, ERROR if strictly more than
// ErrorEvery passed since the outage's last WARN/ERROR, DEBUG otherwise.
func (s *sim) checkLog(n *node, r fsm.LogRecord) {
	switch r.Kind {
	case fsm.LogProtocolError:
		s.violate(n, RuleAck, "the sender saw the simulated aggregator break the protocol: %v", r.Err)
		return
	case fsm.LogGoAway:
		// INFO the first time in an outage, DEBUG after.
		want := fsm.LevelInfo
		if n.goneAway {
			want = fsm.LevelDebug
		}
		n.goneAway = true
		if r.Level != want {
			s.violate(n, RuleLogPolicy, "GoAway line logged at %s, want %s (INFO once per outage)", r.Level, want)
		}
		return
	}
	if r.Kind != fsm.LogConnectFailed {
		if want, ok := logLevels[r.Kind]; !ok || r.Level != want {
			s.violate(n, RuleLogPolicy, "%s line logged at %s, want %s", logKindName(r.Kind), r.Level, want)
		}
		return
	}
	every := int64(s.c.sender.ErrorEvery)
	since := s.now - n.loudAt
	var want fsm.Level
	switch {
	case n.outFailures == 0:
		want = fsm.LevelWarn
	case since > every:
		want = fsm.LevelError
	default:
		want = fsm.LevelDebug
	}
	n.outFailures++
	n.inOutage = true
	if r.Level != want {
		s.violate(n, RuleLogPolicy, "connect failure %d of the outage logged at %s, want %s (%s since the last WARN/ERROR)",
			n.outFailures, r.Level, want, time.Duration(since))
		return
	}
	if r.Failures != n.outFailures {
		s.violate(n, RuleLogPolicy, "connect failure line says failures=%d, it is failure %d of the outage", r.Failures, n.outFailures)
		return
	}
	if want == fsm.LevelError {
		if n.lastError != 0 && s.now-n.lastError <= every {
			s.violate(n, RuleLogPolicy, "two ERROR lines %s apart, want more than %s", time.Duration(s.now-n.lastError), s.c.sender.ErrorEvery)
			return
		}
		n.lastError = s.now
	}
	if want != fsm.LevelDebug {
		n.loudAt = s.now
	}
}

// retryBounds is the policy's range for node's retry after the n-th
// failure; n = 0 is the rejoin after a lost proven stream, within one of
// the node's own BeatPeriod.
func (s *sim) retryBounds(node *node, n uint64) (lo, hi time.Duration) {
	if node.goAway {
		p := s.c.periodFor(node.idx)
		return max(min(node.goAsked, fsm.MaxRetryAfter), p), s.c.policy.After(node.goAsked, p, fsm.MaxRetryAfter, 1)
	}
	if n == 0 {
		p := s.c.periodFor(node.idx)
		return s.c.policy.Rejoin(p, 0), s.c.policy.Rejoin(p, 1)
	}
	return s.c.policy.Delay(n, 0), s.c.policy.Delay(n, 1)
}

// logsKind reports whether effs log a line of kind k.
func logsKind(effs []fsm.Effect, k fsm.LogKind) bool {
	for i := range effs {
		if effs[i].Kind == fsm.Log && effs[i].Log.Kind == k {
			return true
		}
	}
	return false
}

func (s *sim) checkRetryDelay(n *node, at time.Time) {
	d := time.Duration(at.UnixNano() - s.now)
	if lo, hi := s.retryBounds(n, n.failN); d < lo || d > hi {
		if n.goAway {
			s.violate(n, RuleGoAway, "retry armed %s after a GoAway asking %s, outside [%s, %s]", d, n.goAsked, lo, hi)
			return
		}
		s.violate(n, RuleBackoff, "retry armed %s after failure #%d, outside [%s, %s]", d, n.failN, lo, hi)
	}
}

// checkRetryGap checks the time from the failure to the next dial. A
// pause in between makes the retry late (its timer fires on resume), never
// early.
func (s *sim) checkRetryGap(n *node) {
	gap := time.Duration(s.now - n.failAt)
	if lo, hi := s.retryBounds(n, n.failN); gap < lo || (gap > hi && !n.pausedSinceFail) {
		if n.goAway {
			s.violate(n, RuleGoAway, "dialled %s after a GoAway asking %s, outside [%s, %s]", gap, n.goAsked, lo, hi)
			return
		}
		s.violate(n, RuleBackoff, "dialled %s after failure #%d, outside [%s, %s]", gap, n.failN, lo, hi)
	}
}

// beatsNormally reports whether the tracker must see n Up: n has been
// Beating for at least normalSpan (SuspectAfter plus the slowest delivery),
// and no fault touched its path, its process or the aggregator in that time.
func (s *sim) beatsNormally(n *node) bool {
	if n.m == nil || n.m.State() != fsm.Beating {
		return false
	}
	since := s.now - int64(s.c.spanFor(n.idx))
	if n.beatingSince > since || s.agg.started > since {
		return false
	}
	if s.globalActive > 0 || s.globalQuiet > since || n.active > 0 || n.quiet > since {
		return false
	}
	for _, st := range n.slots() {
		if st.open && st.blocked {
			return false
		}
	}
	return true
}

// checkLiveness requires every node to be Beating and Up at the aggregator.
func (s *sim) checkLiveness(when string) {
	if s.err != nil {
		return
	}
	var (
		bad   []string
		count int
	)
	for i := range s.nodes {
		n := &s.nodes[i]
		ms, ts, up := "crashed", "aggregator down", false
		if n.m != nil {
			ms = n.m.State().String()
		}
		if s.agg.up {
			ts = "unknown"
			if nd, ok := s.agg.tr.Node(n.id); ok {
				ts, up = nd.State.String(), nd.State == tracker.Up
			}
		}
		if n.m == nil || n.m.State() != fsm.Beating || !up {
			count++
			if len(bad) < 5 {
				bad = append(bad, fmt.Sprintf("%s (%s, tracker: %s)", string(n.id), ms, ts))
			}
		}
	}
	if count > 0 {
		s.violate(nil, RuleLiveness, "%d of %d nodes not Beating and Up at the aggregator %s (healed at +%s, bound %s): %s",
			count, len(s.nodes), when, time.Duration(s.healed-s.start), s.c.liveness, strings.Join(bad, ", "))
	}
}
