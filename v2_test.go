package heartbeat_test

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/internal/scenario"
	"github.com/p2pbeat/heartbeat/transport"
	"github.com/p2pbeat/heartbeat/wire2"
)

// Config.Protocol is auto (the default, also ""), v1 or v2; anything else is
// a ConfigError naming it. v2 needs periods a Hello can carry: with v2 a
// period outside them is a ConfigError naming that period; with auto the
// Service then offers v1 only, which any period suits.
func TestProtocolConfig(t *testing.T) {
	head := func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{}, nil }
	good := "/ip4/127.0.0.1/tcp/4001/p2p/" + testPeerID(t, 1).String()
	dialer := heartbeat.WithTransport(transport.NewNetwork().Dialer("me"))
	for _, tc := range []struct {
		cfg   heartbeat.Config
		field string
	}{
		{heartbeat.Config{BeatTarget: good, Protocol: "v3"}, "protocol"},
		{heartbeat.Config{BeatTarget: good, Protocol: "V2"}, "protocol"},
		{heartbeat.Config{BeatTarget: good, Protocol: "v2", BeatPeriod: "2h"}, "beatPeriod"},
		{heartbeat.Config{BeatTarget: good, Protocol: "v2", BeatPeriod: "5ms"}, "beatPeriod"},
		{heartbeat.Config{BeatTarget: good, Protocol: "v2", ReconnectPeriod: "48h"}, "reconnectPeriod"},
	} {
		_, err := heartbeat.New(nil, tc.cfg, head, dialer)
		var cerr *heartbeat.ConfigError
		require.ErrorAs(t, err, &cerr, "%+v", tc.cfg)
		require.Equal(t, tc.field, cerr.Field)
		require.Contains(t, err.Error(), tc.field)
	}
	for _, p := range []string{"", "auto", "v1", "v2"} {
		_, err := heartbeat.New(nil, heartbeat.Config{BeatTarget: good, Protocol: p}, head, dialer)
		require.NoError(t, err, p)
	}
	_, err := heartbeat.New(nil, heartbeat.Config{BeatTarget: good, BeatPeriod: "2h"}, head, dialer)
	require.NoError(t, err, "auto with a period v2 cannot carry: v1 only")
}

// The Hello: a boot id drawn per Service (not all zeros), the same on every
// stream of that Service, another for another Service; the implementation
// and the configured periods and labels, a nickname cut to the protocol's
// 256 bytes at a character boundary. Beats: seq 1, 2, 3… across streams,
// stamped with the Service's clock, the head.
func TestHelloAndBeats(t *testing.T) {
	nick := strings.Repeat("é", 200) // 400 bytes
	genesis, err := cid.Decode("bafyreibdikkj4ltzbcrsl5zvuowmltrklrwabwwpgbcqlhmyziyxyigosa")
	require.NoError(t, err)
	boots := map[wire2.BootID]bool{}
	for run := range 2 {
		h := newHarness(t, harnessConfig{
			cfg: heartbeat.Config{Nickname: nick, BeatPeriod: "2s", ReconnectPeriod: "20s"},
			opts: []heartbeat.Option{heartbeat.WithMinerAddress(func() string { return "t01234" }),
				heartbeat.WithGenesisCID(genesis)},
		})
		h.startAggregatorWith(scenario.Aggregator{Up: true, V2: true})
		h.run()
		h.advanceUntil(3 * time.Second)
		h.stopAggregator() // the stream is reset: a rejoin
		h.settle()
		h.startAggregatorWith(scenario.Aggregator{Up: true, V2: true})
		h.advanceUntil(7 * time.Second)
		require.Equal(t, protocol.ID(heartbeat.ProtocolIDV2), h.svc.Status().Protocol)

		h.aggMu.Lock()
		srv := append([]*srvStream(nil), h.srv...)
		h.aggMu.Unlock()
		require.Len(t, srv, 2, "run %d", run)
		hello := srv[0].hello
		require.False(t, hello.BootID.IsZero())
		require.Equal(t, hello, srv[1].hello, "one boot, one Hello")
		require.False(t, boots[hello.BootID], "a new boot id per Service")
		boots[hello.BootID] = true
		require.Equal(t, heartbeat.Impl, hello.Impl)
		require.Equal(t, heartbeat.Version(), hello.Version)
		require.Equal(t, 2*time.Second, hello.BeatPeriod)
		require.Equal(t, 20*time.Second, hello.ReconnectPeriod)
		require.Equal(t, strings.Repeat("é", 128), hello.Nickname, "256 bytes, whole characters")
		require.Equal(t, "t01234", hello.MinerAddress)
		require.Equal(t, genesis.String(), hello.Genesis)

		var seqs []string
		for range int(h.svc.Status().BeatsSent) {
			r := h.nextLine()
			seqs = append(seqs, fmt.Sprintf("%d@%s", r.beat.Seq, time.Unix(0, r.beat.Time).Sub(start)))
			require.Equal(t, "{ bafy2bzaceabc }", r.beat.Head)
			require.EqualValues(t, 444, r.beat.Height)
		}
		// Beats at 0 and 2 s; the reset at 2 s, the rejoin 1 s later
		// (BeatPeriod/2, no jitter), then every 2 s: seq goes on.
		require.Equal(t, []string{"1@0s", "2@2s", "3@3s", "4@5s"}, seqs)
	}
}

// A clean stop says Bye before the half-close; the aggregator reads it,
// then the end of the stream, and closes in turn.
func TestCleanStopSaysBye(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	h.startAggregatorWith(scenario.Aggregator{Up: true, V2: true})
	h.run()
	require.NoError(t, h.svc.Close())
	h.aggMu.Lock()
	ss := h.srv[0]
	h.aggMu.Unlock()
	require.ErrorIs(t, h.streamEnd(ss), io.EOF)
	h.aggMu.Lock()
	defer h.aggMu.Unlock()
	require.True(t, ss.bye)
}

// The log lines of v2 events, as hclog writes them: a GoAway's reason is
// the aggregator's text, quoted when it is not printable so that it cannot
// forge lines; durations are seconds.
func TestGoAwayLogLine(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	h.startAggregatorWith(scenario.Aggregator{Up: true, V2: true})
	h.run()
	h.aggMu.Lock()
	ss := h.srv[0]
	h.aggMu.Unlock()
	mark := len(h.observations())
	h.writeFrame(ss, &wire2.GoAway{RetryAfter: 30 * time.Second, Reason: "busy\x1b[2J"})
	require.NoError(t, ss.s.Close())
	h.waitFor(mark, fsm.GoAwayReceived)
	h.settle()
	lines := h.lines("INFO")
	require.Len(t, lines, 1)
	l := lines[0]
	require.Equal(t, "aggregator asked to come back later", l.Message)
	require.EqualValues(t, 30, l.Fields["retry_after"])
	require.EqualValues(t, 30, l.Fields["wait"])
	require.Equal(t, `"busy\x1b[2J"`, l.Fields["reason"])
	require.Equal(t, start.Add(30*time.Second), h.svc.Status().NextRetry)
}
