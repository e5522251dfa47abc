package store

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/p2pbeat/heartbeat/clockwork"
)

// flushed collects the Writer's write attempts, for tests to wait on.
type flushed chan flushResult

type flushResult struct {
	n   int
	err error
}

func withOnFlush(f func(n int, err error)) WriterOption {
	return func(o *writerOptions) { o.onFlush = f }
}

// newWriter starts a Writer on a fresh SQLite store with a mock clock at t0;
// it is closed, and checked for leaked goroutines, at cleanup.
func newWriter(t *testing.T, b Backend, cfg WriterConfig, opts ...WriterOption) (*Writer, *clockwork.Mock, flushed) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	if b == nil {
		b = openSQLite(t)
	}
	mock := clockwork.NewMock(t0)
	fl := make(flushed, 64)
	if cfg.Aggregator == "" {
		cfg.Aggregator = aggA
	}
	opts = append([]WriterOption{WithClock(mock), withOnFlush(func(n int, err error) { fl <- flushResult{n, err} })}, opts...)
	w, err := NewWriter(b, cfg, opts...)
	require.NoError(t, err)
	t.Cleanup(func() {
		w.Close()
		goleak.VerifyNone(t, ignore)
	})
	return w, mock, fl
}

func allFlips(t testing.TB, b Backend, p peer.ID) []Flip {
	t.Helper()
	fs, _ := flipsOf(t, b, p, Range{From: t0.Add(-99 * 24 * time.Hour), To: t0.Add(24 * time.Hour)}, MaxPageSize)
	return fs
}

func allSamples(t testing.TB, b Backend, p peer.ID) []Sample {
	t.Helper()
	ss, _, err := b.Samples(ctx, p, Range{From: t0.Add(-99 * 24 * time.Hour), To: t0.Add(24 * time.Hour)}, Page{Limit: MaxPageSize})
	require.NoError(t, err)
	return ss
}

func TestWriterConfigErrorsNameTheField(t *testing.T) {
	b := openSQLite(t)
	for field, cfg := range map[string]WriterConfig{
		"Aggregator":    {},
		"FlushInterval": {Aggregator: aggA, FlushInterval: -1},
		"QueueSize":     {Aggregator: aggA, QueueSize: -1},
		"BatchSize":     {Aggregator: aggA, BatchSize: 10, QueueSize: 5},
		"PruneLimit":    {Aggregator: aggA, PruneLimit: -3},
	} {
		_, err := NewWriter(b, cfg)
		require.ErrorContains(t, err, "WriterConfig."+field)
	}
	_, err := NewWriter(nil, WriterConfig{Aggregator: aggA})
	require.Error(t, err)
}

func TestWriterFlushesEveryInterval(t *testing.T) {
	b := openSQLite(t)
	w, mock, fl := newWriter(t, b, WriterConfig{})
	w.Flip(Flip{Peer: pid(1), At: t0, From: "joining", To: "up"})
	w.Node(node(pid(1), "", "up", t0))
	require.Empty(t, allFlips(t, b, pid(1)), "nothing written before the interval")
	require.Equal(t, 3, w.Pending()) // a flip, a node, a sample

	clockwork.AdvanceTo(mock, t0.Add(DefaultFlushInterval))
	require.Equal(t, flushResult{3, nil}, <-fl)
	require.Equal(t, []Flip{{Peer: pid(1), Aggregator: aggA, At: t0, From: "joining", To: "up"}}, allFlips(t, b, pid(1)))
	n, err := b.Node(ctx, pid(1))
	require.NoError(t, err)
	require.Equal(t, aggA, n.Aggregator, "the Writer stamps its aggregator id")
	require.Equal(t, WriterStats{Flushes: 1, Written: 3}, w.Stats())
}

func TestWriterFlushesAtBatchSize(t *testing.T) {
	b := openSQLite(t)
	w, _, fl := newWriter(t, b, WriterConfig{BatchSize: 10})
	for i := range 10 {
		w.Flip(Flip{Peer: pid(i), At: t0, From: "joining", To: "up"})
	}
	// No clock movement: the tenth record started the flush.
	require.Equal(t, flushResult{10, nil}, <-fl)
	for i := range 10 {
		require.Len(t, allFlips(t, b, pid(i)), 1)
	}
}

