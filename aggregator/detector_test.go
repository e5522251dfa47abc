package aggregator

import (
	"crypto/rand"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator/metrics"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/clockwork"
)

// fixedPeriod is a 1s period with no learning and no reconnect allowance:
// Suspect after 2s of silence, Down after 5s.
func fixedPeriod() Config {
	return Config{ExpectedPeriod: time.Second, StartupGrace: -1, MinPeriod: time.Second, MaxPeriod: time.Second, ReconnectAllowance: -1}
}

// pipeNode is one in-memory heartbeat stream served by ServeLines.
type pipeNode struct {
	id   peer.ID
	w    *io.PipeWriter
	done chan error
	n    int
}

func startPipe(t *testing.T, a *Aggregator) *pipeNode {
	t.Helper()
	pr, pw := io.Pipe()
	p := &pipeNode{id: randomPeer(t), w: pw, done: make(chan error, 1)}
	go func() { p.done <- a.ServeLines(p.id, pr) }()
	return p
}

func (p *pipeNode) beat(t *testing.T, rec *recorder) {
	t.Helper()
	p.n++
	_, err := fmt.Fprintf(p.w, `{"Head":"{ h }","Height":%d,"Nickname":"n"}`+"\n", p.n)
	require.NoError(t, err)
	rec.waitBeats(t, p.id, p.n)
}

func (p *pipeNode) close(t *testing.T) {
	t.Helper()
	require.NoError(t, p.w.Close())
	require.NoError(t, recv(t, p.done))
}

func mockAggregator(t *testing.T, cfg Config) (*Aggregator, *clockwork.Mock, *recorder, *logBuffer) {
	t.Helper()
	mock := clockwork.NewMock(t0)
	logs := &logBuffer{}
	rec := newRecorder()
	a, err := New(newHost(t), cfg, WithClock(mock), withHooks(rec.hooks()),
		WithLogger(hclog.New(&hclog.LoggerOptions{Output: logs, JSONFormat: true, Level: hclog.Info})))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, a.Close()) })
	return a, mock, rec, logs
}

// Issue case 10: a sweep that runs late after an aggregator stall judges
// the nodes at its scheduled time, and the next sweep comes one interval
// after the stall, once the backlog is read: a stalled aggregator does not
// mark live nodes Suspect or Down, and fires no burst of catch-up sweeps.
func TestLateSweepUsesScheduledTime(t *testing.T) {
	checkLeaks(t)
	a, mock, rec, logs := mockAggregator(t, fixedPeriod())
	p := startPipe(t, a)
	p.beat(t, rec) // at t0

	// The stall: 25s pass (Down is 5s) while the sweeper does not run. A
	// Mock moved with Add fires no clockwork Timer, like a stopped process.
	mock.Add(25 * time.Second)
	stalled := mock.Now()
	// The overdue sweep (scheduled at t0+1s) runs now, late.
	_, ok := clockwork.AdvanceToNext(mock)
	require.True(t, ok)
	n, _ := a.Tracker().Node(p.id)
	require.Equal(t, tracker.Up, n.State, "judged at its scheduled time, t0+1s")
	next, ok := clockwork.NextDeadline(mock)
	require.True(t, ok)
	require.Equal(t, stalled.Add(time.Second), next, "next sweep one interval after the stall, no catch-up burst")

	p.beat(t, rec) // the backlog, read after the stall
	at, _ := clockwork.AdvanceToNext(mock)
	require.Equal(t, stalled.Add(time.Second), at)
	n, _ = a.Tracker().Node(p.id)
	require.Equal(t, tracker.Up, n.State)
	p.close(t)
	for _, m := range logs.entries(t, "node state changed") {
		require.NotContains(t, []any{"suspect", "down"}, m["to"], "a stalled aggregator marked a live node %v", m["to"])
	}
}

// Most nodes silent at once: one WARN, heartbeat_aggregator_disrupted 1,
// nobody Down; when most beat again, one INFO, and the one still silent
// goes Down as usual after the reconnect allowance (none here) plus its
// period, counted from the end of the disruption.
func TestDisruptionLoggedOnce(t *testing.T) {
	checkLeaks(t)
	a, mock, rec, logs := mockAggregator(t, fixedPeriod())
	var nodes []*pipeNode
	for range 4 {
		p := startPipe(t, a)
		p.beat(t, rec)
		nodes = append(nodes, p)
	}
	gauge := func() float64 {
		t.Helper()
		mfs, err := a.Registry().Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			if mf.GetName() == "heartbeat_aggregator_disrupted" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		require.FailNow(t, "no heartbeat_aggregator_disrupted")
		return 0
	}
	require.Zero(t, gauge())
	clockwork.AdvanceTo(mock, t0.Add(30*time.Second))
	require.Equal(t, 1.0, gauge())
	require.Len(t, logs.entries(t, "disruption: most nodes fell silent at once; no node is marked Down until they beat again"), 1)
	sum := a.Tracker().Summary()
	require.Equal(t, 4, sum.ByState[tracker.Suspect])
	require.Zero(t, sum.ByState[tracker.Down])

	for _, p := range nodes[:3] {
		p.beat(t, rec)
	}
	clockwork.AdvanceTo(mock, t0.Add(31*time.Second))
	require.Zero(t, gauge())
	over := logs.entries(t, "disruption over")
	require.Len(t, over, 1)
	require.Equal(t, "info", over[0]["@level"])
	n, _ := a.Tracker().Node(nodes[3].id)
	require.Equal(t, tracker.Suspect, n.State, "the allowance from the end of the disruption")
	for _, at := range []time.Duration{32 * time.Second, 34 * time.Second} {
		clockwork.AdvanceTo(mock, t0.Add(at))
		for _, p := range nodes[:3] {
			p.beat(t, rec)
		}
	}
	clockwork.AdvanceTo(mock, t0.Add(36*time.Second)) // 31s + 1s period + 3 periods < 36s
	n, _ = a.Tracker().Node(nodes[3].id)
	require.Equal(t, tracker.Down, n.State)
	require.Zero(t, gauge())
	for _, p := range nodes {
		p.close(t)
	}
	require.Len(t, logs.entries(t, "disruption: most nodes fell silent at once; no node is marked Down until they beat again"), 1)
}

