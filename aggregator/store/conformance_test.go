package store

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
)

// The conformance suite: every test runs against SQLite and PostgreSQL.

var ctx = context.Background()

func TestNodeRoundTripAndReopen(t *testing.T) {
	forEach(t, func(t *testing.T, be backend) {
		b := be.open(t)
		_, err := b.Node(ctx, pid(1))
		require.ErrorIs(t, err, ErrNotFound)

		n := node(pid(1), aggA, "up", t0.Add(time.Minute))
		n.Height = math.MaxUint64 // stored as MaxInt64
		apply(t, b, Batch{Nodes: []Node{n}})
		got, err := b.Node(ctx, pid(1))
		require.NoError(t, err)
		n.Height = math.MaxInt64
		require.Equal(t, n, got)

		require.NoError(t, b.Close())
		b = be.open(t)
		got, err = b.Node(ctx, pid(1))
		require.NoError(t, err)
		require.Equal(t, n, got)
	})
}

func TestUpsertKeepsFirstSeenAndRefusesStale(t *testing.T) {
	forEach(t, func(t *testing.T, be backend) {
		b := be.open(t)
		n := node(pid(1), aggA, "up", t0.Add(time.Minute))
		apply(t, b, Batch{Nodes: []Node{n}})

		later := node(pid(1), aggA, "down", t0.Add(2*time.Minute))
		later.FirstSeen = t0.Add(time.Hour) // an update never moves FirstSeen
		later.Nickname, later.Height = "renamed", 200
		stale := node(pid(1), aggA, "suspect", t0.Add(90*time.Second))
		// Two records of one node in one batch: the last wins.
		apply(t, b, Batch{Nodes: []Node{n, later}})
		apply(t, b, Batch{Nodes: []Node{stale}})

		got, err := b.Node(ctx, pid(1))
		require.NoError(t, err)
		require.Equal(t, "down", got.State)
		require.Equal(t, "renamed", got.Nickname)
		require.Equal(t, uint64(200), got.Height)
		require.Equal(t, t0, got.FirstSeen)
		require.Equal(t, t0.Add(2*time.Minute), got.Updated)
	})
}

func TestFreshestRecordWins(t *testing.T) {
	forEach(t, func(t *testing.T, be backend) {
		b := be.open(t)
		apply(t, b, Batch{Nodes: []Node{
			node(pid(1), aggA, "up", t0.Add(2*time.Minute)),
			node(pid(1), aggB, "down", t0.Add(time.Minute)),
			node(pid(2), aggA, "suspect", t0.Add(time.Minute)),
			node(pid(2), aggB, "down", t0.Add(3*time.Minute)),
			node(pid(3), aggB, "left", t0.Add(time.Minute)),
		}})
		got, err := b.Node(ctx, pid(1))
		require.NoError(t, err)
		require.Equal(t, aggA, got.Aggregator)
		require.Equal(t, "up", got.State)

		all, err := b.Nodes(ctx, NodeFilter{})
		require.NoError(t, err)
		require.Len(t, all, 3)
		byPeer := map[peer.ID]Node{}
		for i, n := range all {
			byPeer[n.Peer] = n
			if i > 0 {
				require.Less(t, all[i-1].Peer.String(), n.Peer.String(), "sorted by peer id")
			}
		}
		require.Equal(t, "up", byPeer[pid(1)].State)
		require.Equal(t, "down", byPeer[pid(2)].State)
		require.Equal(t, aggB, byPeer[pid(2)].Aggregator)

		// The state filter applies to the winning record: pid(2)'s
		// "suspect" from aggA lost.
		sus, err := b.Nodes(ctx, NodeFilter{State: "suspect"})
		require.NoError(t, err)
		require.Empty(t, sus)
		down, err := b.Nodes(ctx, NodeFilter{State: "down"})
		require.NoError(t, err)
		require.Len(t, down, 1)
		require.Equal(t, pid(2), down[0].Peer)

		// The aggregator filter picks among that aggregator's records only.
		own, err := b.Nodes(ctx, NodeFilter{Aggregator: aggA})
		require.NoError(t, err)
		require.Len(t, own, 2)
		for _, n := range own {
			require.Equal(t, aggA, n.Aggregator)
		}
	})
}

func flipsOf(t testing.TB, b Backend, p peer.ID, r Range, limit int) (all []Flip, pages int) {
	t.Helper()
	after := ""
	for {
		fs, next, err := b.Flips(ctx, p, r, Page{After: after, Limit: limit})
		require.NoError(t, err)
		require.LessOrEqual(t, len(fs), limit)
		all = append(all, fs...)
		pages++
		if next == "" {
			return all, pages
		}
		after = next
	}
}

