package tracker

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/wire"
)

func TestConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want Config
		err  string
	}{
		{name: "defaults", cfg: Config{},
			want: withRest(Config{ExpectedPeriod: 3 * time.Second, SuspectAfter: 6 * time.Second, DownAfter: 15 * time.Second, StartupGrace: 15 * time.Second, MaxNodes: 10000,
				MinPeriod: time.Second, MaxPeriod: 30 * time.Second})},
		{name: "scaled by period", cfg: Config{ExpectedPeriod: 10 * time.Second},
			want: withRest(Config{ExpectedPeriod: 10 * time.Second, SuspectAfter: 20 * time.Second, DownAfter: 50 * time.Second, StartupGrace: 50 * time.Second, MaxNodes: 10000,
				MinPeriod: 10 * time.Second / 3, MaxPeriod: 100 * time.Second})},
		{name: "negative grace and allowance are none", cfg: Config{StartupGrace: -1, MaxNodes: 5, ReconnectAllowance: -1},
			want: withRest(Config{ExpectedPeriod: 3 * time.Second, SuspectAfter: 6 * time.Second, DownAfter: 15 * time.Second, StartupGrace: 0, MaxNodes: 5,
				MinPeriod: time.Second, MaxPeriod: 30 * time.Second, ReconnectAllowance: -1})},
		{name: "min above max", cfg: Config{MinPeriod: 4 * time.Second, MaxPeriod: 3 * time.Second},
			err: "tracker: Config.MinPeriod (4s) must not exceed MaxPeriod (3s)"},
		{name: "fraction above one", cfg: Config{DisruptionFraction: 1.5},
			err: "tracker: Config.DisruptionFraction (1.5) must be in (0, 1]"},
		{name: "negative fraction", cfg: Config{DisruptionFraction: -0.1},
			err: "tracker: Config.DisruptionFraction (-0.1) must be in (0, 1]"},
		{name: "negative hold", cfg: Config{DisruptionMaxHold: -time.Second},
			err: "tracker: Config.DisruptionMaxHold (-1s) must not be negative"},
		{name: "negative retention", cfg: Config{DownRetention: -time.Second},
			err: "tracker: Config.DownRetention (-1s) must not be negative"},
		{name: "negative duplicate threshold", cfg: Config{DuplicateThreshold: -1},
			err: "tracker: Config.DuplicateThreshold (-1) must be between 0 and 65534"},
		{name: "down not after suspect", cfg: Config{DownAfter: time.Second},
			err: "tracker: Config.DownAfter (1s) must be greater than SuspectAfter (6s)"},
		{name: "down equal suspect", cfg: Config{SuspectAfter: 7 * time.Second, DownAfter: 7 * time.Second},
			err: "tracker: Config.DownAfter (7s) must be greater than SuspectAfter (7s)"},
		{name: "suspect below period", cfg: Config{SuspectAfter: time.Second},
			err: "tracker: Config.SuspectAfter (1s) must be at least ExpectedPeriod (3s)"},
		{name: "negative period", cfg: Config{ExpectedPeriod: -time.Second},
			err: "tracker: Config.ExpectedPeriod (-1s) must not be negative"},
		{name: "negative suspect", cfg: Config{SuspectAfter: -time.Second},
			err: "tracker: Config.SuspectAfter (-1s) must not be negative"},
		{name: "negative down", cfg: Config{DownAfter: -time.Second},
			err: "tracker: Config.DownAfter (-1s) must not be negative"},
		{name: "negative max nodes", cfg: Config{MaxNodes: -1},
			err: "tracker: Config.MaxNodes (-1) must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, err := New(tt.cfg, t0)
			if tt.err != "" {
				require.EqualError(t, err, tt.err)
				require.Nil(t, tr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, tr.Config())
		})
	}
}

// withRest fills the defaults TestConfig's rows do not spell out.
func withRest(c Config) Config {
	if c.ReconnectAllowance == 0 {
		c.ReconnectAllowance = DefaultReconnectAllowance
	} else if c.ReconnectAllowance < 0 {
		c.ReconnectAllowance = 0
	}
	c.DisruptionFraction = DefaultDisruptionFraction
	c.DisruptionMinNodes = DefaultDisruptionMinNodes
	c.DisruptionMaxHold = DefaultDisruptionMaxHold
	c.DuplicateWindow = DefaultDuplicateWindow
	c.DuplicateThreshold = DefaultDuplicateThreshold
	c.DownRetention = DefaultDownRetention
	return c
}

