package metrics

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/wire"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func pid(i byte) peer.ID { return peer.ID([]byte{0x00, 0x03, 'p', 'i', i}) }

func setup(t *testing.T) (*prometheus.Registry, *tracker.Tracker, *Metrics) {
	t.Helper()
	tr, err := tracker.New(tracker.Config{ExpectedPeriod: 3 * time.Second, StartupGrace: -1, MaxNodes: 100,
		// A fixed 3s period, no allowance: Suspect after 6s, Down after 15s.
		MinPeriod: 3 * time.Second, MaxPeriod: 3 * time.Second, ReconnectAllowance: -1}, t0)
	require.NoError(t, err)
	reg := prometheus.NewPedanticRegistry()
	m, err := New(reg, tr)
	require.NoError(t, err)
	return reg, tr, m
}

func beat(t *testing.T, tr *tracker.Tracker, id peer.ID, head string, height uint64, at time.Time) {
	t.Helper()
	_, _, err := tr.Beat(id, &wire.Heartbeat{Head: head, Height: height, Nickname: "n"}, at)
	require.NoError(t, err)
}

func TestTrackerGauges(t *testing.T) {
	reg, tr, _ := setup(t)
	// Nodes 1-3 on head a@10, node 4 on b@11: consensus a@10, 3 in
	// consensus, 1 in dispute. Node 5 goes Down, node 6 leaves, node 7 only
	// opened a stream.
	for i := byte(1); i <= 7; i++ {
		require.NoError(t, tr.StreamOpened(pid(i), t0))
	}
	beat(t, tr, pid(5), "a", 10, t0)
	for _, at := range []time.Time{t0.Add(50 * time.Second), t0.Add(59 * time.Second)} {
		for i := byte(1); i <= 3; i++ {
			beat(t, tr, pid(i), "a", 10, at)
		}
		beat(t, tr, pid(4), "b", 11, at)
		beat(t, tr, pid(6), "a", 10, at)
	}
	tr.StreamEnded(pid(6), true, t0.Add(59*time.Second))
	tr.StreamEnded(pid(5), false, t0.Add(time.Second))
	tr.Sweep(t0.Add(time.Minute), nil)

	const want = `
# HELP heartbeat_aggregator_disrupted 1 while the aggregator is in disrupted mode: more than the disruption fraction of its live nodes fell silent at once, which points at the aggregator's own network, so no node is marked Down; else 0.
# TYPE heartbeat_aggregator_disrupted gauge
heartbeat_aggregator_disrupted 0
# HELP heartbeat_connected_nodes Nodes with an open heartbeat stream (2018: connected_nodes).
# TYPE heartbeat_connected_nodes gauge
heartbeat_connected_nodes 5
# HELP heartbeat_consensus_height Chain height of the consensus head; 0 when no node is Up.
# TYPE heartbeat_consensus_height gauge
heartbeat_consensus_height 10
# HELP heartbeat_heartbeats_received_total Heartbeats received and recorded by the tracker.
# TYPE heartbeat_heartbeats_received_total counter
heartbeat_heartbeats_received_total 11
# HELP heartbeat_max_nodes The most nodes the aggregator tracks; new peers past it are rejected as too_many_nodes.
# TYPE heartbeat_max_nodes gauge
heartbeat_max_nodes 100
# HELP heartbeat_nodes Tracked nodes by state: joining (stream open, no heartbeat yet), up, suspect, down, left, unknown (known before a restart, not seen since).
# TYPE heartbeat_nodes gauge
heartbeat_nodes{state="down"} 1
heartbeat_nodes{state="joining"} 1
heartbeat_nodes{state="left"} 1
heartbeat_nodes{state="suspect"} 0
heartbeat_nodes{state="unknown"} 0
heartbeat_nodes{state="up"} 4
# HELP heartbeat_nodes_in_consensus Up nodes on the consensus head: the largest group of Up nodes sharing a head and height (2018: nodes_in_consensus).
# TYPE heartbeat_nodes_in_consensus gauge
heartbeat_nodes_in_consensus 3
# HELP heartbeat_nodes_in_dispute Up nodes not on the consensus head (2018: nodes_in_dispute).
# TYPE heartbeat_nodes_in_dispute gauge
heartbeat_nodes_in_dispute 1
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want),
		"heartbeat_aggregator_disrupted", "heartbeat_connected_nodes", "heartbeat_consensus_height", "heartbeat_heartbeats_received_total",
		"heartbeat_max_nodes", "heartbeat_nodes", "heartbeat_nodes_in_consensus", "heartbeat_nodes_in_dispute"))

	// Values follow the tracker at every scrape: every Up node falls
	// silent at once, which is a disruption (they turn Suspect, not Down).
	tr.Sweep(t0.Add(time.Hour), nil)
	const down = `
# HELP heartbeat_aggregator_disrupted 1 while the aggregator is in disrupted mode: more than the disruption fraction of its live nodes fell silent at once, which points at the aggregator's own network, so no node is marked Down; else 0.
# TYPE heartbeat_aggregator_disrupted gauge
heartbeat_aggregator_disrupted 1
# HELP heartbeat_consensus_height Chain height of the consensus head; 0 when no node is Up.
# TYPE heartbeat_consensus_height gauge
heartbeat_consensus_height 0
# HELP heartbeat_nodes_in_consensus Up nodes on the consensus head: the largest group of Up nodes sharing a head and height (2018: nodes_in_consensus).
# TYPE heartbeat_nodes_in_consensus gauge
heartbeat_nodes_in_consensus 0
# HELP heartbeat_nodes_in_dispute Up nodes not on the consensus head (2018: nodes_in_dispute).
# TYPE heartbeat_nodes_in_dispute gauge
heartbeat_nodes_in_dispute 0
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(down),
		"heartbeat_aggregator_disrupted", "heartbeat_consensus_height", "heartbeat_nodes_in_consensus", "heartbeat_nodes_in_dispute"))
}

