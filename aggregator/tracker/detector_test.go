package tracker

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
)

// sender is a simulated node beating every period with jitter, on one
// stream, against a tracker swept every second.
type sender struct {
	id     peer.ID
	period time.Duration
	next   time.Time
}

// run beats every sender on time and sweeps every second from t0 to end,
// returning every change. Jitter is uniform in ±jitter per beat.
func run(t *testing.T, tr *Tracker, senders []*sender, end time.Time, jitter time.Duration, rng *rand.Rand) []Change {
	t.Helper()
	var changes []Change
	for now := t0; !now.After(end); now = now.Add(100 * time.Millisecond) {
		for _, s := range senders {
			if !now.Before(s.next) {
				ch, ok := beat(t, tr, s.id, hb("h", 1, ""), now)
				if ok {
					changes = append(changes, ch)
				}
				j := time.Duration(0)
				if jitter > 0 {
					j = time.Duration(rng.Int64N(int64(2*jitter))) - jitter
				}
				s.next = s.next.Add(s.period + j)
			}
		}
		if now.Sub(t0)%time.Second == 0 {
			changes = tr.Sweep(now, changes)
		}
	}
	return changes
}

// Mixed 3s and 10s senders against one default tracker (ExpectedPeriod 3s):
// no flap, at join or later, and each node's period is learned.
func TestMixedPeriodsNoFlap(t *testing.T) {
	tr := newTracker(t, Config{StartupGrace: -1})
	rng := rand.New(rand.NewPCG(1, 2))
	var senders []*sender
	for i := range 40 {
		p := 3 * time.Second
		if i%2 == 1 {
			p = 10 * time.Second
		}
		s := &sender{id: pid(i), period: p, next: t0.Add(time.Duration(rng.Int64N(int64(p))))}
		senders = append(senders, s)
		require.NoError(t, tr.StreamOpened(s.id, t0))
	}
	changes := run(t, tr, senders, t0.Add(30*time.Minute), 200*time.Millisecond, rng)
	for _, ch := range changes {
		require.Equal(t, Up, ch.To, "flap: %+v", ch)
	}
	require.Len(t, changes, 40, "one Joining -> Up each, nothing else")
	for _, s := range senders {
		n, _ := tr.Node(s.id)
		require.InDelta(t, s.period.Seconds(), n.Period.Seconds(), 0.25, "learned period of a %v sender", s.period)
	}
}

// A node is judged by its own period: a 10s node is Suspect after 20s of
// silence and Down after 50s, a 3s node after 6s and 15s.
func TestThresholdsScaleWithOwnPeriod(t *testing.T) {
	for _, p := range []time.Duration{3 * time.Second, 10 * time.Second} {
		t.Run(p.String(), func(t *testing.T) {
			tr := newTracker(t, Config{StartupGrace: -1, ReconnectAllowance: -1})
			id := pid(1)
			require.NoError(t, tr.StreamOpened(id, t0))
			var last time.Time
			for i := range 5 {
				last = t0.Add(time.Duration(i) * p)
				beat(t, tr, id, hb("h", 1, ""), last)
			}
			require.Empty(t, tr.Sweep(last.Add(2*p), nil))
			require.Equal(t, Suspect, tr.Sweep(last.Add(2*p+1), nil)[0].To)
			require.Empty(t, tr.Sweep(last.Add(5*p), nil))
			require.Equal(t, Down, tr.Sweep(last.Add(5*p+1), nil)[0].To)
		})
	}
}

// Measured in a reconnect storm of 15,000 senders (docs/benchmarks.md): a
// node beating every 3 s whose first beat on its new stream is read 2.3 s
// late (the stream's setup queued behind the storm) and its second on
// time shows one interval of 0.75 s. Learned from that one interval (1 s,
// clamped), its Suspect threshold was 2 s and the next beat, on time,
// came 3.2 s later: Suspect. A period is learned from two intervals at
// least, the larger of which wins: it stays Up and learns 3 s.
func TestFirstIntervalAfterLateReadIsNotThePeriod(t *testing.T) {
	tr := newTracker(t, Config{StartupGrace: -1, ReconnectAllowance: -1})
	id := pid(1)
	require.NoError(t, tr.StreamOpened(id, t0))
	sent := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	beat(t, tr, id, hb("h", 1, ""), sent(2.3))  // sent at 0, read 2.3 s late
	beat(t, tr, id, hb("h", 1, ""), sent(3.05)) // sent at 3, read on time
	n, _ := tr.Node(id)
	require.Equal(t, 30*time.Second, n.Period, "one interval: still MaxPeriod")
	require.Empty(t, tr.Sweep(sent(6.0), nil), "2.95 s silent: not Suspect")
	beat(t, tr, id, hb("h", 1, ""), sent(6.05))
	n, _ = tr.Node(id)
	require.Equal(t, 3*time.Second, n.Period, "two intervals: the larger")
	require.Empty(t, tr.Sweep(sent(6.05+6), nil))
	require.Equal(t, Suspect, tr.Sweep(sent(6.05+6.001), nil)[0].To, "then silent past 2x its period")
}