func TestStateStrings(t *testing.T) {
	var names []string
	for _, s := range States() {
		names = append(names, s.String())
	}
	require.Equal(t, []string{"joining", "up", "suspect", "down", "left", "unknown"}, names)
	require.Equal(t, "State(9)", State(9).String())
	require.Equal(t, State(1), Up, "API.md: Up = iota + 1")
	require.Equal(t, State(4), Left)
	require.Equal(t, "none open closed reset StreamState(7)",
		fmt.Sprint(StreamNone, StreamOpen, StreamClosed, StreamReset, StreamState(7)))
}

// One sweep, fresh tracker, at exactly the thresholds and 1ns past them.
func TestThresholds(t *testing.T) {
	const (
		suspect = 6 * time.Second
		down    = 15 * time.Second
	)
	tests := []struct {
		silence time.Duration
		want    State
	}{
		{0, Up},
		{suspect - 1, Up},
		{suspect, Up},
		{suspect + 1, Suspect},
		{down, Suspect},
		{down + 1, Down},
		{time.Hour, Down},
	}
	for _, tt := range tests {
		t.Run(tt.silence.String(), func(t *testing.T) {
			tr := newTracker(t, noGrace)
			last := t0.Add(time.Minute)
			beat(t, tr, pid(1), hb("h", 1, "n"), last)
			changes := tr.Sweep(last.Add(tt.silence), nil)
			require.Equal(t, tt.want, state(t, tr, pid(1)))
			if tt.want == Up {
				require.Empty(t, changes)
				return
			}
			require.Equal(t, []Change{{Peer: pid(1), Nickname: "n", From: Up, To: tt.want, At: last.Add(tt.silence)}}, changes)
		})
	}
}

// Sweeping at every interesting instant walks Up -> Suspect -> Down once.
func TestThresholdSequence(t *testing.T) {
	tr := newTracker(t, noGrace)
	last := t0.Add(time.Minute)
	beat(t, tr, pid(1), hb("h", 1, "n"), last)
	var got []Change
	for _, d := range []time.Duration{0, 6 * time.Second, 6*time.Second + 1, 7 * time.Second, 15 * time.Second, 15*time.Second + 1, time.Hour} {
		got = tr.Sweep(last.Add(d), got)
	}
	require.Equal(t, []Change{
		{Peer: pid(1), Nickname: "n", From: Up, To: Suspect, At: last.Add(6*time.Second + 1)},
		{Peer: pid(1), Nickname: "n", From: Suspect, To: Down, At: last.Add(15*time.Second + 1)},
	}, got)
	n, _ := tr.Node(pid(1))
	require.Equal(t, last.Add(15*time.Second+1), n.Since)
	require.Equal(t, last, n.LastSeen)
}

func TestStartupGrace(t *testing.T) {
	tests := []struct {
		name  string
		grace time.Duration // 0: the default (DownAfter = 15s)
		at    time.Duration // sweep time after start; the node beat at start
		want  State
	}{
		{"default grace, just before", 0, 15*time.Second - 1, Up},
		{"default grace, at the end", 0, 15 * time.Second, Suspect}, // silence 15s: not > DownAfter
		{"default grace, after", 0, 15*time.Second + 1, Down},
		{"long grace, just before", 30 * time.Second, 30*time.Second - 1, Up},
		{"long grace, at the end", 30 * time.Second, 30 * time.Second, Down},
		{"short grace, threshold rules", time.Second, 6 * time.Second, Up},
		{"short grace, past suspect", time.Second, 6*time.Second + 1, Suspect},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTracker(t, fixed(Config{StartupGrace: tt.grace}))
			beat(t, tr, pid(1), hb("h", 1, ""), t0)
			tr.Sweep(t0.Add(tt.at), nil)
			require.Equal(t, tt.want, state(t, tr, pid(1)))
		})
	}
}