func TestFlipsPaged(t *testing.T) {
	forEach(t, func(t *testing.T, be backend) {
		b := be.open(t)
		var fs []Flip
		for i := range 250 {
			// Pairs share a millisecond (and two aggregators write), so
			// paging must break ties.
			agg := aggA
			if i%3 == 0 {
				agg = aggB
			}
			fs = append(fs, Flip{Peer: pid(1), Aggregator: agg, At: t0.Add(time.Duration(i/2) * time.Second),
				From: "up", To: "down", Reason: "r" + string(rune('a'+i%26))})
		}
		fs = append(fs, Flip{Peer: pid(2), Aggregator: aggA, At: t0, From: "joining", To: "up"})
		apply(t, b, Batch{Flips: fs})

		r := Range{From: t0, To: t0.Add(time.Hour)}
		got, pages := flipsOf(t, b, pid(1), r, 100)
		require.Equal(t, 3, pages)
		require.Len(t, got, 250)
		seen := map[string]int{}
		for i, f := range got {
			require.Equal(t, pid(1), f.Peer)
			if i > 0 {
				require.False(t, f.At.Before(got[i-1].At), "oldest first")
			}
			seen[f.At.String()+f.Aggregator.String()+f.Reason]++
		}
		for _, f := range fs[:250] {
			require.Equal(t, 1, seen[f.At.String()+f.Aggregator.String()+f.Reason], "each flip once")
		}

		recent, err := b.RecentFlips(ctx, pid(1), 3)
		require.NoError(t, err)
		require.Len(t, recent, 3)
		require.Equal(t, t0.Add(124*time.Second), recent[0].At, "newest first")
		require.Equal(t, t0.Add(123*time.Second), recent[2].At)

		// [From, To) is half-open.
		r = Range{From: t0.Add(10 * time.Second), To: t0.Add(20 * time.Second)}
		got, _ = flipsOf(t, b, pid(1), r, MaxPageSize)
		require.Len(t, got, 20)
		require.Equal(t, t0.Add(10*time.Second), got[0].At)
		require.Equal(t, t0.Add(19*time.Second), got[19].At)

		// A limit above MaxPageSize is clamped; 0 means the default.
		got, _, err = b.Flips(ctx, pid(1), Range{From: t0, To: t0.Add(time.Hour)}, Page{})
		require.NoError(t, err)
		require.Len(t, got, DefaultPageSize)

		// An unknown node has no flips.
		got, next, err := b.Flips(ctx, pid(99), r, Page{})
		require.NoError(t, err)
		require.Empty(t, got)
		require.Empty(t, next)

		_, _, err = b.Flips(ctx, pid(1), r, Page{After: "garbage"})
		require.ErrorIs(t, err, ErrBadCursor)
		for _, bad := range []Range{
			{From: r.To, To: r.From},
			{From: r.From, To: r.From},
			{To: r.To},
			{From: t0, To: t0.Add(MaxRange + time.Millisecond)},
		} {
			_, _, err = b.Flips(ctx, pid(1), bad, Page{})
			require.ErrorIs(t, err, ErrBadRange, "%v", bad)
			_, _, err = b.Samples(ctx, pid(1), bad, Page{})
			require.ErrorIs(t, err, ErrBadRange, "%v", bad)
			_, err = b.Uptime(ctx, pid(1), bad)
			require.ErrorIs(t, err, ErrBadRange, "%v", bad)
		}
	})
}

func TestSamplesPaged(t *testing.T) {
	forEach(t, func(t *testing.T, be backend) {
		b := be.open(t)
		var ss []Sample
		for i := range 150 {
			ss = append(ss, Sample{Peer: pid(1), Aggregator: aggA, At: t0.Add(time.Duration(i) * time.Minute), Height: uint64(i)})
			ss = append(ss, Sample{Peer: pid(1), Aggregator: aggB, At: t0.Add(time.Duration(i) * time.Minute), Height: uint64(i)})
		}
		apply(t, b, Batch{Samples: ss})
		apply(t, b, Batch{Samples: ss[:10]}) // a replay is ignored, not an error

		r := Range{From: t0, To: t0.Add(24 * time.Hour)}
		var got []Sample
		after := ""
		for {
			page, next, err := b.Samples(ctx, pid(1), r, Page{After: after, Limit: 70})
			require.NoError(t, err)
			got = append(got, page...)
			if next == "" {
				break
			}
			after = next
		}
		require.Len(t, got, 300)
		for i, s := range got {
			require.Equal(t, uint64(i/2), s.Height)
			require.Equal(t, t0.Add(time.Duration(i/2)*time.Minute), s.At)
		}
	})
}

