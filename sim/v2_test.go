package sim

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/fsm"
)

// v2Seeds is how many seeds each scenario runs for with v2 and mixed
// senders (chaos: v2ChaosSeeds); the v1 runs keep their own, larger count.
const (
	v2Seeds      = 5
	v2ChaosSeeds = 40
)

// strictVerdicts are the scenarios that expect no false Suspect or Down
// (or none at all): a pacing that turns away the nodes a fault made
// reconnect at once breaks that expectation by design (see
// TestPacingAfterAResetStorm), so they run with the default pacing only.
var strictVerdicts = map[string]bool{"reset-storm": true, "mixed-periods": true, "aggregator-partition": true, "node-crash": true}

// Every scenario holds the invariants, the v2 ones included (seq, acks,
// GoAway waits), with every sender on v2 and with half of them, and, for
// every other seed, a pacing tight enough to send GoAways even at 16
// nodes.
func TestV2ScenariosHoldTheirInvariants(t *testing.T) {
	for _, proto := range []Protocol{ProtocolV2, ProtocolMixed} {
		for _, sc := range Scenarios() {
			if sc.Name == "long-outage" {
				continue
			}
			t.Run(proto.String()+"/"+sc.Name, func(t *testing.T) {
				t.Parallel()
				seeds := uint64(v2Seeds)
				if sc.Name == "chaos" {
					seeds = v2ChaosSeeds
				}
				for seed := uint64(1); seed <= seeds; seed++ {
					p := small(sc.Name, seed)
					p.Protocol = proto
					if seed%2 == 0 && !strictVerdicts[sc.Name] {
						p.Pacing = Pacing{AcceptRate: 1, PacingWindow: 20 * time.Second}
					}
					rep, err := Run(p)
					require.NoError(t, err, "%s scenario %s seed %d", proto, sc.Name, seed)
					require.NotZero(t, rep.BeatsReceived)
					require.Equal(t, rep.Samples[len(rep.Samples)-1].Machines[fsm.Beating], rep.Nodes,
						"every node beats at the end (seed %d)", seed)
				}
			})
		}
	}
}

// The aggregator stops reading: every v2 sender that was beating notices
// (its Acks stop) within 3×BeatPeriod plus a round trip of the stall's
// begin, no earlier than the ack deadline allows; the v1 senders, whose
// lines go into a 256 KiB send window, never notice.
func TestV2SendersNoticeAStalledAggregator(t *testing.T) {
	t.Parallel()
	for _, proto := range []Protocol{ProtocolV1, ProtocolMixed, ProtocolV2} {
		p := Params{Nodes: 100, Duration: 20 * time.Minute, Seed: 3, Scenario: "aggregator-stall", Protocol: proto}
		rep, err := Run(p)
		require.NoError(t, err, proto)
		v2 := rep.V2Nodes
		require.Equal(t, map[Protocol]int{ProtocolV1: 0, ProtocolMixed: 50, ProtocolV2: 100}[proto], v2)
		require.Equal(t, v2, rep.StallV2Watched, "every v2 node was beating when the stall began")
		require.Len(t, rep.StallV2, v2, "every v2 node noticed")
		require.Equal(t, 100-v2, rep.StallV1Watched)
		require.Zero(t, rep.StallV1Noticed, "no v1 node noticed")
		bound := 3*fsm.DefaultBeatPeriod + 2*(DefaultMaxLatency+DefaultJitter)
		require.Equal(t, bound, rep.StallBound)
		if v2 > 0 {
			// The first unread Beat left at most one latency before the
			// stall began; its Ack is overdue 2×BeatPeriod + RTT later.
			require.GreaterOrEqual(t, rep.StallV2[0], 2*fsm.DefaultBeatPeriod-DefaultMaxLatency-DefaultJitter)
			require.LessOrEqual(t, rep.StallV2[v2-1], bound)
			var text bytes.Buffer
			require.NoError(t, rep.WriteText(&text))
			require.Contains(t, text.String(), "aggregator stall noticed")
			t.Logf("%s: v2 noticed the stall after %s to %s", proto, rep.StallV2[0], rep.StallV2[v2-1])
		}
	}
}

// restartPacing returns the pacing figures of the run's one restart.
func restartPacing(t *testing.T, rep *Report) Recovery {
	t.Helper()
	for _, r := range rep.Recoveries {
		if r.Restart {
			return r
		}
	}
	t.Fatal("no restart in the report")
	return Recovery{}
}

// Issue 10's pacing goal, scaled down tenfold for the race detector: 1,000
// v2 senders and an accept rate of 20/s (10,000 at 200/s behaves alike:
// docs/simulation.md has its figures). After the aggregator restarts, no
// second accepts more than the rate (package pacing keeps it over every
// sliding second), and 99% of the running nodes are Up within the pacing
// window measured from the restart: a paced sender's retry-after is its
// slot, and it comes back no earlier (fsm.BackoffPolicy.After).
func TestPacingAfterAnAggregatorRestart(t *testing.T) {
	t.Parallel()
	const rate = 20
	p := Params{Nodes: 1000, Duration: 12 * time.Minute, Seed: 1, Scenario: "aggregator-restart", Protocol: ProtocolV2,
		Pacing: Pacing{AcceptRate: rate}}
	rep, err := Run(p)
	require.NoError(t, err)
	require.Equal(t, Pacing{AcceptRate: rate, PacingWindow: time.Minute}, rep.Pacing)
	r := restartPacing(t, rep)
	t.Logf("first second %d, then at most %d/s; %d paced; 99%% Up after %s; Up within the window %.2f%%",
		r.AcceptFirst, r.AcceptPeak, r.Paced, r.Up99, 100*r.UpInWindow)
	require.LessOrEqual(t, r.AcceptFirst, rate)
	require.LessOrEqual(t, r.AcceptPeak, rate)
	require.Greater(t, r.AcceptPeak, rate/2, "the pacer kept admitting")
	require.Positive(t, r.Paced)
	require.Greater(t, rep.Paced, r.Paced, "the start (1,000 nodes over 10s) was paced too")
	require.Zero(t, r.AcceptV1Peak, "no v1 sender")
	require.GreaterOrEqual(t, r.UpInWindow, 0.99)
	require.LessOrEqual(t, r.Up99, time.Minute)

	var text bytes.Buffer
	require.NoError(t, rep.WriteText(&text))
	require.Contains(t, text.String(), "streams the aggregator accepted per second after each restart")
}