func TestBeatRecovers(t *testing.T) {
	for _, from := range []State{Suspect, Down, Left} {
		t.Run(from.String(), func(t *testing.T) {
			tr := newTracker(t, noGrace)
			id := pid(1)
			require.NoError(t, tr.StreamOpened(id, t0))
			ch, ok := beat(t, tr, id, hb("h", 1, "n"), t0)
			require.True(t, ok)
			require.Equal(t, Change{Peer: id, Nickname: "n", From: Joining, To: Up, At: t0}, ch)
			switch from {
			case Suspect:
				tr.Sweep(t0.Add(10*time.Second), nil)
			case Down:
				tr.Sweep(t0.Add(time.Minute), nil)
			case Left:
				_, ok := tr.StreamEnded(id, true, t0.Add(time.Second))
				require.True(t, ok)
			}
			require.Equal(t, from, state(t, tr, id))
			back := t0.Add(2 * time.Minute)
			ch, ok = beat(t, tr, id, hb("h2", 2, "n"), back)
			require.True(t, ok)
			require.Equal(t, Change{Peer: id, Nickname: "n", From: from, To: Up, At: back}, ch)
			_, ok = beat(t, tr, id, hb("h2", 2, "n"), back.Add(time.Second))
			require.False(t, ok, "Up -> Up is no change")
			// The recovered node is swept again from its new last seen.
			require.Empty(t, tr.Sweep(back.Add(time.Second+6*time.Second), nil))
			require.Len(t, tr.Sweep(back.Add(time.Second+6*time.Second+1), nil), 1)
		})
	}
}

func TestStreams(t *testing.T) {
	id := pid(1)

	t.Run("graceful EOF leaves", func(t *testing.T) {
		tr := newTracker(t, noGrace)
		require.NoError(t, tr.StreamOpened(id, t0))
		beat(t, tr, id, hb("h", 1, "n"), t0)
		ch, ok := tr.StreamEnded(id, true, t0.Add(time.Second))
		require.True(t, ok)
		require.Equal(t, Change{Peer: id, Nickname: "n", From: Up, To: Left, At: t0.Add(time.Second)}, ch)
		n, _ := tr.Node(id)
		require.Equal(t, StreamClosed, n.Stream)
		require.Empty(t, tr.Sweep(t0.Add(time.Hour), nil), "Left is not swept to Down")
		require.Equal(t, Left, state(t, tr, id))
	})

	t.Run("reset keeps the state", func(t *testing.T) {
		tr := newTracker(t, noGrace)
		require.NoError(t, tr.StreamOpened(id, t0))
		beat(t, tr, id, hb("h", 1, "n"), t0)
		_, ok := tr.StreamEnded(id, false, t0.Add(time.Second))
		require.False(t, ok)
		n, _ := tr.Node(id)
		require.Equal(t, Up, n.State)
		require.Equal(t, StreamReset, n.Stream)
		require.Equal(t, 0, tr.Summary().Connected)
	})

	t.Run("superseded stream", func(t *testing.T) {
		tr := newTracker(t, noGrace)
		require.NoError(t, tr.StreamOpened(id, t0))
		beat(t, tr, id, hb("h", 1, "n"), t0)
		require.NoError(t, tr.StreamOpened(id, t0.Add(time.Second)))
		// The old stream ends, even gracefully: the node has not left.
		_, ok := tr.StreamEnded(id, true, t0.Add(time.Second))
		require.False(t, ok)
		n, _ := tr.Node(id)
		require.Equal(t, Up, n.State)
		require.Equal(t, StreamOpen, n.Stream)
		require.Equal(t, uint64(2), n.Streams)
		require.Equal(t, 1, tr.Summary().Connected)
		ch, ok := tr.StreamEnded(id, true, t0.Add(2*time.Second))
		require.True(t, ok)
		require.Equal(t, Left, ch.To)
	})

	t.Run("no heartbeat, forgotten", func(t *testing.T) {
		tr := newTracker(t, noGrace)
		require.NoError(t, tr.StreamOpened(id, t0))
		n, ok := tr.Node(id)
		require.True(t, ok)
		require.Equal(t, Joining, n.State)
		require.True(t, n.LastSeen.IsZero())
		require.Equal(t, 1, tr.Summary().ByState[Joining])
		require.Empty(t, tr.Sweep(t0.Add(time.Hour), nil), "Joining is not swept")
		_, changed := tr.StreamEnded(id, false, t0.Add(time.Second))
		require.False(t, changed)
		_, ok = tr.Node(id)
		require.False(t, ok)
		require.Equal(t, 0, tr.Len())
	})

	t.Run("unknown and unbalanced ends are ignored", func(t *testing.T) {
		tr := newTracker(t, noGrace)
		_, ok := tr.StreamEnded(id, true, t0)
		require.False(t, ok)
		beat(t, tr, id, hb("h", 1, "n"), t0) // no StreamOpened (the simulation may do this)
		n, _ := tr.Node(id)
		require.Equal(t, StreamNone, n.Stream)
		ch, ok := tr.StreamEnded(id, true, t0.Add(time.Second))
		require.True(t, ok)
		require.Equal(t, Left, ch.To)
		_, ok = tr.StreamEnded(id, true, t0.Add(time.Second))
		require.False(t, ok, "already Left")
	})
}

