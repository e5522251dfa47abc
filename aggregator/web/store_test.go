package web

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator/store"
)

// StoreHistory over a real SQLite store: a node's flips and samples in the
// range, the newest MaxHistoryPoints when there are more, ErrUnknownNode
// for a peer the store never saw or an id that does not parse.
func TestStoreHistory(t *testing.T) {
	ctx := context.Background()
	b, err := store.OpenSQLite(ctx, t.TempDir())
	require.NoError(t, err)
	defer b.Close()
	p, agg, other := testPeer(1), testPeer(100), testPeer(2)
	batch := store.Batch{
		Nodes: []store.Node{{Peer: p, Aggregator: agg, Nickname: "n", State: "up", FirstSeen: t0, LastSeen: t0, Updated: t0}},
		Flips: []store.Flip{
			{Peer: p, Aggregator: agg, At: t0.Add(-2 * time.Hour), From: "joining", To: "up", Reason: "beat"},
			{Peer: p, Aggregator: agg, At: t0.Add(-time.Hour), From: "up", To: "down", Reason: "silent 15s"},
			{Peer: p, Aggregator: agg, At: t0.Add(-30 * time.Minute), From: "down", To: "up", Reason: "beat"},
		},
	}
	// More samples than one answer holds: one a second.
	start := t0.Add(-2 * time.Hour)
	for i := range MaxHistoryPoints + 10 {
		batch.Samples = append(batch.Samples, store.Sample{Peer: p, Aggregator: agg, At: start.Add(time.Duration(i) * time.Second), Height: uint64(i)})
	}
	require.NoError(t, b.Apply(ctx, batch))

	h := StoreHistory(b)
	got, err := h.NodeHistory(ctx, p.String(), t0.Add(-90*time.Minute), t0)
	require.NoError(t, err)
	require.Equal(t, []Flip{
		{AtMs: t0.Add(-time.Hour).UnixMilli(), From: "up", To: "down", Reason: "silent 15s"},
		{AtMs: t0.Add(-30 * time.Minute).UnixMilli(), From: "down", To: "up", Reason: "beat"},
	}, got.Flips, "only the range")
	require.Len(t, got.Heights, MaxHistoryPoints-30*60+10, "the samples from -90 min on")
	require.False(t, got.Truncated)

	got, err = h.NodeHistory(ctx, p.String(), start, t0)
	require.NoError(t, err)
	require.True(t, got.Truncated)
	require.Len(t, got.Heights, MaxHistoryPoints)
	require.Equal(t, uint64(10), got.Heights[0].Height, "the newest are kept")
	require.Equal(t, uint64(MaxHistoryPoints+9), got.Heights[MaxHistoryPoints-1].Height)

	_, err = h.NodeHistory(ctx, other.String(), start, t0)
	require.ErrorIs(t, err, ErrUnknownNode)
	_, err = h.NodeHistory(ctx, "not-a-peer-id", start, t0)
	require.ErrorIs(t, err, ErrUnknownNode)
}