func TestWriterDownsamplesNodeRecords(t *testing.T) {
	b := openSQLite(t)
	w, _, _ := newWriter(t, b, WriterConfig{})
	// A node beating every 3s for 10 minutes, its height growing: one
	// sample a minute, and its record at most once a minute, except for a
	// state change, which is queued at once.
	for i := range 200 {
		at := t0.Add(time.Duration(i) * 3 * time.Second)
		n := node(pid(1), "", "up", at)
		n.Height = uint64(i)
		if i >= 150 {
			n.State = "suspect"
		}
		w.Node(n)
		if i == 150 {
			require.NoError(t, w.Flush(ctx))
			got, err := b.Node(ctx, pid(1))
			require.NoError(t, err)
			require.Equal(t, "suspect", got.State)
			require.Equal(t, uint64(150), got.Height)
		}
	}
	require.NoError(t, w.Flush(ctx))
	// One sample per clock minute: the first beat in each (t0 is 03:04:05,
	// so the first minute has 19 beats, then 20 each).
	ss := allSamples(t, b, pid(1))
	require.Len(t, ss, 11)
	require.Equal(t, t0, ss[0].At)
	for i, s := range ss[1:] {
		require.Equal(t, t0.Truncate(time.Minute).Add(time.Duration(i+1)*time.Minute+2*time.Second), s.At)
		require.Equal(t, uint64(19+20*i), s.Height)
	}
	// Records: at 0, at the state change (150), then the latest pending
	// snapshot replaced the queued one (a newer snapshot always does).
	require.LessOrEqual(t, w.Stats().Written, uint64(10+13))
}

// With a source, the Writer pulls snapshots once per SampleInterval: no call
// per heartbeat.
func TestWriterPullsSnapshots(t *testing.T) {
	b := openSQLite(t)
	var mu sync.Mutex
	calls := 0
	height := uint64(10)
	source := func() []Node {
		mu.Lock()
		defer mu.Unlock()
		calls++
		var ns []Node
		for i := range 3 {
			n := node(pid(i), "", "up", time.Time{}) // Updated: the Writer's now
			n.LastSeen, n.Height = t0.Add(time.Duration(calls)*time.Minute), height
			ns = append(ns, n)
		}
		return ns
	}
	w, mock, _ := newWriter(t, b, WriterConfig{}, WithSource(source))
	clockwork.AdvanceTo(mock, t0.Add(59*time.Second))
	require.Zero(t, calls)
	clockwork.AdvanceTo(mock, t0.Add(time.Minute))
	mu.Lock()
	height = 11
	mu.Unlock()
	clockwork.AdvanceTo(mock, t0.Add(2*time.Minute))
	require.NoError(t, w.Flush(ctx))
	require.Equal(t, 2, calls)
	for i := range 3 {
		n, err := b.Node(ctx, pid(i))
		require.NoError(t, err)
		require.Equal(t, t0.Add(2*time.Minute), n.Updated)
		require.Equal(t, uint64(11), n.Height)
		ss := allSamples(t, b, pid(i))
		require.Len(t, ss, 2)
		require.Equal(t, uint64(10), ss[0].Height)
	}
}

// gated wraps a Backend so that a test can hold the Writer inside Apply.
type gated struct {
	Backend
	entered chan struct{}
	release chan struct{}
}

func (g *gated) Apply(ctx context.Context, b Batch) error {
	select {
	case g.entered <- struct{}{}: // buffered: the first entry is seen, later ones never block
	default:
	}
	<-g.release
	return g.Backend.Apply(ctx, b)
}

func TestWriterQueueFullDropsSamplesCoalescesFlips(t *testing.T) {
	inner := openSQLite(t)
	g := &gated{Backend: inner, entered: make(chan struct{}, 1), release: make(chan struct{})}
	w, _, fl := newWriter(t, g, WriterConfig{QueueSize: 10, BatchSize: 10})
	var once sync.Once
	release := func() { once.Do(func() { close(g.release) }) }
	t.Cleanup(release) // runs before the Writer's Close, even on failure

	// Hold the Writer inside a write, so that the queue fills up.
	w.Flip(Flip{Peer: pid(3), At: t0, From: "joining", To: "up"})
	first := make(chan error, 1)
	go func() { first <- w.Flush(ctx) }()
	<-g.entered
	for i := range 15 {
		w.Node(node(pid(100+i), "", "up", t0)) // a record and a sample each
	}
	w.Flip(Flip{Peer: pid(1), At: t0, From: "up", To: "suspect", Reason: "a"})
	w.Flip(Flip{Peer: pid(1), At: t0.Add(time.Second), From: "suspect", To: "down", Reason: "b"})
	w.Flip(Flip{Peer: pid(1), At: t0.Add(2 * time.Second), From: "down", To: "up", Reason: "c"})
	w.Flip(Flip{Peer: pid(2), At: t0, From: "up", To: "left", Reason: "d"})
	st := w.Stats()
	require.Equal(t, uint64(5), st.SamplesDropped, "samples beyond QueueSize")
	require.Equal(t, uint64(2), st.FlipsCoalesced)

	release()
	require.Equal(t, flushResult{1, nil}, <-fl)
	require.NoError(t, <-first)
	require.NoError(t, w.Flush(ctx))
	// pid(1)'s three flips became one: From of the first, the rest of the
	// last. pid(2)'s flip was added although the queue was full.
	require.Equal(t, []Flip{{Peer: pid(1), Aggregator: aggA, At: t0.Add(2 * time.Second), From: "up", To: "up", Reason: "c"}}, allFlips(t, inner, pid(1)))
	require.Len(t, allFlips(t, inner, pid(2)), 1)
	require.Len(t, allSamples(t, inner, pid(109)), 1)
	require.Empty(t, allSamples(t, inner, pid(110)))
	// Dropped samples do not lose the node record.
	_, err := inner.Node(ctx, pid(114))
	require.NoError(t, err)
}