func TestUptimeFromFlips(t *testing.T) {
	forEach(t, func(t *testing.T, be backend) {
		b := be.open(t)
		_, err := b.Uptime(ctx, pid(1), Range{From: t0, To: t0.Add(time.Hour)})
		require.ErrorIs(t, err, ErrNotFound)

		m := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Minute) }
		apply(t, b, Batch{
			Nodes: []Node{node(pid(1), aggA, "up", m(60)), node(pid(1), aggB, "down", m(1))},
			Flips: []Flip{
				{Peer: pid(1), Aggregator: aggA, At: m(10), From: "joining", To: "up"},
				{Peer: pid(1), Aggregator: aggA, At: m(20), From: "up", To: "suspect"},
				{Peer: pid(1), Aggregator: aggA, At: m(25), From: "suspect", To: "down"},
				{Peer: pid(1), Aggregator: aggA, At: m(40), From: "down", To: "up"},
				// aggB's record loses, so its flips do not count.
				{Peer: pid(1), Aggregator: aggB, At: m(0), From: "joining", To: "down"},
			},
		})
		for _, c := range []struct {
			from, to  int
			known, up int // minutes
		}{
			{0, 60, 50, 30},  // unknown before the first flip
			{15, 45, 30, 10}, // starts Up (flip at 10): 15..20 and 40..45
			{50, 60, 10, 10}, // no flip inside: the state before it holds
			{0, 5, 0, 0},     // nothing known
			{20, 25, 5, 0},   // suspect is not up
		} {
			u, err := b.Uptime(ctx, pid(1), Range{From: m(c.from), To: m(c.to)})
			require.NoError(t, err)
			require.Equal(t, time.Duration(c.known)*time.Minute, u.Known, "%+v", c)
			require.Equal(t, time.Duration(c.up)*time.Minute, u.Up, "%+v", c)
			if c.known > 0 {
				require.InDelta(t, float64(c.up)/float64(c.known), u.Fraction(), 1e-9)
			} else {
				require.Zero(t, u.Fraction())
			}
		}
	})
}

// Uptimes answers for every node in one query, with the figures Uptime
// gives for each (one definition of uptime).
func TestUptimesOfEveryNode(t *testing.T) {
	forEach(t, func(t *testing.T, be backend) {
		b := be.open(t)
		now := t0.Add(48 * time.Hour)
		day := Range{From: now.Add(-24 * time.Hour), To: now}
		got, err := b.Uptimes(ctx, day)
		require.NoError(t, err)
		require.Empty(t, got, "an empty store")

		h := func(n int) time.Time { return day.From.Add(time.Duration(n) * time.Hour) }
		apply(t, b, Batch{
			Nodes: []Node{
				node(pid(1), aggA, "up", now), node(pid(2), aggA, "up", now), node(pid(3), aggA, "joining", now),
				node(pid(4), aggA, "down", now), node(pid(4), aggB, "up", h(1)), // aggB's record of 4 loses
				node(pid(5), aggA, "up", now),
			},
			Flips: []Flip{
				// 1: Up from before the window, Down for 6 h: Up 18 h of 24.
				{Peer: pid(1), Aggregator: aggA, At: h(-30), From: "joining", To: "up"},
				{Peer: pid(1), Aggregator: aggA, At: h(4), From: "up", To: "down"},
				{Peer: pid(1), Aggregator: aggA, At: h(10), From: "down", To: "up"},
				// 2: first heard 12 h into the window, Up since: known 12 h, all Up.
				{Peer: pid(2), Aggregator: aggA, At: h(12), From: "joining", To: "up"},
				// 3: no flip at all: nothing known.
				// 4: Down for the whole window by aggA; aggB's flips do not count.
				{Peer: pid(4), Aggregator: aggA, At: h(-2), From: "up", To: "down"},
				{Peer: pid(4), Aggregator: aggB, At: h(0), From: "down", To: "up"},
				// 5: flips exactly at the window's start and end: the one at
				// the start counts from there, the one at the end not at all.
				{Peer: pid(5), Aggregator: aggA, At: h(-1), From: "joining", To: "down"},
				{Peer: pid(5), Aggregator: aggA, At: h(0), From: "down", To: "up"},
				{Peer: pid(5), Aggregator: aggA, At: h(6), From: "up", To: "suspect"},
				{Peer: pid(5), Aggregator: aggA, At: h(6), From: "suspect", To: "up"}, // same instant: the later flip holds
				{Peer: pid(5), Aggregator: aggA, At: h(24), From: "up", To: "down"},
			},
		})
		want := map[peer.ID]struct {
			known, up time.Duration
			fraction  float64
		}{
			pid(1): {24 * time.Hour, 18 * time.Hour, 0.75},
			pid(2): {12 * time.Hour, 12 * time.Hour, 1},
			pid(3): {0, 0, 0},
			pid(4): {24 * time.Hour, 0, 0},
			pid(5): {24 * time.Hour, 24 * time.Hour, 1},
		}
		got, err = b.Uptimes(ctx, day)
		require.NoError(t, err)
		require.Len(t, got, len(want))
		for _, u := range got {
			w, ok := want[u.Peer]
			require.True(t, ok, "unexpected node %s", u.Peer)
			require.Equal(t, day, u.Window)
			require.Equal(t, w.known, u.Known, "known of %s", u.Peer)
			require.Equal(t, w.up, u.Up, "up of %s", u.Peer)
			require.InDelta(t, w.fraction, u.Fraction(), 1e-12, "fraction of %s", u.Peer)
			one, err := b.Uptime(ctx, u.Peer, day)
			require.NoError(t, err)
			require.Equal(t, one, u.Uptime, "Uptime and Uptimes agree on %s", u.Peer)
		}
		_, err = b.Uptimes(ctx, Range{From: now, To: now.Add(-time.Hour)})
		require.ErrorIs(t, err, ErrBadRange)
	})
}