// Before a node's first interval it is judged with MaxPeriod; one late beat
// among many does not move its period (median); a reconnect gap is not an
// interval; samples are clamped to [MinPeriod, MaxPeriod].
func TestPeriodEstimate(t *testing.T) {
	tr := newTracker(t, Config{StartupGrace: -1, ReconnectAllowance: -1})
	id := pid(1)
	require.NoError(t, tr.StreamOpened(id, t0))
	beat(t, tr, id, hb("h", 1, ""), t0)
	n, _ := tr.Node(id)
	require.Equal(t, 30*time.Second, n.Period, "no interval yet: MaxPeriod")
	require.Empty(t, tr.Sweep(t0.Add(time.Minute), nil), "not Suspect before 2x MaxPeriod")

	at := t0.Add(time.Minute)
	for range 8 {
		beat(t, tr, id, hb("h", 1, ""), at)
		at = at.Add(3 * time.Second)
	}
	n, _ = tr.Node(id)
	require.Equal(t, 3*time.Second, n.Period)
	at = at.Add(7 * time.Second) // one late beat
	beat(t, tr, id, hb("h", 1, ""), at)
	n, _ = tr.Node(id)
	require.Equal(t, 3*time.Second, n.Period, "one late beat does not move the median")

	require.NoError(t, tr.StreamOpened(id, at.Add(time.Second))) // reconnect
	at = at.Add(time.Minute)
	beat(t, tr, id, hb("h", 1, ""), at)
	n, _ = tr.Node(id)
	require.Equal(t, 3*time.Second, n.Period, "the gap across a reconnect is no sample")

	for range 8 { // a burst read: zero intervals are no sample, tiny ones clamp
		at = at.Add(time.Millisecond)
		beat(t, tr, id, hb("h", 1, ""), at)
		beat(t, tr, id, hb("h", 1, ""), at)
	}
	n, _ = tr.Node(id)
	require.Equal(t, time.Second, n.Period, "clamped to MinPeriod")
}

// A node whose stream was lost gets ReconnectAllowance plus its period
// before Suspect; a clean EOF makes it Left; a beat ends the allowance.
func TestReconnectAllowance(t *testing.T) {
	setup := func(t *testing.T) (*Tracker, peer.ID, time.Time) {
		tr := newTracker(t, Config{StartupGrace: -1})
		id := pid(1)
		require.NoError(t, tr.StreamOpened(id, t0))
		var last time.Time
		for i := range 4 {
			last = t0.Add(time.Duration(i) * 3 * time.Second)
			beat(t, tr, id, hb("h", 1, ""), last)
		}
		return tr, id, last
	}
	t.Run("reset", func(t *testing.T) {
		tr, id, last := setup(t)
		end := last.Add(time.Second)
		_, changed := tr.StreamEnded(id, false, end)
		require.False(t, changed)
		allowance := 12*time.Second + 3*time.Second
		require.Empty(t, tr.Sweep(end.Add(allowance), nil), "within the allowance")
		ch := tr.Sweep(end.Add(allowance+1), nil)
		require.Len(t, ch, 1)
		require.Equal(t, Suspect, ch[0].To)
		// Down comes as much later as Suspect did: 9s after Suspect.
		require.Empty(t, tr.Sweep(end.Add(allowance+9*time.Second), nil))
		require.Equal(t, Down, tr.Sweep(end.Add(allowance+9*time.Second+1), nil)[0].To)
	})
	t.Run("reconnected within it", func(t *testing.T) {
		tr, id, last := setup(t)
		end := last.Add(time.Second)
		tr.StreamEnded(id, false, end)
		require.NoError(t, tr.StreamOpened(id, end.Add(11*time.Second)))
		back := end.Add(11 * time.Second)
		beat(t, tr, id, hb("h", 1, ""), back)
		require.Empty(t, tr.Sweep(end.Add(15*time.Second+1), nil), "beating again")
		// The allowance is spent: its own thresholds from the last beat.
		require.Empty(t, tr.Sweep(back.Add(6*time.Second), nil))
		require.Equal(t, Suspect, tr.Sweep(back.Add(6*time.Second+1), nil)[0].To)
	})
	t.Run("eof is no allowance", func(t *testing.T) {
		tr, id, last := setup(t)
		ch, ok := tr.StreamEnded(id, true, last.Add(time.Second))
		require.True(t, ok)
		require.Equal(t, Left, ch.To)
	})
	t.Run("configured off", func(t *testing.T) {
		tr := newTracker(t, Config{StartupGrace: -1, ReconnectAllowance: -1, MinPeriod: 3 * time.Second, MaxPeriod: 3 * time.Second})
		id := pid(1)
		require.NoError(t, tr.StreamOpened(id, t0))
		beat(t, tr, id, hb("h", 1, ""), t0)
		tr.StreamEnded(id, false, t0.Add(time.Second))
		require.Equal(t, Suspect, tr.Sweep(t0.Add(6*time.Second+1), nil)[0].To)
	})
}

