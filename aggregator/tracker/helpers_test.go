package tracker

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multihash"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/wire"
)

// t0 is the tracker start in every test: a fixed instant, no clock read.
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// pid returns a realistic peer id (the 38-byte identity multihash of an
// Ed25519 key, as go-libp2p makes them) derived from i, without crypto.
func pid(i int) peer.ID {
	b := make([]byte, 0, 38)
	b = append(b, 0x00, 0x24, 0x08, 0x01, 0x12, 0x20)
	var key [32]byte
	binary.BigEndian.PutUint64(key[:8], uint64(i)*0x9e3779b97f4a7c15)
	binary.BigEndian.PutUint64(key[24:], uint64(i))
	return peer.ID(append(b, key[:]...))
}

func hb(head string, height uint64, nick string) *wire.Heartbeat {
	return &wire.Heartbeat{Head: head, Height: height, Nickname: nick}
}

func mkCID(t testing.TB, s string) cid.Cid {
	t.Helper()
	mh, err := multihash.Sum([]byte(s), multihash.SHA2_256, -1)
	require.NoError(t, err)
	return cid.NewCidV1(cid.DagCBOR, mh)
}

// noGrace is the config of the threshold tests: a fixed 3s period (no
// learning), so Suspect after 6s and Down after 15s, no startup grace, no
// reconnect allowance and no disruption guard.
var noGrace = fixed(Config{ExpectedPeriod: 3 * time.Second, StartupGrace: -1})

// fixed turns off what the tests of the basic rules do not exercise:
// period learning (the period is ExpectedPeriod, default 3s), the
// reconnect allowance and the disruption guard.
func fixed(c Config) Config {
	p := c.ExpectedPeriod
	if p == 0 {
		p = DefaultExpectedPeriod
	}
	c.MinPeriod, c.MaxPeriod = p, p
	c.ReconnectAllowance = -1
	c.DisruptionFraction = 1
	return c
}

func newTracker(t testing.TB, cfg Config) *Tracker {
	t.Helper()
	tr, err := New(cfg, t0)
	require.NoError(t, err)
	return tr
}

func state(t testing.TB, tr *Tracker, id peer.ID) State {
	t.Helper()
	n, ok := tr.Node(id)
	require.True(t, ok, "node %s not tracked", id)
	return n.State
}

func beat(t testing.TB, tr *Tracker, id peer.ID, h *wire.Heartbeat, at time.Time) (Change, bool) {
	t.Helper()
	ch, ok, err := tr.Beat(id, h, at)
	require.NoError(t, err)
	return ch, ok
}
