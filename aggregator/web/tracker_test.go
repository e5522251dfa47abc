package web

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/wire"
)

// testPeer makes a distinct, valid-looking peer id (identity multihash of
// 32 bytes, as an Ed25519 id).
func testPeer(i int) peer.ID {
	b := []byte{0x00, 0x24, 0x08, 0x01, 0x12, 0x20}
	var key [32]byte
	binary.BigEndian.PutUint64(key[24:], uint64(i)+1)
	return peer.ID(append(b, key[:]...))
}

// TrackerSource turns the tracker's records and summary into the page's,
// and forgets the ids the tracker forgot.
func TestTrackerSource(t *testing.T) {
	tr, err := tracker.New(tracker.Config{}, t0)
	require.NoError(t, err)
	a, b := testPeer(1), testPeer(2)
	_, _, err = tr.Beat(a, &wire.Heartbeat{Nickname: "<b>a</b>", Head: "{ h }", Height: 9, MinerAddress: "t01"}, t0.Add(time.Second))
	require.NoError(t, err)
	require.NoError(t, tr.StreamOpened(b, t0))
	_, _, err = tr.Beat(b, &wire.Heartbeat{Nickname: "b", Head: "{ g }", Height: 8}, t0.Add(2*time.Second))
	require.NoError(t, err)
	_, ok := tr.StreamEnded(b, true, t0.Add(3*time.Second))
	require.True(t, ok)

	src := TrackerSource(tr)
	nodes := src.Nodes(nil)
	require.Len(t, nodes, 2)
	byPeer := map[string]Node{}
	for _, n := range nodes {
		byPeer[n.Peer] = n
	}
	want := Node{
		Peer: a.String(), Nickname: "<b>a</b>", State: "up", SinceMs: t0.Add(time.Second).UnixMilli(),
		Head: "{ h }", Height: 9, LastSeenMs: t0.Add(time.Second).UnixMilli(), Miner: "t01",
		RTTMs: Unknown, Uptime24h: Unknown,
	}
	got := byPeer[a.String()]
	require.Positive(t, got.PeriodMs, "the tracker's period estimate")
	want.PeriodMs = got.PeriodMs
	require.Equal(t, want, got)
	require.Equal(t, "left", byPeer[b.String()].State)
	require.Equal(t, t0.Add(3*time.Second).UnixMilli(), byPeer[b.String()].SinceMs)

	sum := src.Summary()
	require.Equal(t, 2, sum.Nodes)
	require.Equal(t, map[string]int{"joining": 0, "up": 1, "suspect": 0, "down": 0, "left": 1, "unknown": 0}, sum.States)
	require.Equal(t, "{ h }", sum.ConsensusHead)
	require.Equal(t, uint64(9), sum.ConsensusHeight)
	require.Equal(t, 1, sum.InConsensus)
	require.NotNil(t, sum.Disrupted)
	require.False(t, *sum.Disrupted)

	// Streams that keep superseding each other: flagged.
	for i := range tracker.DefaultDuplicateThreshold + 1 {
		tr.Superseded(a, t0.Add(time.Duration(4+i)*time.Second))
	}
	nodes = src.Nodes(nil)
	for _, n := range nodes {
		if n.Peer == a.String() {
			require.Equal(t, []string{FlagDuplicateIdentity}, n.Flags)
		} else {
			require.Empty(t, n.Flags)
		}
	}

	require.True(t, tr.Forget(b))
	require.Len(t, src.Nodes(nil), 1)
	require.Len(t, src.(*trackerSource).ids, 1, "the id cache follows the tracker")
}

// BenchmarkRefresh: one refresh of the dashboard over a tracker of 10,000
// steady nodes with one subscriber (read, diff, encode, queue), the work
// the refresh goroutine does every RefreshInterval.
func BenchmarkRefresh(b *testing.B) {
	for _, n := range []int{1_000, 10_000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			tr, err := tracker.New(tracker.Config{MaxNodes: n}, t0)
			require.NoError(b, err)
			hb := wire.Heartbeat{Nickname: "node", Head: "{ bafy2bzaceabc }", Height: 444}
			for i := range n {
				_, _, err := tr.Beat(testPeer(i), &hb, t0)
				require.NoError(b, err)
			}
			d, err := New(TrackerSource(tr), WithClock(clockwork.NewMock(t0)), WithSubscriberBuffer(1<<20))
			require.NoError(b, err)
			defer d.Close()
			ch, cancel, err := d.Subscribe()
			require.NoError(b, err)
			defer cancel()
			<-ch
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				d.refresh()
				<-ch
			}
		})
	}
}

// The RTT a v2 sender reports shows in the node's row; a v1 node's is
// Unknown.
func TestTrackerSourceRTT(t *testing.T) {
	tr, err := tracker.New(tracker.Config{}, t0)
	require.NoError(t, err)
	v1, v2 := testPeer(1), testPeer(2)
	_, _, err = tr.Beat(v1, &wire.Heartbeat{Nickname: "v1", Head: "{ h }", Height: 9}, t0.Add(time.Second))
	require.NoError(t, err)
	_, _, err = tr.BeatV2(v2, &wire.Heartbeat{Nickname: "v2", Head: "{ h }", Height: 9},
		tracker.BeatInfo{Seq: 1, RTT: 2500 * time.Microsecond}, t0.Add(time.Second))
	require.NoError(t, err)
	rtt := map[string]float64{}
	for _, n := range TrackerSource(tr).Nodes(nil) {
		rtt[n.Nickname] = n.RTTMs
	}
	require.Equal(t, map[string]float64{"v1": Unknown, "v2": 2.5}, rtt)
}
