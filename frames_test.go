package heartbeat

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/transport"
	"github.com/p2pbeat/heartbeat/wire2"
)

// Encoding a steady v2 Beat (after the stream's first write, which carries
// the Hello) allocates nothing: one Encoder and one buffer per stream.
func TestBeatFramesDoNotAllocate(t *testing.T) {
	s, err := New(nil, Config{BeatTarget: "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWHHzSeKaY8xuZVzkLbKFfvNgPPeKhFBGrMbNzbm5akpqu"},
		func() (ChainHead, error) { return ChainHead{Head: "{ bafy2bzaceabc }", Height: 444}, nil },
		WithTransport(transport.NewNetwork().Dialer("me")))
	require.NoError(t, err)
	ss := &stream{v2: true}
	at := time.Date(2019, 6, 1, 12, 0, 0, 0, time.UTC)
	first, err := s.frames(ss, fsm.Effect{Kind: fsm.Send, Seq: 1, At: at})
	require.NoError(t, err)
	var r wire2.Frame
	payload, rest, err := wire2.SplitFrame(first, wire2.MaxFrameBytes)
	require.NoError(t, err)
	require.NoError(t, r.Decode(payload))
	require.Equal(t, wire2.TypeHello, r.Type, "the Hello first")
	payload, rest, err = wire2.SplitFrame(rest, wire2.MaxFrameBytes)
	require.NoError(t, err)
	require.Empty(t, rest)
	require.NoError(t, r.Decode(payload))
	require.Equal(t, wire2.Beat{Seq: 1, Time: at.UnixNano(), Head: "{ bafy2bzaceabc }", Height: 444}, r.Beat)

	seq := uint64(1)
	allocs := testing.AllocsPerRun(100, func() {
		seq++
		if _, err := s.frames(ss, fsm.Effect{Kind: fsm.Send, Seq: seq, At: at, RTT: 2 * time.Minute}); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)
	payload, _, err = wire2.SplitFrame(ss.buf, wire2.MaxFrameBytes)
	require.NoError(t, err)
	require.NoError(t, r.Decode(payload))
	require.Equal(t, wire2.MaxRTT, r.Beat.RTT, "the RTT bounded to what the wire carries")
}