// Two senders with one key over real libp2p supersede each other's
// streams: the aggregator counts duplicate_identity once, logs one WARN
// with the peer id, and /api/nodes' source flags the node.
func TestDuplicateIdentityTwoSenders(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, Config{}, nil)
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	var senders []*sender
	for range 2 {
		senders = append(senders, &sender{h: newHost(t, libp2p.Identity(key))})
	}
	id := senders[0].id()
	require.Equal(t, id, senders[1].id())
	var streams []network.Stream
	for i := range 6 {
		st := senders[i%2].open(t, e)
		encode(t, st, legacyHeartbeat{Head: "{ a }", Height: uint64(i), Nickname: "twin"})
		e.rec.waitBeats(t, id, i+1)
		streams = append(streams, st)
	}
	// 6 streams: 5 supersedes, more than the default threshold of 3.
	for _, st := range streams[:5] {
		requireReset(t, st)
	}
	require.ErrorIs(t, e.rec.waitEnds(t, id, 5), ErrSuperseded)
	require.Equal(t, 5.0, rejected(t, e, metrics.ReasonSuperseded))
	require.Equal(t, 1.0, rejected(t, e, metrics.ReasonDuplicateIdentity))
	warn := e.log.entries(t, "duplicate identity: streams of one peer keep superseding each other")
	require.Len(t, warn, 1)
	require.Equal(t, id.String(), warn[0]["peer_id"])
	require.Equal(t, "warn", warn[0]["@level"])
	n, ok := e.a.Tracker().Node(id)
	require.True(t, ok)
	require.True(t, n.DuplicateIdentity)
	require.NoError(t, streams[5].CloseWrite())
	require.NoError(t, e.rec.waitEnds(t, id, 6))
}

// Issue case 6 (lockout by Down records), with the injected clock: at
// MaxNodes 5, five identities beat once and vanish (their streams reset);
// a newcomer is refused too_many_nodes until the node Down the longest has
// been Down for the retention, then it gets in.
func TestNoLockoutAfterDownRetention(t *testing.T) {
	checkLeaks(t)
	cfg := Config{MaxNodes: 5, DownRetention: time.Hour, SweepInterval: 3 * time.Second}
	a, mock, rec, _ := mockAggregator(t, cfg)
	for range 5 {
		p := startPipe(t, a)
		p.beat(t, rec)
		require.NoError(t, p.w.CloseWithError(io.ErrUnexpectedEOF)) // a reset, not an EOF
		require.Error(t, recv(t, p.done))
	}
	refused := func() error {
		t.Helper()
		pr, pw := io.Pipe()
		require.NoError(t, pw.Close())
		return a.ServeLines(randomPeer(t), pr)
	}
	clockwork.AdvanceTo(mock, t0.Add(17*time.Second))
	require.ErrorIs(t, refused(), tracker.ErrFull)
	// They fell silent together: Down only after the disruption's hold.
	clockwork.AdvanceTo(mock, t0.Add(15*time.Minute))
	require.Equal(t, 5, a.Tracker().Summary().ByState[tracker.Down])
	require.ErrorIs(t, refused(), tracker.ErrFull)
	nodes := a.Tracker().Nodes(nil)
	firstDown := nodes[0].Since
	for _, n := range nodes {
		if n.Since.Before(firstDown) {
			firstDown = n.Since
		}
	}
	clockwork.AdvanceTo(mock, firstDown.Add(time.Hour))
	require.ErrorIs(t, refused(), tracker.ErrFull, "Down exactly the retention")
	clockwork.AdvanceTo(mock, firstDown.Add(time.Hour+time.Second))
	newcomer := startPipe(t, a)
	newcomer.beat(t, rec)
	n, ok := a.Tracker().Node(newcomer.id)
	require.True(t, ok)
	require.Equal(t, tracker.Up, n.State)
	require.Equal(t, 5, a.Tracker().Len())
	require.Equal(t, 3.0, counter(t, a.Registry(), "heartbeat_rejected_total", "reason", metrics.ReasonTooManyNodes))
	newcomer.close(t)
}