// beatAll beats every id at at.
func beatAll(t *testing.T, tr *Tracker, ids []peer.ID, at time.Time) {
	t.Helper()
	for _, id := range ids {
		beat(t, tr, id, hb("h", 1, ""), at)
	}
}

func ids(from, to int) []peer.ID {
	var out []peer.ID
	for i := from; i < to; i++ {
		out = append(out, pid(i))
	}
	return out
}

// When most nodes fall silent together (the aggregator's own network cut),
// none goes Down: the tracker is disrupted until most beat again.
func TestDisruption(t *testing.T) {
	cfg := Config{StartupGrace: -1, ReconnectAllowance: -1, MinPeriod: 3 * time.Second, MaxPeriod: 3 * time.Second}
	all := ids(0, 10)

	t.Run("partition heals", func(t *testing.T) {
		tr := newTracker(t, cfg)
		beatAll(t, tr, all, t0)
		var changes []Change
		for s := 1; s <= 120; s++ {
			changes = tr.Sweep(t0.Add(time.Duration(s)*time.Second), changes)
		}
		on, since := tr.Disrupted()
		require.True(t, on)
		require.Equal(t, t0.Add(7*time.Second), since, "entered in the sweep that saw them fall silent")
		require.Len(t, changes, 10)
		for _, ch := range changes {
			require.Equal(t, Suspect, ch.To, "no node Down while disrupted")
		}
		sum := tr.Summary()
		require.True(t, sum.Disrupted)
		require.Equal(t, since, sum.DisruptedSince)

		heal := t0.Add(121 * time.Second)
		beatAll(t, tr, all[:5], heal) // half back: still disrupted
		require.Empty(t, tr.Sweep(heal, nil))
		on, _ = tr.Disrupted()
		require.True(t, on, "5 of 10 beating is not more than 55%")
		beatAll(t, tr, all[5:6], heal)
		exit := heal.Add(time.Second)
		require.Empty(t, tr.Sweep(exit, nil))
		on, _ = tr.Disrupted()
		require.False(t, on, "6 of 10 beating: left")
		// Those still silent get the reconnect allowance (here none) plus
		// their period from the exit, then go Down as usual: 3s + 9s.
		downs := func(chs []Change) (n int) {
			for _, c := range chs {
				if c.To == Down {
					n++
				}
			}
			return n
		}
		beatAll(t, tr, all[:6], exit.Add(10*time.Second))
		require.Zero(t, downs(tr.Sweep(exit.Add(12*time.Second), nil)))
		require.Equal(t, 4, downs(tr.Sweep(exit.Add(12*time.Second+1), nil)))
	})

	t.Run("max hold", func(t *testing.T) {
		c := cfg
		c.DisruptionMaxHold = time.Minute
		tr := newTracker(t, c)
		beatAll(t, tr, all, t0)
		var changes []Change
		for s := 1; s <= 67; s++ {
			changes = tr.Sweep(t0.Add(time.Duration(s)*time.Second), changes)
		}
		on, _ := tr.Disrupted()
		require.True(t, on, "7s + 60s: not yet past the hold")
		changes = tr.Sweep(t0.Add(68*time.Second), changes[:0])
		on, _ = tr.Disrupted()
		require.False(t, on)
		require.Len(t, changes, 10, "after the hold every silent node goes Down")
		for s := 69; s < 200; s++ {
			require.Empty(t, tr.Sweep(t0.Add(time.Duration(s)*time.Second), nil))
			on, _ = tr.Disrupted()
			require.False(t, on, "no new episode for the same silence")
		}
	})

	t.Run("a minority failing is not a disruption", func(t *testing.T) {
		tr := newTracker(t, cfg)
		beatAll(t, tr, all, t0)
		var changes []Change
		for s := 0; s <= 60; s += 3 {
			at := t0.Add(time.Duration(s) * time.Second)
			beatAll(t, tr, all[:5], at) // the other 5 die at once: 50%
			changes = tr.Sweep(at, changes)
			on, _ := tr.Disrupted()
			require.False(t, on)
		}
		var down int
		for _, ch := range changes {
			if ch.To == Down {
				down++
			}
		}
		require.Equal(t, 5, down)
	})

	t.Run("a fleet cut off one by one is one event", func(t *testing.T) {
		// 20 nodes fall silent one every 2s: by the time a majority is
		// silent, the first ones are Down, and they still count. Counting
		// only the Suspect ones, 11 would be Down first.
		tr := newTracker(t, cfg)
		fleet := ids(0, 20)
		beatAll(t, tr, fleet, t0)
		var changes []Change
		for s := 1; s <= 90; s++ {
			at := t0.Add(time.Duration(s) * time.Second)
			if k := s / 2; k < 20 {
				beatAll(t, tr, fleet[k:], at) // node k-1 beat last at 2k-1
			}
			changes = tr.Sweep(at, changes)
		}
		on, since := tr.Disrupted()
		require.True(t, on)
		var down int
		for _, ch := range changes {
			if ch.To == Down && ch.At.After(since) {
				t.Fatalf("Down while disrupted: %+v", ch)
			}
			if ch.To == Down {
				down++
			}
		}
		require.LessOrEqual(t, down, 7, "disrupted before most went Down (11 counting only Suspect nodes)")
	})

	t.Run("too few nodes", func(t *testing.T) {
		tr := newTracker(t, cfg)
		beatAll(t, tr, all[:2], t0)
		changes := tr.Sweep(t0.Add(time.Minute), nil)
		require.Len(t, changes, 2)
		require.Equal(t, Down, changes[0].To)
	})
}