// A node that claims another's nickname and miner address only relabels
// its own record.
func TestIdentityIsThePeerID(t *testing.T) {
	tr := newTracker(t, noGrace)
	alice, mallory := pid(1), pid(2)
	beat(t, tr, alice, &wire.Heartbeat{Head: "good", Height: 10, Nickname: "alice", MinerAddress: "t01000"}, t0)
	beat(t, tr, mallory, &wire.Heartbeat{Head: "evil", Height: 99, Nickname: "alice", MinerAddress: "t01000"}, t0.Add(time.Second))
	// Mallory keeps beating; Alice goes silent and must go Down regardless.
	for i := 2; i < 30; i++ {
		beat(t, tr, mallory, &wire.Heartbeat{Head: "evil", Height: 99, Nickname: "alice", MinerAddress: "t01000"}, t0.Add(time.Duration(i)*time.Second))
	}
	tr.Sweep(t0.Add(29*time.Second), nil)

	a, ok := tr.Node(alice)
	require.True(t, ok)
	require.Equal(t, Node{
		Peer: alice, Nickname: "alice", Head: "good", Height: 10, MinerAddress: "t01000",
		FirstSeen: t0, LastSeen: t0, Since: t0.Add(29 * time.Second), Beats: 1, State: Down, Period: 3 * time.Second, Protocol: 1,
	}, a)
	m, _ := tr.Node(mallory)
	require.Equal(t, uint64(29), m.Beats)
	require.Equal(t, "evil", m.Head)
	require.Equal(t, Up, m.State)
	require.Equal(t, 2, tr.Len())
}

func TestNodeFields(t *testing.T) {
	tr := newTracker(t, noGrace)
	id := pid(7)
	gen := mkCID(t, "genesis")
	require.NoError(t, tr.StreamOpened(id, t0))
	beat(t, tr, id, &wire.Heartbeat{Head: "{ a b }", Height: 444, Nickname: "Bob", MinerAddress: "t01234", GenesisCID: &gen}, t0.Add(time.Second))
	// Time presented out of order (two streams racing) never moves LastSeen back.
	beat(t, tr, id, &wire.Heartbeat{Head: "{ a b }", Height: 444, Nickname: "Bob", MinerAddress: "t01234", GenesisCID: &gen}, t0.Add(500*time.Millisecond))
	n, ok := tr.Node(id)
	require.True(t, ok)
	require.Equal(t, Node{
		Peer: id, Nickname: "Bob", Head: "{ a b }", Height: 444, MinerAddress: "t01234",
		Genesis: gen.String(), FirstSeen: t0, LastSeen: t0.Add(time.Second), Since: t0.Add(time.Second),
		Beats: 2, Streams: 1, State: Up, Stream: StreamOpen, Period: 3 * time.Second, Protocol: 1,
	}, n)

	// Every label follows the latest heartbeat, genesis included.
	beat(t, tr, id, &wire.Heartbeat{Head: "{ c }", Height: 445, Nickname: "Robert"}, t0.Add(2*time.Second))
	n, _ = tr.Node(id)
	require.Equal(t, "{ c }", n.Head)
	require.Equal(t, uint64(445), n.Height)
	require.Equal(t, "Robert", n.Nickname)
	require.Equal(t, "", n.MinerAddress)
	require.Equal(t, "", n.Genesis)

	_, ok = tr.Node(pid(8))
	require.False(t, ok)
}

