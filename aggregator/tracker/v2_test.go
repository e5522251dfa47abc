package tracker

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A v2 node is judged by the period it declared from its first beat, with
// no learning: a 10 s node is not Suspect after 20 s of silence, only
// strictly after it; learning would have judged it by MaxPeriod first and
// then by the median of its intervals.
func TestDeclaredPeriodUsedDirectly(t *testing.T) {
	tr := newTracker(t, Config{StartupGrace: -1, ReconnectAllowance: -1, DisruptionFraction: 1})
	id := pid(1)
	require.NoError(t, tr.StreamOpened(id, t0))
	restart, err := tr.Hello(id, HelloInfo{BootID: [16]byte{1}, Period: 10 * time.Second}, t0)
	require.NoError(t, err)
	require.False(t, restart)
	_, _, err = tr.BeatV2(id, hb("h", 1, ""), BeatInfo{Seq: 1}, t0)
	require.NoError(t, err)
	// Beats closer together than declared do not change the period.
	_, _, err = tr.BeatV2(id, hb("h", 1, ""), BeatInfo{Seq: 2}, t0.Add(time.Second))
	require.NoError(t, err)
	last := t0.Add(time.Second)
	n, _ := tr.Node(id)
	require.Equal(t, 10*time.Second, n.Period)
	require.True(t, n.DeclaredPeriod)
	require.Equal(t, uint8(2), n.Protocol)
	require.Empty(t, tr.Sweep(last.Add(20*time.Second), nil))
	ch := tr.Sweep(last.Add(20*time.Second+1), nil)
	require.Len(t, ch, 1)
	require.Equal(t, Suspect, ch[0].To)

	// A v1 beat from the same peer turns learning back on.
	beat(t, tr, id, hb("h", 1, ""), last.Add(21*time.Second))
	n, _ = tr.Node(id)
	require.False(t, n.DeclaredPeriod)
	require.Equal(t, uint8(1), n.Protocol)
}

// Seq gaps count lost beats within a boot; a new boot id counts a restart
// and restarts the seq; an old seq counts nothing; RTT and skew are kept as
// reported.
func TestBootSeqRTT(t *testing.T) {
	tr := newTracker(t, noGrace)
	id := pid(2)
	require.NoError(t, tr.StreamOpened(id, t0))
	_, err := tr.Hello(id, HelloInfo{BootID: [16]byte{1}, Period: 3 * time.Second}, t0)
	require.NoError(t, err)
	for _, seq := range []uint64{1, 2, 5, 4, 6} { // 3 and 4 lost; 4 late
		_, _, err := tr.BeatV2(id, hb("h", 1, ""), BeatInfo{Seq: seq, RTT: time.Millisecond, Skew: -2 * time.Millisecond}, t0)
		require.NoError(t, err)
	}
	n, _ := tr.Node(id)
	require.Equal(t, uint64(2), n.LostBeats)
	require.Equal(t, time.Millisecond, n.RTT)
	require.Equal(t, -2*time.Millisecond, n.Skew)
	require.Equal(t, uint64(0), n.Restarts)
	require.Equal(t, t0, n.BootTime)

	// Same boot on a new stream: no restart, seq continues.
	restart, err := tr.Hello(id, HelloInfo{BootID: [16]byte{1}, Period: 3 * time.Second}, t0.Add(time.Minute))
	require.NoError(t, err)
	require.False(t, restart)
	// New boot: a restart, BootTime moves, seq starts again with no loss.
	restart, err = tr.Hello(id, HelloInfo{BootID: [16]byte{2}, Period: 3 * time.Second}, t0.Add(2*time.Minute))
	require.NoError(t, err)
	require.True(t, restart)
	_, _, err = tr.BeatV2(id, hb("h", 1, ""), BeatInfo{Seq: 1}, t0.Add(2*time.Minute))
	require.NoError(t, err)
	n, _ = tr.Node(id)
	require.Equal(t, uint64(1), n.Restarts)
	require.Equal(t, uint64(2), n.LostBeats)
	require.Equal(t, [16]byte{2}, n.BootID)
	require.Equal(t, t0.Add(2*time.Minute), n.BootTime)
}