// v1 streams are never paced (a v1 sender cannot be told when to come
// back) and take no token: with half the senders on v1 they all come
// back on their own backoff, and the pacer admits the v2 half at its rate.
func TestV1StreamsAreNeverPaced(t *testing.T) {
	t.Parallel()
	const rate = 10
	p := Params{Nodes: 400, Duration: 12 * time.Minute, Seed: 2, Scenario: "aggregator-restart", Protocol: ProtocolMixed,
		Pacing: Pacing{AcceptRate: rate}}
	var trace bytes.Buffer
	p.Trace = &trace
	rep, err := Run(p)
	require.NoError(t, err)
	r := restartPacing(t, rep)
	require.Greater(t, r.AcceptV1Peak, 2*rate, "v1 streams came back faster than the v2 rate")
	require.LessOrEqual(t, r.AcceptPeak, 2*rate)
	require.Positive(t, r.Paced)
	for _, line := range strings.Split(trace.String(), "\n") {
		if strings.Contains(line, "agg goaway") {
			// Nodes 0-199 speak v1: never a GoAway.
			require.Regexp(t, `goaway n00(2|3)\d\d `, line)
		}
	}
}

func TestAWrongSeqIsCaught(t *testing.T) {
	t.Parallel()
	p := small("steady", 3)
	p.Protocol = ProtocolV2
	p.hooks = &hooks{afterStep: func(node int, now time.Time, effs []fsm.Effect) []fsm.Effect {
		for i := range effs {
			if effs[i].Kind == fsm.Send && node == 4 && now.Sub(DefaultStart) > 2*time.Minute {
				effs[i].Seq++ // a seq skipped
			}
		}
		return effs
	}}
	ie := violation(t, p)
	require.Equal(t, RuleSeq, ie.Rule)
	require.Equal(t, "n00004", ie.Node)
	require.Contains(t, ie.Detail, "of the same boot, want")
	require.Contains(t, ie.Replay, "--protocol v2")
}

func TestAnAckForAnUnsentSeqIsCaught(t *testing.T) {
	t.Parallel()
	p := small("steady", 4)
	p.Protocol = ProtocolV2
	p.hooks = &hooks{ackSeq: func(node int, seq uint32) uint32 {
		if node == 6 && seq == 20 {
			return 21 // not written yet
		}
		return seq
	}}
	ie := violation(t, p)
	require.Equal(t, RuleAck, ie.Rule)
	require.Equal(t, "n00006", ie.Node)
	require.Contains(t, ie.Detail, "Ack for seq 21 on a stream that wrote seqs 1 to 20")
}

func TestADialBeforeTheRetryAfterIsCaught(t *testing.T) {
	t.Parallel()
	// One stream a second: at the start most nodes get GoAway. The
	// machines add an upward spread to the retry-after; the checker is
	// told no jitter, so the first late retry is a violation (an early
	// one would be too: the rule's lower bound is the retry-after itself).
	p := small("steady", 5)
	p.Protocol = ProtocolV2
	p.Pacing = Pacing{AcceptRate: 1, PacingWindow: 30 * time.Second}
	p.hooks = &hooks{checkerPolicy: &fsm.BackoffPolicy{Base: fsm.DefaultReconnectPeriod}}
	ie := violation(t, p)
	require.Equal(t, RuleGoAway, ie.Rule)
	require.Contains(t, ie.Detail, "after a GoAway asking")
}

// A reset of every stream (the aggregator alive) makes every node rejoin
// within one BeatPeriod. Pacing such a storm would turn most v2 nodes away
// for up to a window and the tracker, seeing no stream, would suspect them
// (21,023 false Suspects at 10,000 nodes before the rule). The pacer does
// not pace a node the tracker holds Up or Suspect, so the storm passes
// without a verdict on v2 as on v1 (1,000 nodes at 20/s), and the streams
// are counted unpaced.
func TestAResetStormUnderPacingLeavesV2NodesUp(t *testing.T) {
	t.Parallel()
	for _, proto := range []Protocol{ProtocolV1, ProtocolV2} {
		rep, err := Run(Params{Nodes: 1000, Duration: 12 * time.Minute, Seed: 1, Scenario: "reset-storm", Protocol: proto,
			Pacing: Pacing{AcceptRate: 20}})
		require.NoError(t, err, "%s", proto)
		require.Zero(t, rep.FalseSuspects, "%s", proto)
		require.Zero(t, rep.FalseDowns, "%s", proto)
		if proto == ProtocolV2 {
			require.Greater(t, rep.Unpaced, uint64(900), "the storm's rejoins were admitted unpaced")
			t.Logf("v2: %d unpaced, %d paced", rep.Unpaced, rep.Paced)
		}
	}
}
