package aggregator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator/store"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/clockwork"
)

func openStore(t *testing.T, dir string) store.Backend {
	t.Helper()
	b, err := store.OpenSQLite(context.Background(), dir)
	require.NoError(t, err)
	return b
}

func beatLine(nick string, height int) string {
	return fmt.Sprintf(`{"Head":"{ h }","Height":%d,"Nickname":%q}`+"\n", height, nick)
}

// Nodes known before a restart come back as Unknown with their last seen,
// then Down after the startup grace (a new flip, its alert fires again); a
// node that left does not come back, and a retired one stays retired.
func TestRestartRestoresNodes(t *testing.T) {
	checkLeaks(t)
	ctx := context.Background()
	dir := t.TempDir()
	mock := clockwork.NewMock(t0)
	h := newHost(t)
	cfg := Config{ExpectedPeriod: time.Second, StartupGrace: 10 * time.Second}

	b := openStore(t, dir)
	rec := newRecorder()
	a, err := New(h, cfg, WithClock(mock), withHooks(rec.hooks()), WithStore(b, store.WriterConfig{}))
	require.NoError(t, err)
	alive, retired, leaving := randomPeer(t), randomPeer(t), randomPeer(t)
	done := make(chan error, 3)
	var pipes []*io.PipeWriter
	for i, id := range []peer.ID{alive, retired} {
		pr, pw := io.Pipe()
		pipes = append(pipes, pw)
		go func() { done <- a.ServeLines(id, pr) }()
		_, err := io.WriteString(pw, beatLine(fmt.Sprint("n", i), 10+i))
		require.NoError(t, err)
		rec.waitBeats(t, id, 1)
	}
	go func() { done <- a.ServeLines(leaving, strings.NewReader(beatLine("bye", 3))) }()
	require.NoError(t, <-done) // EOF: Left
	require.NoError(t, a.Retire(ctx, retired, "decommissioned"))
	_, tracked := a.Tracker().Node(retired)
	require.False(t, tracked)
	// The aggregator is killed under them: streams lost, not EOF.
	for _, pw := range pipes {
		pw.CloseWithError(errors.New("connection reset"))
	}
	require.Error(t, <-done)
	require.Error(t, <-done)
	lastSeen := t0
	require.NoError(t, a.Close())
	require.NoError(t, b.Close())

	// Restart on the same store (same peer id: the same host).
	clockwork.Advance(mock, time.Hour)
	restart := mock.Now()
	b = openStore(t, dir)
	t.Cleanup(func() { _ = b.Close() })
	a, err = New(h, cfg, WithClock(mock), WithStore(b, store.WriterConfig{}))
	require.NoError(t, err)
	defer a.Close()
	n, ok := a.Tracker().Node(alive)
	require.True(t, ok)
	require.Equal(t, tracker.Unknown, n.State)
	require.Equal(t, "n0", n.Nickname)
	require.Equal(t, uint64(10), n.Height)
	require.True(t, n.LastSeen.Equal(lastSeen), "last seen %v", n.LastSeen)
	_, ok = a.Tracker().Node(retired)
	require.False(t, ok, "a retired node stays retired")
	_, ok = a.Tracker().Node(leaving)
	require.False(t, ok, "a node that left is not restored")
	require.Equal(t, 1, a.Tracker().Len())

	clockwork.AdvanceTo(mock, restart.Add(cfg.StartupGrace)) // exactly the grace: not yet
	n, _ = a.Tracker().Node(alive)
	require.Equal(t, tracker.Unknown, n.State)
	clockwork.AdvanceTo(mock, restart.Add(cfg.StartupGrace+time.Second))
	n, _ = a.Tracker().Node(alive)
	require.Equal(t, tracker.Down, n.State)
	require.NoError(t, a.Close())

	rn, err := b.Node(ctx, alive)
	require.NoError(t, err)
	require.Equal(t, "down", rn.State)
	flips, err := b.RecentFlips(ctx, alive, 1)
	require.NoError(t, err)
	require.Len(t, flips, 1)
	require.Equal(t, "unknown", flips[0].From)
	require.Equal(t, "down", flips[0].To)
	require.Equal(t, "silent_since_restart", flips[0].Reason)
	rn, err = b.Node(ctx, retired)
	require.NoError(t, err)
	require.Equal(t, store.StateRetired, rn.State)
}