// More than DuplicateThreshold supersedes within DuplicateWindow flag the
// node once per window; the flag clears after a window with none.
func TestDuplicateIdentity(t *testing.T) {
	tr := newTracker(t, Config{StartupGrace: -1})
	id := pid(1)
	require.NoError(t, tr.StreamOpened(id, t0))
	beat(t, tr, id, hb("h", 1, ""), t0)
	require.False(t, tr.Superseded(pid(99), t0), "unknown peer")
	var reports []int
	for i := range 12 { // two senders with one key: a supersede every 5s
		if tr.Superseded(id, t0.Add(time.Duration(i)*5*time.Second)) {
			reports = append(reports, i)
		}
	}
	require.Equal(t, []int{3}, reports, "the 4th supersede in the window crosses 3, once")
	n, _ := tr.Node(id)
	require.True(t, n.DuplicateIdentity)
	require.Equal(t, 1, tr.Summary().DuplicateIdentity)
	for i := 12; i < 17; i++ { // the next window (from 65s): reported again
		if tr.Superseded(id, t0.Add(time.Duration(i)*5*time.Second)) {
			reports = append(reports, i)
		}
	}
	require.Equal(t, []int{3, 16}, reports)
	last := t0.Add(80 * time.Second)
	beat(t, tr, id, hb("h", 1, ""), last)
	tr.Sweep(last.Add(time.Minute), nil)
	n, _ = tr.Node(id)
	require.True(t, n.DuplicateIdentity, "a window since the last supersede: not yet")
	tr.Sweep(last.Add(time.Minute+1), nil)
	n, _ = tr.Node(id)
	require.False(t, n.DuplicateIdentity, "cleared after a whole window without one")
}