// The genesis label is the text as received, parseable or not; a heartbeat
// built by hand with GenesisCID only gets the CID's text.
func TestGenesis(t *testing.T) {
	tr := newTracker(t, noGrace)
	id := pid(1)
	var h wire.Heartbeat
	require.NoError(t, wire.DecodeLine([]byte(`{"Head":"{ bafy2bzaceabc }","Height":12,"Nickname":"n1","MinerAddress":"","GenesisCID":{"/":"bafy2bzacegenesis"}}`), &h))
	require.Nil(t, h.GenesisCID, "wire-v1.md's example genesis does not parse")
	beat(t, tr, id, &h, t0)
	n, _ := tr.Node(id)
	require.Equal(t, "bafy2bzacegenesis", n.Genesis)

	gen := mkCID(t, "genesis")
	beat(t, tr, id, &wire.Heartbeat{GenesisCID: &gen}, t0)
	n, _ = tr.Node(id)
	require.Equal(t, gen.String(), n.Genesis)

	require.NoError(t, wire.DecodeLine([]byte(`{"Head":"x","GenesisCID":{"/":"`+gen.String()+`"}}`), &h))
	beat(t, tr, id, &h, t0)
	n, _ = tr.Node(id)
	require.Equal(t, gen.String(), n.Genesis)

	beat(t, tr, id, &wire.Heartbeat{}, t0)
	n, _ = tr.Node(id)
	require.Equal(t, "", n.Genesis)
}

func TestBadArguments(t *testing.T) {
	tr := newTracker(t, noGrace)
	_, _, err := tr.Beat("", hb("h", 1, ""), t0)
	require.EqualError(t, err, "tracker: empty peer id")
	_, _, err = tr.Beat(pid(1), nil, t0)
	require.EqualError(t, err, "tracker: nil heartbeat")
	require.EqualError(t, tr.StreamOpened("", t0), "tracker: empty peer id")
	require.Equal(t, 0, tr.Len())
}

func TestMaxNodes(t *testing.T) {
	a, b, c, d := pid(1), pid(2), pid(3), pid(4)

	t.Run("refuses new peers, never known ones", func(t *testing.T) {
		tr := newTracker(t, fixed(Config{MaxNodes: 2, StartupGrace: -1}))
		beat(t, tr, a, hb("h", 1, ""), t0)
		require.NoError(t, tr.StreamOpened(b, t0)) // a Joining node takes a slot
		_, _, err := tr.Beat(c, hb("h", 1, ""), t0)
		require.ErrorIs(t, err, ErrFull)
		require.ErrorIs(t, tr.StreamOpened(c, t0), ErrFull)
		_, ok := tr.Node(c)
		require.False(t, ok)
		beat(t, tr, a, hb("h", 2, ""), t0.Add(time.Second))
		beat(t, tr, b, hb("h", 2, ""), t0.Add(time.Second))
		require.NoError(t, tr.StreamOpened(a, t0.Add(time.Second)))
		require.Equal(t, 2, tr.Len())
	})

	t.Run("Down nodes are kept, Forget frees", func(t *testing.T) {
		tr := newTracker(t, fixed(Config{MaxNodes: 2, StartupGrace: -1}))
		beat(t, tr, a, hb("h", 1, ""), t0)
		beat(t, tr, b, hb("h", 1, ""), t0)
		tr.Sweep(t0.Add(time.Hour), nil)
		require.Equal(t, 2, tr.Summary().ByState[Down])
		_, _, err := tr.Beat(c, hb("h", 1, ""), t0.Add(time.Hour))
		require.ErrorIs(t, err, ErrFull)
		require.True(t, tr.Forget(a))
		require.False(t, tr.Forget(a))
		beat(t, tr, c, hb("h", 1, ""), t0.Add(time.Hour))
		require.Equal(t, 2, tr.Len())
	})

	t.Run("the oldest Left node is evicted", func(t *testing.T) {
		tr := newTracker(t, fixed(Config{MaxNodes: 3, StartupGrace: -1}))
		for _, id := range []peer.ID{a, b, c} {
			require.NoError(t, tr.StreamOpened(id, t0))
			beat(t, tr, id, hb("h", 1, ""), t0)
		}
		tr.StreamEnded(b, true, t0.Add(2*time.Second))
		tr.StreamEnded(a, true, t0.Add(3*time.Second))
		beat(t, tr, d, hb("h", 1, ""), t0.Add(4*time.Second))
		_, ok := tr.Node(b)
		require.False(t, ok, "b left first")
		_, ok = tr.Node(a)
		require.True(t, ok)
		require.Equal(t, 3, tr.Len())
		// a left; c is Up: a goes next, then nothing is evictable.
		require.NoError(t, tr.StreamOpened(b, t0.Add(5*time.Second)))
		_, ok = tr.Node(a)
		require.False(t, ok)
		require.ErrorIs(t, tr.StreamOpened(pid(5), t0.Add(5*time.Second)), ErrFull)
		require.Equal(t, 3, tr.Len())
	})

	t.Run("eviction ties break on the smallest peer id", func(t *testing.T) {
		tr := newTracker(t, fixed(Config{MaxNodes: 3, StartupGrace: -1}))
		ids := []peer.ID{pid(10), pid(11), pid(12)}
		for _, id := range ids {
			beat(t, tr, id, hb("h", 1, ""), t0)
			tr.StreamEnded(id, true, t0.Add(time.Second))
		}
		smallest := min(ids[0], ids[1], ids[2])
		beat(t, tr, d, hb("h", 1, ""), t0.Add(2*time.Second))
		_, ok := tr.Node(smallest)
		require.False(t, ok)
		require.Equal(t, 3, tr.Len())
	})

	t.Run("a Left node with an open stream is not evicted", func(t *testing.T) {
		tr := newTracker(t, fixed(Config{MaxNodes: 1, StartupGrace: -1}))
		beat(t, tr, a, hb("h", 1, ""), t0)
		tr.StreamEnded(a, true, t0)
		require.NoError(t, tr.StreamOpened(a, t0.Add(time.Second))) // reconnected, first line pending
		require.ErrorIs(t, tr.StreamOpened(b, t0.Add(time.Second)), ErrFull)
		require.Equal(t, Left, state(t, tr, a))
	})
}