// The first uptime queries of a backend, concurrent, share one prepared
// statement per form and agree.
func TestUptimeConcurrentFirstUse(t *testing.T) {
	forEach(t, func(t *testing.T, be backend) {
		b := be.open(t)
		apply(t, b, Batch{
			Nodes: []Node{node(pid(1), aggA, "up", t0.Add(time.Hour))},
			Flips: []Flip{{Peer: pid(1), Aggregator: aggA, At: t0, From: "joining", To: "up"}},
		})
		r := Range{From: t0, To: t0.Add(time.Hour)}
		errs := make(chan error, 8)
		for i := range 8 {
			go func() {
				var err error
				if i%2 == 0 {
					var u Uptime
					if u, err = b.Uptime(ctx, pid(1), r); err == nil && u.Up != time.Hour {
						err = fmt.Errorf("up %v", u.Up)
					}
				} else {
					var us []NodeUptime
					if us, err = b.Uptimes(ctx, r); err == nil && (len(us) != 1 || us[0].Up != time.Hour) {
						err = fmt.Errorf("uptimes %+v", us)
					}
				}
				errs <- err
			}()
		}
		for range 8 {
			require.NoError(t, <-errs)
		}
		require.NoError(t, b.Close())
		_, err := b.Uptimes(ctx, r)
		require.ErrorIs(t, err, ErrClosed)
	})
}

func TestRetire(t *testing.T) {
	forEach(t, func(t *testing.T, be backend) {
		b := be.open(t)
		apply(t, b, Batch{Nodes: []Node{
			node(pid(1), aggA, "down", t0.Add(time.Minute)),
			node(pid(1), aggB, "up", t0.Add(2*time.Minute)),
			node(pid(2), aggA, "up", t0.Add(time.Minute)),
		}})
		at := t0.Add(time.Hour)
		apply(t, b, Batch{Retires: []Retire{
			{Peer: pid(1), Aggregator: aggA, At: at, Reason: "retired by operator"},
			{Peer: pid(3), Aggregator: aggA, At: at}, // unknown: nothing to do
		}})
		for _, agg := range []peer.ID{aggA, aggB} {
			own, err := b.Nodes(ctx, NodeFilter{Aggregator: agg, State: StateRetired})
			require.NoError(t, err)
			require.Len(t, own, 1, "every aggregator's record is retired")
			require.Equal(t, pid(1), own[0].Peer)
		}
		fs, _, err := b.Flips(ctx, pid(1), Range{From: t0, To: at.Add(time.Second)}, Page{})
		require.NoError(t, err)
		require.Equal(t, []Flip{{Peer: pid(1), Aggregator: aggA, At: at, From: "up", To: StateRetired, Reason: "retired by operator"}}, fs)
		_, err = b.Node(ctx, pid(3))
		require.ErrorIs(t, err, ErrNotFound)

		// A record queued before the retire does not undo it; a node that
		// beats again after it comes back.
		apply(t, b, Batch{Nodes: []Node{node(pid(1), aggA, "up", at.Add(-time.Second))}})
		n, err := b.Node(ctx, pid(1))
		require.NoError(t, err)
		require.Equal(t, StateRetired, n.State)
		apply(t, b, Batch{Nodes: []Node{node(pid(1), aggA, "up", at.Add(time.Second))}})
		n, err = b.Node(ctx, pid(1))
		require.NoError(t, err)
		require.Equal(t, "up", n.State)
	})
}