func TestWriterRetire(t *testing.T) {
	b := openSQLite(t)
	w, _, _ := newWriter(t, b, WriterConfig{})
	require.ErrorIs(t, w.Retire(ctx, pid(1), "gone"), ErrNotFound)

	w.Node(node(pid(1), "", "down", t0)) // only queued: Retire writes it first
	require.NoError(t, w.Retire(ctx, pid(1), "retired by operator"))
	n, err := b.Node(ctx, pid(1))
	require.NoError(t, err)
	require.Equal(t, StateRetired, n.State)
	fs := allFlips(t, b, pid(1))
	require.Len(t, fs, 1)
	require.Equal(t, "down", fs[0].From)
	require.Equal(t, "retired by operator", fs[0].Reason)

	require.NoError(t, w.Close())
	require.ErrorIs(t, w.Retire(ctx, pid(1), "x"), ErrClosed)
	require.ErrorIs(t, w.Flush(ctx), ErrClosed)
	w.Flip(Flip{Peer: pid(1), At: t0, From: "a", To: "b"}) // ignored, no panic
	require.Zero(t, w.Pending())
}

func TestWriterCloseFlushesPending(t *testing.T) {
	b := openSQLite(t)
	w, _, _ := newWriter(t, b, WriterConfig{})
	for i := range 5 {
		w.Flip(Flip{Peer: pid(i), At: t0, From: "joining", To: "up"})
	}
	require.NoError(t, w.Close())
	require.NoError(t, w.Close(), "idempotent")
	for i := range 5 {
		require.Len(t, allFlips(t, b, pid(i)), 1)
	}
}

// Close pulls the source once more and writes every record, even within
// its SampleInterval: a clean shutdown leaves each node's record as of the
// shutdown, not as of the last pull.
func TestWriterCloseWritesFinalPull(t *testing.T) {
	b := openSQLite(t)
	var mu sync.Mutex
	lastSeen, height := t0.Add(10*time.Second), uint64(10)
	source := func() []Node {
		mu.Lock()
		defer mu.Unlock()
		n := node(pid(1), "", "up", time.Time{})
		n.LastSeen, n.Height, n.Head = lastSeen, height, fmt.Sprint("h", height)
		return []Node{n}
	}
	w, mock, _ := newWriter(t, b, WriterConfig{}, WithSource(source))
	clockwork.AdvanceTo(mock, t0.Add(time.Minute)) // the periodic pull
	require.NoError(t, w.Flush(ctx))
	n, err := b.Node(ctx, pid(1))
	require.NoError(t, err)
	require.Equal(t, t0.Add(10*time.Second), n.LastSeen)

	mu.Lock()
	lastSeen, height = t0.Add(96*time.Second), 11 // within the same minute's bucket of the record
	mu.Unlock()
	clockwork.AdvanceTo(mock, t0.Add(100*time.Second))
	require.NoError(t, w.Close())
	n, err = b.Node(ctx, pid(1))
	require.NoError(t, err)
	require.Equal(t, t0.Add(96*time.Second), n.LastSeen)
	require.Equal(t, uint64(11), n.Height)
	require.Equal(t, "h11", n.Head)
	require.Equal(t, t0.Add(100*time.Second), n.Updated)
}