func TestConsensus(t *testing.T) {
	type nodeSpec struct {
		head   string
		height uint64
		state  State // Up unless set
	}
	tests := []struct {
		name  string
		nodes []nodeSpec
		head  string
		ht    uint64
		in    int
		disp  int
	}{
		{name: "empty"},
		{name: "one node", nodes: []nodeSpec{{"a", 1, Up}}, head: "a", ht: 1, in: 1},
		{name: "all agree", nodes: []nodeSpec{{"a", 1, Up}, {"a", 1, Up}, {"a", 1, Up}}, head: "a", ht: 1, in: 3},
		{name: "majority", nodes: []nodeSpec{{"a", 1, Up}, {"b", 2, Up}, {"b", 2, Up}, {"c", 9, Up}}, head: "b", ht: 2, in: 2, disp: 2},
		{name: "tie: greatest height", nodes: []nodeSpec{{"z", 5, Up}, {"a", 4, Up}}, head: "z", ht: 5, in: 1, disp: 1},
		{name: "tie: same height, smallest head", nodes: []nodeSpec{{"b", 5, Up}, {"a", 5, Up}, {"c", 5, Up}}, head: "a", ht: 5, in: 1, disp: 2},
		{name: "tie of pairs", nodes: []nodeSpec{{"x", 3, Up}, {"x", 3, Up}, {"y", 3, Up}, {"y", 3, Up}, {"w", 1, Up}}, head: "x", ht: 3, in: 2, disp: 3},
		{name: "same head, other height disagrees", nodes: []nodeSpec{{"a", 1, Up}, {"a", 1, Up}, {"a", 2, Up}}, head: "a", ht: 1, in: 2, disp: 1},
		{name: "all down", nodes: []nodeSpec{{"a", 1, Down}, {"a", 1, Down}}},
		{name: "only Up nodes count", nodes: []nodeSpec{{"a", 1, Up}, {"b", 2, Suspect}, {"b", 2, Down}, {"b", 2, Left}, {"b", 2, Joining}}, head: "a", ht: 1, in: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTracker(t, noGrace)
			var want Summary
			for i, ns := range tt.nodes {
				id := pid(i)
				want.Nodes++
				want.ByState[ns.state]++
				if ns.state == Joining {
					require.NoError(t, tr.StreamOpened(id, t0))
					want.Connected++
					continue
				}
				want.Beats++
				at := t0
				if ns.state == Suspect {
					at = t0.Add(50 * time.Second)
				} else if ns.state != Down {
					at = t0.Add(59 * time.Second)
				}
				beat(t, tr, id, hb(ns.head, ns.height, ""), at)
				if ns.state == Left {
					tr.StreamEnded(id, true, at)
				}
			}
			tr.Sweep(t0.Add(time.Minute), nil)
			want.ConsensusHead, want.ConsensusHeight, want.InConsensus, want.InDispute = tt.head, tt.ht, tt.in, tt.disp
			require.Equal(t, want, tr.Summary())
			require.Equal(t, want, tr.Summary(), "Summary reuses its map: a second call agrees")
		})
	}
}

