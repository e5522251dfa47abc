package tracker

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A restored node is Unknown with its stored labels and last seen; it turns
// Up on a heartbeat, or Down in the first sweep past the startup grace
// (whatever the disruption guard says), and a peer already tracked is left
// as it is.
func TestRestore(t *testing.T) {
	cfg := Config{ExpectedPeriod: 3 * time.Second, StartupGrace: 20 * time.Second, MaxNodes: 3}
	tr := newTracker(t, cfg)
	before := t0.Add(-time.Hour)
	ok, err := tr.Restore(Restored{Peer: pid(1), Nickname: "n1", Head: "h", Height: 7, FirstSeen: before.Add(-time.Hour), LastSeen: before}, t0)
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = tr.Restore(Restored{Peer: pid(2), Nickname: "n2"}, t0)
	require.NoError(t, err)
	require.True(t, ok)
	n, _ := tr.Node(pid(1))
	require.Equal(t, Unknown, n.State)
	require.Equal(t, "n1", n.Nickname)
	require.Equal(t, "h", n.Head)
	require.Equal(t, uint64(7), n.Height)
	require.True(t, n.LastSeen.Equal(before), "%v", n.LastSeen)
	require.True(t, n.FirstSeen.Equal(before.Add(-time.Hour)))
	require.Equal(t, 2, tr.Summary().ByState[Unknown])

	// Already tracked: unchanged; full: ErrFull.
	ok, err = tr.Restore(Restored{Peer: pid(1), Nickname: "other"}, t0)
	require.NoError(t, err)
	require.False(t, ok)
	_, _, err = tr.Beat(pid(3), hb("h", 7, "n3"), t0)
	require.NoError(t, err)
	_, err = tr.Restore(Restored{Peer: pid(4)}, t0)
	require.ErrorIs(t, err, ErrFull)

	// n2 beats: Unknown -> Up.
	ch, changed := beat(t, tr, pid(2), hb("h", 7, "n2"), t0.Add(5*time.Second))
	require.True(t, changed)
	require.Equal(t, Unknown, ch.From)
	require.Equal(t, Up, ch.To)

	// No Down at the grace's end, Down just past it; n3 beats throughout.
	grace := t0.Add(cfg.StartupGrace)
	beat(t, tr, pid(2), hb("h", 7, "n2"), grace)
	beat(t, tr, pid(3), hb("h", 7, "n3"), grace)
	require.Empty(t, tr.Sweep(grace, nil))
	require.Equal(t, Unknown, state(t, tr, pid(1)))
	chs := tr.Sweep(grace.Add(time.Second), nil)
	require.Equal(t, []Change{{Peer: pid(1), Nickname: "n1", From: Unknown, To: Down, At: grace.Add(time.Second)}}, chs)
	n, _ = tr.Node(pid(1))
	require.True(t, n.LastSeen.Equal(before), "the stored last seen stays")
	dis, _ := tr.Disrupted()
	require.False(t, dis)

	// Forget works on Unknown too.
	ok, err = tr.Restore(Restored{Peer: pid(5)}, grace)
	require.ErrorIs(t, err, ErrFull)
	require.False(t, ok)
	require.True(t, tr.Forget(pid(1)))
	ok, err = tr.Restore(Restored{Peer: pid(5)}, grace)
	require.NoError(t, err)
	require.True(t, ok)
	require.True(t, tr.Forget(pid(5)))
	require.Equal(t, 2, tr.Len())
}
