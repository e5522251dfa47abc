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

// After a restart the restored nodes come back at the aggregator's pace:
// while one came Up within the reconnect allowance (12s), the others stay
// Unknown past the startup grace (15s); a whole allowance without one ends
// the hold, and the nodes still Unknown go Down. A restart whose nodes
// all come back early changes nothing: Down just past the grace.
func TestReadmissionHoldsUnknownDown(t *testing.T) {
	cfg := Config{ExpectedPeriod: 3 * time.Second, StartupGrace: 15 * time.Second,
		ReconnectAllowance: 12 * time.Second, DisruptionMaxHold: time.Minute, MaxNodes: 10}
	restore := func(tr *Tracker, ids ...int) {
		for _, i := range ids {
			_, err := tr.Restore(Restored{Peer: pid(i), Nickname: "n"}, t0)
			require.NoError(t, err)
		}
	}
	at := func(d time.Duration) time.Time { return t0.Add(d) }

	tr := newTracker(t, cfg)
	restore(tr, 1, 2, 3)
	beat(t, tr, pid(1), hb("h", 1, "n"), at(14*time.Second)) // re-admitted: hold until 26s
	require.Empty(t, tr.Sweep(at(16*time.Second), nil), "past the grace, but the re-admission goes on")
	beat(t, tr, pid(2), hb("h", 1, "n"), at(20*time.Second)) // hold until 32s
	beat(t, tr, pid(1), hb("h", 1, "n"), at(20*time.Second)) // not a re-admission: already Up
	require.Empty(t, tr.Sweep(at(32*time.Second), nil))
	require.Equal(t, Unknown, state(t, tr, pid(3)))
	var downs []Change
	for _, c := range tr.Sweep(at(32*time.Second+time.Nanosecond), nil) {
		if c.To == Down {
			downs = append(downs, c)
		}
	}
	require.Equal(t, []Change{{Peer: pid(3), Nickname: "n", From: Unknown, To: Down, At: at(32*time.Second + time.Nanosecond)}}, downs,
		"a whole allowance without a re-admission: the hold ends")

	// All back early: the grace alone decides.
	tr = newTracker(t, cfg)
	restore(tr, 1, 2)
	beat(t, tr, pid(1), hb("h", 1, "n"), at(time.Second))
	beat(t, tr, pid(1), hb("h", 1, "n"), at(15*time.Second))
	require.Empty(t, tr.Sweep(at(15*time.Second), nil))
	chs := tr.Sweep(at(15*time.Second+time.Nanosecond), nil)
	require.Equal(t, []Change{{Peer: pid(2), Nickname: "n", From: Unknown, To: Down, At: at(15*time.Second + time.Nanosecond)}}, chs)

	// A trickle of re-admissions holds the rest at most DisruptionMaxHold
	// past the grace.
	tr = newTracker(t, cfg)
	restore(tr, 1, 2, 3, 4, 5, 6, 7, 8)
	for i := 1; i <= 7; i++ {
		beat(t, tr, pid(i), hb("h", 1, "n"), at(time.Duration(10*i)*time.Second))
		for j := 1; j < i; j++ { // the re-admitted keep beating
			beat(t, tr, pid(j), hb("h", 1, "n"), at(time.Duration(10*i)*time.Second))
		}
		require.Equal(t, Unknown, state(t, tr, pid(8)), "held at %ds", 10*i)
		tr.Sweep(at(time.Duration(10*i)*time.Second), nil)
	}
	require.Equal(t, Unknown, state(t, tr, pid(8)))
	tr.Sweep(at(cfg.StartupGrace+cfg.DisruptionMaxHold+time.Nanosecond), nil)
	require.Equal(t, Down, state(t, tr, pid(8)), "the hold ends DisruptionMaxHold after the grace")
}
