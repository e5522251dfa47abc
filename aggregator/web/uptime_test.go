package web

import (
	"context"
	"errors"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator/store"
	"github.com/p2pbeat/heartbeat/clockwork"
)

// fakeUptimes is an Uptimes a test edits; it records every read.
type fakeUptimes struct {
	mu      sync.Mutex
	m       map[string]float64
	err     error
	reads   [][2]time.Time
	block   bool          // wait for the context's end, as a stuck database would
	entered chan struct{} // receives when a read starts, if set
}

func (f *fakeUptimes) Uptimes(ctx context.Context, from, to time.Time) (map[string]float64, error) {
	f.mu.Lock()
	f.reads = append(f.reads, [2]time.Time{from, to})
	m, err, block := maps.Clone(f.m), f.err, f.block
	f.mu.Unlock()
	if f.entered != nil {
		f.entered <- struct{}{}
	}
	if block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return m, err
}

func (f *fakeUptimes) set(m map[string]float64, err error) {
	f.mu.Lock()
	f.m, f.err = m, err
	f.mu.Unlock()
}

func (f *fakeUptimes) readsSoFar() [][2]time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][2]time.Time(nil), f.reads...)
}

// recvUptime receives events until one carries node p with uptime want.
func recvUptime(t *testing.T, ch <-chan []byte, p string, want float64) {
	t.Helper()
	deadline := time.After(guard)
	for {
		select {
		case msg, ok := <-ch:
			require.True(t, ok, "subscriber channel closed")
			for _, n := range parse(t, msg).ev.Nodes {
				if n.Peer == p && n.Uptime24h == want {
					return
				}
			}
		case <-deadline:
			t.Fatalf("no event with uptime %v for %s", want, p)
		}
	}
}

// The uptime column is read from the Uptimes for every node at once, at
// most once per UptimeInterval on the dashboard's clock whatever the
// refreshes, subscribers and Notify calls in between; a node the Uptimes
// leave out, or a failed read, shows Unknown, and a value the Source sets
// itself is kept.
func TestUptimeColumnIsReadOncePerInterval(t *testing.T) {
	own := node("c", "up", 1)
	own.Uptime24h = 0.5
	src := newFakeSource(node("a", "up", 1), node("b", "down", 1), own)
	u := &fakeUptimes{m: map[string]float64{"a": 0.75004, "c": 0.9, "gone": 1}}
	d, m := newDash(t, src, WithUptimes(u), WithRefreshInterval(time.Second))
	ch, cancel, err := d.Subscribe()
	require.NoError(t, err)
	defer cancel()

	snap := recv(t, ch)
	for _, n := range snap.ev.Nodes {
		want := map[string]float64{"a": Unknown, "b": Unknown, "c": 0.5}[n.Peer]
		require.Equal(t, want, n.Uptime24h, "%s before the first read", n.Peer)
	}
	recvUptime(t, ch, "a", 0.75) // rounded to 0.001
	require.Equal(t, [][2]time.Time{{t0.Add(-UptimeWindow), t0}}, u.readsSoFar())
	d.mu.Lock()
	require.Equal(t, map[string]float64{"a": 0.75, "c": 0.9}, d.uptime, "only the nodes on the table are kept")
	d.mu.Unlock()

	// A minute of refreshes, a Notify and a new page: no second read.
	d.Notify()
	recv(t, ch)
	for range 59 {
		clockwork.Advance(m, time.Second)
		recv(t, ch)
	}
	_, cancel2, err := d.Subscribe()
	require.NoError(t, err)
	cancel2()
	require.Len(t, u.readsSoFar(), 1)

	// The next refresh on the minute reads again, over the new window.
	u.set(map[string]float64{"a": 0.5, "b": 1}, nil)
	clockwork.Advance(m, time.Second)
	recvUptime(t, ch, "b", 1)
	now := t0.Add(UptimeInterval)
	require.Equal(t, [2]time.Time{now.Add(-UptimeWindow), now}, u.readsSoFar()[1])
	d.mu.Lock()
	got := map[string]float64{}
	for p, n := range d.prev {
		got[p] = n.Uptime24h
	}
	d.mu.Unlock()
	require.Equal(t, map[string]float64{"a": 0.5, "b": 1, "c": 0.5}, got)

	// A failed read: Unknown until the next one.
	u.set(nil, errors.New("database is locked"))
	for range 59 {
		clockwork.Advance(m, time.Second)
		recv(t, ch)
	}
	require.Len(t, u.readsSoFar(), 2)
	clockwork.Advance(m, time.Second)
	recvUptime(t, ch, "a", Unknown)
	require.Len(t, u.readsSoFar(), 3)
}

// No page open, no read: the store is not asked while nobody watches.
func TestUptimeNotReadWithoutSubscribers(t *testing.T) {
	src := newFakeSource(node("a", "up", 1))
	u := &fakeUptimes{}
	d, m := newDash(t, src, WithUptimes(u), WithRefreshInterval(time.Second))
	for range 3 {
		clockwork.Advance(m, UptimeInterval)
	}
	require.Equal(t, uint64(0), d.Stats().Refreshes)
	require.Empty(t, u.readsSoFar())
}

// Close ends a read that hangs (its context is cancelled) and waits for
// it: no goroutine outlives the dashboard (goleak in TestMain).
func TestCloseEndsAStuckUptimeRead(t *testing.T) {
	u := &fakeUptimes{block: true, entered: make(chan struct{}, 1)}
	d, err := New(newFakeSource(node("a", "up", 1)), WithClock(clockwork.NewMock(t0)), WithUptimes(u),
		WithRegisterer(prometheus.NewRegistry()))
	require.NoError(t, err)
	_, cancel, err := d.Subscribe()
	require.NoError(t, err)
	cancel()
	<-u.entered
	require.NoError(t, d.Close())
	require.Len(t, u.readsSoFar(), 1)
}

// StoreUptimes over a real SQLite store: the store's figures by peer id,
// nodes with no known state left out.
func TestStoreUptimes(t *testing.T) {
	ctx := context.Background()
	b, err := store.OpenSQLite(ctx, t.TempDir())
	require.NoError(t, err)
	defer b.Close()
	p, q, agg := testPeer(1), testPeer(2), testPeer(100)
	h := func(n int) time.Time { return t0.Add(time.Duration(n-24) * time.Hour) }
	require.NoError(t, b.Apply(ctx, store.Batch{
		Nodes: []store.Node{
			{Peer: p, Aggregator: agg, State: "up", FirstSeen: h(-6), LastSeen: t0, Updated: t0},
			{Peer: q, Aggregator: agg, State: "joining", FirstSeen: t0, Updated: t0},
		},
		Flips: []store.Flip{
			{Peer: p, Aggregator: agg, At: h(-6), From: "joining", To: "up"},
			{Peer: p, Aggregator: agg, At: h(12), From: "up", To: "down"},
			{Peer: p, Aggregator: agg, At: h(18), From: "down", To: "up"},
		},
	}))
	got, err := StoreUptimes(b).Uptimes(ctx, t0.Add(-UptimeWindow), t0)
	require.NoError(t, err)
	require.Equal(t, map[string]float64{p.String(): 0.75}, got, "Up 18 h of 24; q has no history")
}