// The deadline bound (Sweep skipping its scan) must never hide a
// transition: compare with a brute-force model under random operations.
func TestSweepMatchesModel(t *testing.T) {
	for seed := range uint64(10) {
		rng := rand.New(rand.NewPCG(seed, 1))
		tr := newTracker(t, fixed(Config{ExpectedPeriod: time.Second, StartupGrace: 5 * time.Second}))
		type rec struct {
			last  time.Time
			state State
		}
		model := map[peer.ID]*rec{}
		var nodes []Node
		now := t0
		for step := range 2000 {
			now = now.Add(time.Duration(rng.IntN(400)) * time.Millisecond)
			id := pid(rng.IntN(150))
			switch op := rng.IntN(10); {
			case op < 8:
				beat(t, tr, id, hb("h", uint64(step), ""), now)
				r := model[id]
				if r == nil {
					r = &rec{}
					model[id] = r
				}
				r.last, r.state = now, Up
			case op == 8:
				if _, ok := tr.StreamEnded(id, true, now); ok {
					model[id].state = Left
				}
			default:
				changes := tr.Sweep(now, nil)
				for i := 1; i < len(changes); i++ {
					if changes[i-1].Peer >= changes[i].Peer {
						t.Fatalf("seed %d step %d: changes not sorted by peer id", seed, step)
					}
				}
				if now.Sub(t0) < 5*time.Second {
					require.Empty(t, changes)
					continue
				}
				for _, r := range model {
					silence := now.Sub(r.last)
					switch {
					case (r.state == Up || r.state == Suspect) && silence > 5*time.Second:
						r.state = Down
					case r.state == Up && silence > 2*time.Second:
						r.state = Suspect
					}
				}
				nodes = tr.Nodes(nodes[:0])
				require.Len(t, nodes, len(model))
				for _, n := range nodes {
					if want := model[n.Peer].state; n.State != want {
						t.Fatalf("seed %d step %d: node %s is %v, want %v", seed, step, n.Peer, n.State, want)
					}
				}
			}
		}
	}
}

func TestNodesSortedAndAppended(t *testing.T) {
	tr := newTracker(t, noGrace)
	for i := range 500 {
		beat(t, tr, pid(i), hb("h", 1, fmt.Sprint(i)), t0)
	}
	prefix := []Node{{Nickname: "keep"}}
	nodes := tr.Nodes(prefix)
	require.Len(t, nodes, 501)
	require.Equal(t, "keep", nodes[0].Nickname)
	for i := 2; i < len(nodes); i++ {
		require.Less(t, nodes[i-1].Peer, nodes[i].Peer)
	}
}

func TestBeatDoesNotAllocate(t *testing.T) {
	tr := newTracker(t, noGrace)
	gen := mkCID(t, "g")
	id := pid(1)
	h := &wire.Heartbeat{Head: "{ bafy2bzaceabc bafy2bzacedef }", Height: 444, Nickname: "BobHoblaw", MinerAddress: "t01234", GenesisCID: &gen}
	beat(t, tr, id, h, t0)
	// Fresh strings with equal contents, as a decoder would produce.
	h2 := *h
	h2.Head = string([]byte(h.Head))
	h2.Nickname = string([]byte(h.Nickname))
	g2 := gen
	h2.GenesisCID = &g2
	now := t0
	allocs := testing.AllocsPerRun(1000, func() {
		now = now.Add(time.Second)
		if _, _, err := tr.Beat(id, &h2, now); err != nil {
			panic(err)
		}
	})
	require.Zero(t, allocs)
}