// Failing writes, with SQLite's own errors: a full disk (max_page_count
// gives SQLITE_FULL, as a full file system does) and a read-only database
// (query_only gives SQLITE_READONLY, as a read-only file does). The Writer
// counts and logs the failure, keeps flips and node records, drops
// samples, and writes everything kept once writes succeed again.
func TestWriterSurvivesFailingWrites(t *testing.T) {
	for _, c := range []struct {
		name, fail, heal, msg string
	}{
		{"full disk", "PRAGMA max_page_count = %d", "PRAGMA max_page_count = 1000000", "full"},
		{"read-only", "PRAGMA query_only = ON -- %d", "PRAGMA query_only = OFF", "readonly"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := openSQLite(t)
			sb := b.(*sqlBackend)
			sb.db.SetMaxOpenConns(1) // so that the PRAGMAs below hold for every statement
			var pages int64
			require.NoError(t, sb.db.QueryRow("PRAGMA page_count").Scan(&pages))
			_, err := sb.db.Exec(fmt.Sprintf(c.fail, pages))
			require.NoError(t, err)

			var logBuf syncBuffer
			log := hclog.New(&hclog.LoggerOptions{Output: &logBuf, Level: hclog.Info})
			w, mock, fl := newWriter(t, b, WriterConfig{}, WithLogger(log))
			flip := func(i int) Flip {
				return Flip{Peer: pid(i), At: t0.Add(time.Duration(i) * time.Millisecond), From: "up", To: "down", Reason: "silent for 15s, longer than the threshold"}
			}
			for i := range 200 {
				w.Flip(flip(i))
			}
			w.Node(node(pid(1), "", "down", t0))
			clockwork.Advance(mock, time.Second)
			r := <-fl
			require.ErrorContains(t, r.err, c.msg)
			require.ErrorContains(t, r.err, SQLiteFile, "the error names the file")
			clockwork.Advance(mock, time.Second) // fails again: logged once per minute only
			require.Error(t, (<-fl).err)
			for i := 200; i < 210; i++ {
				w.Flip(flip(i)) // tracking goes on meanwhile
			}
			st := w.Stats()
			require.Equal(t, uint64(2), st.FlushErrors)
			require.Equal(t, uint64(1), st.SamplesDropped) // the node's one sample
			require.Equal(t, 1, bytes.Count(logBuf.Bytes(), []byte("store write failed")))

			_, err = sb.db.Exec(c.heal)
			require.NoError(t, err)
			clockwork.Advance(mock, time.Second)
			require.NoError(t, (<-fl).err)
			var flips, peers int
			require.NoError(t, sb.db.QueryRow("SELECT COUNT(*), COUNT(DISTINCT peer_id) FROM flips").Scan(&flips, &peers))
			require.Equal(t, 210, flips, "every flip kept through the outage")
			require.Equal(t, 210, peers, "once each")
			require.Len(t, allFlips(t, b, pid(209)), 1)
			_, err = b.Node(ctx, pid(1))
			require.NoError(t, err)
			require.Contains(t, logBuf.String(), "store writes recovered")
		})
	}
}

func TestWriterPrunesWithRetention(t *testing.T) {
	b := openSQLite(t)
	day := 24 * time.Hour
	var batch Batch
	for i := range 4 {
		for _, age := range []time.Duration{91 * day, 89 * day, 15 * day, 13 * day} {
			at := t0.Add(-age)
			batch.Flips = append(batch.Flips, Flip{Peer: pid(i), Aggregator: aggA, At: at, From: "up", To: "down"})
			batch.Samples = append(batch.Samples, Sample{Peer: pid(i), Aggregator: aggA, At: at, Height: 1})
		}
	}
	apply(t, b, batch)
	// Pruning at 5.5s (between two flush ticks), 2 flips and the samples of
	// 2 peers per run.
	w, mock, _ := newWriter(t, b, WriterConfig{PruneInterval: 5500 * time.Millisecond, PruneLimit: 2})
	clockwork.AdvanceTo(mock, t0.Add(5*time.Second))
	require.Zero(t, w.Stats().Pruned, "not before PruneInterval")
	clockwork.AdvanceTo(mock, t0.Add(5500*time.Millisecond))
	// One bounded run: 2 of the 4 expired flips, and the expired samples
	// (3 per node) of 2 of the 5 interned peers (4 nodes and aggA).
	first := w.Stats().Pruned
	require.GreaterOrEqual(t, first, uint64(2))
	require.LessOrEqual(t, first, uint64(2+2*3))
	// Continued at each flush tick until done: 4 expired flips and 12
	// expired samples in all, in at most 3 runs.
	clockwork.AdvanceTo(mock, t0.Add(8*time.Second))
	require.Equal(t, uint64(16), w.Stats().Pruned)
	for i := range 4 {
		require.Len(t, allFlips(t, b, pid(i)), 3)
		ss := allSamples(t, b, pid(i))
		require.Len(t, ss, 1)
		require.Equal(t, t0.Add(-13*day), ss[0].At)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

func (s *syncBuffer) String() string { return string(s.Bytes()) }