func TestApplyIsAtomic(t *testing.T) {
	forEach(t, func(t *testing.T, be backend) {
		b := be.open(t)
		err := b.Apply(ctx, Batch{
			Flips: []Flip{{Peer: pid(1), Aggregator: aggA, At: t0, From: "joining", To: "up"}},
			Nodes: []Node{node(pid(1), "", "up", t0)}, // no aggregator: refused
		})
		require.Error(t, err)
		fs, _, err := b.Flips(ctx, pid(1), Range{From: t0, To: t0.Add(time.Hour)}, Page{})
		require.NoError(t, err)
		require.Empty(t, fs, "nothing of a failed batch is kept")
		// The peer ids interned by the failed batch are not cached: the next
		// batch still works.
		apply(t, b, Batch{Nodes: []Node{node(pid(1), aggA, "up", t0)}})
		_, err = b.Node(ctx, pid(1))
		require.NoError(t, err)
	})
}

func TestPruneBounded(t *testing.T) {
	forEach(t, func(t *testing.T, be backend) {
		b := be.open(t)
		var batch Batch
		for i := range 10 {
			for j := range 5 {
				batch.Flips = append(batch.Flips, Flip{Peer: pid(i), Aggregator: aggA, At: t0.Add(time.Duration(j) * time.Hour), From: "up", To: "down"})
				batch.Samples = append(batch.Samples, Sample{Peer: pid(i), Aggregator: aggA, At: t0.Add(time.Duration(j) * time.Hour), Height: uint64(j)})
			}
		}
		apply(t, b, batch)
		cut := t0.Add(3 * time.Hour) // rows at hours 0, 1, 2 expire: 30 flips, 30 samples

		// 11 peers (10 nodes and aggA), 4 per run: 3 runs per pass over the
		// samples; flips go 4 at a time: 8 runs.
		var total int64
		runs := 0
		for {
			n, done, err := b.Prune(ctx, cut, cut, 4)
			require.NoError(t, err)
			require.LessOrEqual(t, n, int64(4+4*3), "at most limit flips and limit nodes' samples per run")
			total += n
			runs++
			if done {
				break
			}
			require.Less(t, runs, 20)
		}
		require.GreaterOrEqual(t, runs, 8)
		require.Equal(t, int64(60), total)
		for i := range 10 {
			fs, _, err := b.Flips(ctx, pid(i), Range{From: t0, To: t0.Add(24 * time.Hour)}, Page{})
			require.NoError(t, err)
			require.Len(t, fs, 2)
			ss, _, err := b.Samples(ctx, pid(i), Range{From: t0, To: t0.Add(24 * time.Hour)}, Page{})
			require.NoError(t, err)
			require.Len(t, ss, 2)
			require.Equal(t, cut, ss[0].At)
		}
		_, _, err := b.Prune(ctx, cut, cut, 0)
		require.Error(t, err)
	})
}

// Readers and writers at once (run with -race); every batch lands whole.
func TestConcurrentApplyAndRead(t *testing.T) {
	forEach(t, func(t *testing.T, be backend) {
		b := be.open(t)
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 10 {
					at := t0.Add(time.Duration(w*100+i) * time.Second)
					err := b.Apply(ctx, Batch{
						Nodes: []Node{node(pid(w), aggA, "up", at)},
						Flips: []Flip{{Peer: pid(w), Aggregator: aggA, At: at, From: "down", To: "up"}},
					})
					if err != nil {
						errs <- err
					}
					if _, err := b.Nodes(ctx, NodeFilter{}); err != nil {
						errs <- err
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		for w := range 4 {
			fs, _, err := b.Flips(ctx, pid(w), Range{From: t0, To: t0.Add(time.Hour)}, Page{})
			require.NoError(t, err)
			require.Len(t, fs, 10)
		}
	})
}