// Issue case 6: a full tracker of Down nodes does not lock a newcomer out
// for ever; it gets the slot of the node Down the longest once that one has
// been Down longer than the retention.
func TestNoLockoutByDownNodes(t *testing.T) {
	tr := newTracker(t, Config{StartupGrace: -1, MaxNodes: 5, DownRetention: time.Hour})
	for i := range 5 {
		at := t0.Add(time.Duration(i) * time.Second)
		require.NoError(t, tr.StreamOpened(pid(i), at))
		beat(t, tr, pid(i), hb("h", 1, ""), at)
		tr.StreamEnded(pid(i), false, at.Add(time.Second))
	}
	newcomer := pid(100)
	require.ErrorIs(t, tr.StreamOpened(newcomer, t0.Add(17*time.Second)), ErrFull)
	// All five fall silent together: a disruption, so they go Down only
	// after its maximum hold (10 minutes).
	for s := 1; s <= 20*60; s++ {
		tr.Sweep(t0.Add(time.Duration(s)*time.Second), nil)
	}
	require.Equal(t, 5, tr.Summary().ByState[Down])
	require.ErrorIs(t, tr.StreamOpened(newcomer, t0.Add(20*time.Minute)), ErrFull)
	n0, _ := tr.Node(pid(0))
	retained := n0.Since.Add(time.Hour)
	require.ErrorIs(t, tr.StreamOpened(newcomer, retained), ErrFull, "Down exactly the retention: kept")
	require.NoError(t, tr.StreamOpened(newcomer, retained.Add(time.Nanosecond)))
	_, ok := tr.Node(pid(0))
	require.False(t, ok, "the node Down the longest was evicted")
	for i := 1; i < 5; i++ {
		_, ok := tr.Node(pid(i))
		require.True(t, ok)
	}
	// A Left node goes before any Down one.
	ch, ok := tr.StreamEnded(pid(4), true, retained.Add(time.Second)) // Down -> Left
	require.True(t, ok)
	require.Equal(t, Left, ch.To)
	require.NoError(t, tr.StreamOpened(pid(101), retained.Add(2*time.Second)))
	_, ok = tr.Node(pid(4))
	require.False(t, ok)
	_, ok = tr.Node(pid(1))
	require.True(t, ok)
}

// Whatever the operations, after a Sweep no node is left past a deadline
// the sweep should have acted on: the deadline bound (the scan skipped
// while no deadline passed) never hides a transition, with learned
// periods, allowances, disruption, duplicate flags and recent Downs.
func TestSweepLeavesNoDeadlinePassed(t *testing.T) {
	seen := map[string]int{}
	defer func() {
		// The operations reach every rule being checked.
		for _, k := range []string{"suspect", "down", "disrupted", "dup", "recent"} {
			require.Positive(t, seen[k], "no %s in any run: %v", k, seen)
		}
	}()
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 7))
		tr := newTracker(t, Config{StartupGrace: -1, DisruptionMaxHold: time.Minute})
		periods := []time.Duration{time.Second, 3 * time.Second, 10 * time.Second}
		now := t0
		for step := range 3000 {
			now = now.Add(time.Duration(rng.IntN(700)) * time.Millisecond)
			id := pid(rng.IntN(60))
			switch op := rng.IntN(20); {
			case op < 12:
				// Nodes mostly beat near their own period, sometimes late.
				if rng.IntN(int(periods[int(id[len(id)-1])%3]/time.Millisecond)) < 700 {
					beat(t, tr, id, hb("h", uint64(step), ""), now)
				}
			case op < 14:
				_ = tr.StreamOpened(id, now)
			case op < 16:
				tr.StreamEnded(id, rng.IntN(2) == 0, now)
			case op < 17:
				tr.Superseded(id, now)
			case op < 18 && rng.IntN(10) == 0:
				tr.Forget(id)
			default:
				for _, ch := range tr.Sweep(now, nil) {
					seen[ch.To.String()]++
				}
				at := tr.rel(now)
				disrupted, _ := tr.Disrupted()
				if disrupted {
					seen["disrupted"]++
				}
				tr.mu.Lock()
				for _, n := range tr.nodes {
					if n.dup {
						seen["dup"]++
					}
					if n.recent {
						seen["recent"]++
					}
					switch {
					case n.state == Up && at > n.suspectAt(1):
						t.Fatalf("seed %d step %d: Up node past its Suspect deadline after a sweep", seed, step)
					case (n.state == Up || n.state == Suspect) && at > n.downAt(1) && !disrupted:
						t.Fatalf("seed %d step %d: %v node past its Down deadline after a sweep, not disrupted", seed, step, n.state)
					case n.dup && at > n.dupUntil:
						t.Fatalf("seed %d step %d: duplicate flag past its window", seed, step)
					case n.recent && n.state != Down:
						t.Fatalf("seed %d step %d: recent set on a %v node", seed, step, n.state)
					}
				}
				var recent int64
				for _, n := range tr.nodes {
					if n.recent {
						recent++
					}
				}
				require.Equal(t, recent, tr.recent, "seed %d step %d", seed, step)
				inState := tr.inState
				tr.mu.Unlock()
				sum := tr.Summary()
				for _, st := range States() {
					require.Equal(t, int64(sum.ByState[st]), inState[st], "seed %d step %d: %v count", seed, step, st)
				}
			}
		}
	}
}