// The aggregator's hot path: one Heartbeat per stream, decoded into again
// and again, then Beat. Neither allocates for a steady sender.
func TestDecodeAndBeatDoNotAllocate(t *testing.T) {
	tr := newTracker(t, noGrace)
	gen := mkCID(t, "g")
	line := []byte(`{"Head":"{ bafy2bzaceabc bafy2bzacedef }","Height":444,"Nickname":"BobHoblaw","MinerAddress":"t01234","GenesisCID":{"/":"` + gen.String() + `"}}`)
	var h wire.Heartbeat
	id := pid(1)
	now := t0
	step := func() {
		now = now.Add(time.Second)
		if err := wire.DecodeLine(line, &h); err != nil {
			panic(err)
		}
		if _, _, err := tr.Beat(id, &h, now); err != nil {
			panic(err)
		}
	}
	step()
	require.Zero(t, testing.AllocsPerRun(1000, step))
	n, _ := tr.Node(pid(1))
	require.Equal(t, gen.String(), n.Genesis)
}

// Everything at once under -race: the counts must add up afterwards.
func TestConcurrent(t *testing.T) {
	const (
		workers = 8
		perW    = 2000
		peers   = 64
	)
	tr := newTracker(t, fixed(Config{MaxNodes: peers, StartupGrace: -1}))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			var changes []Change
			var nodes []Node
			for i := range perW {
				now := t0.Add(time.Duration(i) * time.Millisecond)
				id := pid(rng.IntN(peers))
				switch rng.IntN(20) {
				case 0:
					if tr.StreamOpened(id, now) == nil {
						tr.StreamEnded(id, rng.IntN(2) == 0, now)
					}
				case 1:
					changes = tr.Sweep(now.Add(time.Minute), changes[:0])
				case 2:
					sum := tr.Summary()
					if sum.Nodes > peers || sum.InConsensus+sum.InDispute != sum.ByState[Up] {
						panic(fmt.Sprintf("bad summary %+v", sum))
					}
				case 3:
					nodes = tr.Nodes(nodes[:0])
				default:
					// Distinct workers claim the same nicknames: labels only.
					if _, _, err := tr.Beat(id, hb(fmt.Sprint("h", i%3), uint64(i%3), "same"), now); err != nil {
						panic(err)
					}
				}
			}
		})
	}
	wg.Wait()
	sum := tr.Summary()
	var beats uint64
	for _, n := range tr.Nodes(nil) {
		beats += n.Beats
	}
	require.Equal(t, sum.Beats, beats, "no node was forgotten, so the totals agree")
	require.Equal(t, tr.Len(), sum.Nodes)
	require.LessOrEqual(t, sum.Nodes, peers)
}

// Concurrent admissions at the limit never overshoot MaxNodes, and evictions
// keep the count exact.
func TestConcurrentAdmission(t *testing.T) {
	const max = 50
	tr := newTracker(t, fixed(Config{MaxNodes: max, StartupGrace: -1}))
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 500 {
				id := pid(w*1000 + i)
				if _, _, err := tr.Beat(id, hb("h", 1, ""), t0); err != nil {
					if err != ErrFull {
						panic(err)
					}
					continue
				}
				if i%2 == 0 {
					tr.StreamEnded(id, true, t0.Add(time.Duration(i)))
				}
				if tr.Len() > max {
					panic("over MaxNodes")
				}
			}
		})
	}
	wg.Wait()
	require.Equal(t, max, tr.Len())
	require.Len(t, tr.Nodes(nil), max)
	sum := tr.Summary()
	require.Equal(t, max, sum.Nodes)
	tr.mu.Lock()
	left := tr.inState[Left]
	tr.mu.Unlock()
	require.Equal(t, int64(sum.ByState[Left]), left)
}

// rel agrees with time.Time.Sub with and without monotonic readings, across
// zones and before start.
func TestRel(t *testing.T) {
	wall := newTracker(t, noGrace)
	mono, err := New(noGrace, time.Now()) // the only clock read in the tests: a monotonic reading
	require.NoError(t, err)
	zone := time.FixedZone("X", -7*3600)
	for _, d := range []time.Duration{0, 1, -1, 999_999_999, time.Second + 1, -time.Hour - 7, 24 * 365 * time.Hour} {
		for _, tr := range []*Tracker{wall, mono} {
			for _, now := range []time.Time{tr.start.Add(d), tr.start.Add(d).Round(0), tr.start.Add(d).In(zone)} {
				require.Equal(t, int64(now.Sub(tr.start)), tr.rel(now), "d=%v now=%v", d, now)
				require.True(t, tr.abs(tr.rel(now)).Equal(now))
			}
		}
	}
}