func TestCounters(t *testing.T) {
	reg, _, m := setup(t)
	// Every fixed series exists at 0 before any event.
	n, err := testutil.GatherAndCount(reg, "heartbeat_rejected_total", "heartbeat_streams_closed_total")
	require.NoError(t, err)
	require.Equal(t, len(Reasons())+len(Closes()), n)

	m.Rejected(ReasonNotJSON)
	m.Rejected(string(wire.ReasonBadType)) // the decoder's own reason values
	m.Rejected(ReasonTooManyNodes)
	m.Rejected(ReasonTooManyNodes)
	m.Rejected("Mallory's free text") // never a new series
	m.StreamOpened()
	m.StreamOpened()
	m.StreamOpened()
	m.StreamClosed(true)
	m.StreamClosed(false)
	m.StreamClosedHow(ClosedReset)
	m.StreamClosedHow("bogus")

	const want = `
# HELP heartbeat_rejected_total Heartbeat streams ended or refused by the aggregator, by reason.
# TYPE heartbeat_rejected_total counter
heartbeat_rejected_total{reason="bad_field"} 0
heartbeat_rejected_total{reason="bad_type"} 1
heartbeat_rejected_total{reason="beat_before_hello"} 0
heartbeat_rejected_total{reason="duplicate_identity"} 0
heartbeat_rejected_total{reason="frame_too_long"} 0
heartbeat_rejected_total{reason="idle_timeout"} 0
heartbeat_rejected_total{reason="invalid_utf8"} 0
heartbeat_rejected_total{reason="line_too_long"} 0
heartbeat_rejected_total{reason="malformed_frame"} 0
heartbeat_rejected_total{reason="not_allowed"} 0
heartbeat_rejected_total{reason="not_json"} 1
heartbeat_rejected_total{reason="other"} 1
heartbeat_rejected_total{reason="paced"} 0
heartbeat_rejected_total{reason="resource_limit"} 0
heartbeat_rejected_total{reason="second_hello"} 0
heartbeat_rejected_total{reason="seq_backwards"} 0
heartbeat_rejected_total{reason="superseded"} 0
heartbeat_rejected_total{reason="too_many_nodes"} 2
heartbeat_rejected_total{reason="unexpected_message"} 0
heartbeat_rejected_total{reason="unknown_message"} 0
# HELP heartbeat_streams_closed_total Accepted heartbeat streams that ended, by how: eof (clean), reset (by the sender or the network), error (by the aggregator).
# TYPE heartbeat_streams_closed_total counter
heartbeat_streams_closed_total{how="eof"} 1
heartbeat_streams_closed_total{how="error"} 2
heartbeat_streams_closed_total{how="reset"} 1
# HELP heartbeat_streams_opened_total Heartbeat streams accepted.
# TYPE heartbeat_streams_opened_total counter
heartbeat_streams_opened_total 3
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want),
		"heartbeat_rejected_total", "heartbeat_streams_closed_total", "heartbeat_streams_opened_total"))
}

func TestReasonsMatchTheDecoder(t *testing.T) {
	require.Equal(t, "not_json", ReasonNotJSON)
	require.Equal(t, "bad_type", ReasonBadType)
	require.Equal(t, "invalid_utf8", ReasonInvalidUTF8)
	seen := map[string]bool{}
	for _, r := range append(Reasons(), Closes()...) {
		require.Regexp(t, `^[a-z0-9_]+$`, r)
		require.False(t, seen[r], "duplicate %q", r)
		seen[r] = true
	}
}

// Every name passes promlint (units, _total on counters, help text).
func TestLint(t *testing.T) {
	reg, tr, m := setup(t)
	require.NoError(t, tr.StreamOpened(pid(1), t0))
	m.Rejected(ReasonIdleTimeout)
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}

func TestNewErrors(t *testing.T) {
	tr, err := tracker.New(tracker.Config{}, t0)
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	_, err = New(nil, tr)
	require.EqualError(t, err, "metrics: nil prometheus.Registerer")
	_, err = New(reg, nil)
	require.EqualError(t, err, "metrics: nil tracker")
	_, err = New(reg, tr)
	require.NoError(t, err)
	_, err = New(reg, tr)
	var are prometheus.AlreadyRegisteredError
	require.ErrorAs(t, err, &are)
	require.ErrorContains(t, err, "metrics: register heartbeat_rejected_total: ")
}

func TestCountersDoNotAllocate(t *testing.T) {
	_, _, m := setup(t)
	allocs := testing.AllocsPerRun(100, func() {
		m.Rejected(ReasonSuperseded)
		m.StreamOpened()
		m.StreamClosed(false)
		m.StreamClosedHow(ClosedReset)
	})
	require.Zero(t, allocs)
}

// requireNodeUp compares heartbeat_node_up on reg with want, peer by peer:
// no other series, and peer_id its only label.
func requireNodeUp(t *testing.T, reg prometheus.Gatherer, want map[peer.ID]float64) {
	t.Helper()
	var lines []string
	for id, v := range want {
		lines = append(lines, fmt.Sprintf("heartbeat_node_up{peer_id=%q} %v", id.String(), v))
	}
	slices.Sort(lines) // the exposition's order: by label value
	text := ""
	if len(lines) > 0 {
		text = "# HELP heartbeat_node_up 1 while the node is Up, 0 while Suspect or Down, and after an aggregator restart while not yet seen again if it was Suspect or Down before; no series for a Joining or Left node, nor one not yet seen since a restart that was Up before. One series per tracked node (at most heartbeat_max_nodes).\n" +
			"# TYPE heartbeat_node_up gauge\n" + strings.Join(lines, "\n") + "\n"
	}
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(text), "heartbeat_node_up"))
}

// heartbeat_node_up has one series per Up, Suspect or Down node, labelled
// by peer id alone (never the nickname); a Joining or Left node has none,
// and a node evicted or forgotten loses its series, so there are never
// more than MaxNodes.
func TestNodeUp(t *testing.T) {
	tr, err := tracker.New(tracker.Config{ExpectedPeriod: 3 * time.Second, StartupGrace: -1, MaxNodes: 4,
		// A fixed 3s period, no allowance: Suspect after 6s, Down after
		// 15s; too few nodes for a disruption to hold Down.
		MinPeriod: 3 * time.Second, MaxPeriod: 3 * time.Second, ReconnectAllowance: -1, DisruptionMinNodes: 100}, t0)
	require.NoError(t, err)
	reg := prometheus.NewPedanticRegistry()
	_, err = New(reg, tr)
	require.NoError(t, err)
	requireNodeUp(t, reg, nil)

	for i := byte(1); i <= 4; i++ {
		require.NoError(t, tr.StreamOpened(pid(i), t0))
	}
	beat(t, tr, pid(1), "a", 10, t0)
	beat(t, tr, pid(2), "a", 10, t0)
	beat(t, tr, pid(4), "a", 10, t0)
	tr.StreamEnded(pid(4), true, t0.Add(time.Second)) // Left: no series
	// pid(3) is Joining (a stream, no heartbeat): no series.
	requireNodeUp(t, reg, map[peer.ID]float64{pid(1): 1, pid(2): 1})

	beat(t, tr, pid(1), "a", 10, t0.Add(8*time.Second))
	tr.Sweep(t0.Add(10*time.Second), nil)
	requireNodeUp(t, reg, map[peer.ID]float64{pid(1): 1, pid(2): 0}) // pid(2) Suspect

	beat(t, tr, pid(1), "a", 10, t0.Add(19*time.Second))
	tr.Sweep(t0.Add(20*time.Second), nil)
	n, ok := tr.Node(pid(2))
	require.True(t, ok)
	require.Equal(t, tracker.Down, n.State)
	requireNodeUp(t, reg, map[peer.ID]float64{pid(1): 1, pid(2): 0})

	// The tracker is full: a newcomer evicts the Left node, and the
	// series stay within MaxNodes.
	beat(t, tr, pid(5), "a", 10, t0.Add(20*time.Second))
	_, ok = tr.Node(pid(4))
	require.False(t, ok, "evicted")
	requireNodeUp(t, reg, map[peer.ID]float64{pid(1): 1, pid(2): 0, pid(5): 1})

	// A Down node comes back; a forgotten one disappears.
	beat(t, tr, pid(2), "a", 10, t0.Add(21*time.Second))
	require.True(t, tr.Forget(pid(1)))
	requireNodeUp(t, reg, map[peer.ID]float64{pid(2): 1, pid(5): 1})
}

// After a restart a restored node that was Suspect or Down exports 0 at
// once (its alert holds across the restart), one that was Up exports
// nothing until it beats or the startup grace ends (a restart does not page
// for every node still reconnecting); then both are judged as usual.
func TestNodeUpRestored(t *testing.T) {
	grace := 10 * time.Second
	tr, err := tracker.New(tracker.Config{ExpectedPeriod: 3 * time.Second, StartupGrace: grace,
		MinPeriod: 3 * time.Second, MaxPeriod: 3 * time.Second, ReconnectAllowance: -1, DisruptionMinNodes: 100}, t0)
	require.NoError(t, err)
	reg := prometheus.NewPedanticRegistry()
	_, err = New(reg, tr)
	require.NoError(t, err)
	before := t0.Add(-time.Hour)
	for i, wasDown := range []bool{true, false, true, false} {
		ok, err := tr.Restore(tracker.Restored{Peer: pid(byte(i + 1)), LastSeen: before, WasDown: wasDown}, t0)
		require.NoError(t, err)
		require.True(t, ok)
	}
	requireNodeUp(t, reg, map[peer.ID]float64{pid(1): 0, pid(3): 0})

	// Within the grace pid(3) and pid(4) beat: both Up.
	require.NoError(t, tr.StreamOpened(pid(3), t0.Add(time.Second)))
	beat(t, tr, pid(3), "a", 10, t0.Add(time.Second))
	require.NoError(t, tr.StreamOpened(pid(4), t0.Add(time.Second)))
	beat(t, tr, pid(4), "a", 10, t0.Add(time.Second))
	requireNodeUp(t, reg, map[peer.ID]float64{pid(1): 0, pid(3): 1, pid(4): 1})

	// After the grace the silent ones are Down: 0 for both.
	beat(t, tr, pid(3), "a", 10, t0.Add(grace))
	beat(t, tr, pid(4), "a", 10, t0.Add(grace))
	tr.Sweep(t0.Add(grace+time.Second), nil)
	for _, id := range []peer.ID{pid(1), pid(2)} {
		n, ok := tr.Node(id)
		require.True(t, ok)
		require.Equal(t, tracker.Down, n.State)
	}
	requireNodeUp(t, reg, map[peer.ID]float64{pid(1): 0, pid(2): 0, pid(3): 1, pid(4): 1})
}
