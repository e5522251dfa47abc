package heartbeat_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/transport"
	"github.com/p2pbeat/heartbeat/wire"
)

func TestConfigErrorsNameTheField(t *testing.T) {
	head := func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{}, nil }
	good := "/ip4/127.0.0.1/tcp/4001/p2p/" + testPeerID(t, 1).String()
	cases := []struct {
		cfg   heartbeat.Config
		field string
	}{
		{heartbeat.Config{BeatTarget: good, BeatPeriod: "3 seconds"}, "beatPeriod"},
		{heartbeat.Config{BeatTarget: good, BeatPeriod: "0s"}, "beatPeriod"},
		{heartbeat.Config{BeatTarget: good, BeatPeriod: "1ns"}, "beatPeriod"}, // under 10ms: a flood, not a heartbeat
		{heartbeat.Config{BeatTarget: good, BeatPeriod: "9ms", Protocol: "v1"}, "beatPeriod"},
		{heartbeat.Config{BeatTarget: good, ReconnectPeriod: "-1s"}, "reconnectPeriod"},
		{heartbeat.Config{BeatTarget: good, ReconnectPeriod: "1ms"}, "reconnectPeriod"},
		{heartbeat.Config{BeatTarget: good, ReconnectPeriod: "soon"}, "reconnectPeriod"},
		{heartbeat.Config{BeatTarget: ""}, "beatTarget"},
		{heartbeat.Config{BeatTarget: "not a multiaddr"}, "beatTarget"},
		{heartbeat.Config{BeatTarget: "/ip4/127.0.0.1/tcp/4001"}, "beatTarget"}, // no /p2p/
	}
	for _, tc := range cases {
		_, err := heartbeat.New(nil, tc.cfg, head, heartbeat.WithTransport(transport.NewNetwork().Dialer("me")))
		var cerr *heartbeat.ConfigError
		require.ErrorAs(t, err, &cerr, "%+v", tc.cfg)
		require.Equal(t, tc.field, cerr.Field)
		require.Contains(t, err.Error(), tc.field)
	}
	// Options are validated too, naming what is wrong.
	_, err := heartbeat.New(nil, heartbeat.Config{BeatTarget: good}, head,
		heartbeat.WithTransport(transport.NewNetwork().Dialer("me")), heartbeat.WithBackoff(heartbeat.Backoff{Jitter: 2}))
	require.ErrorContains(t, err, "Jitter")
	_, err = heartbeat.New(nil, heartbeat.Config{BeatTarget: good}, head,
		heartbeat.WithTransport(transport.NewNetwork().Dialer("me")), heartbeat.WithBackoff(heartbeat.Backoff{Base: time.Second}))
	require.ErrorContains(t, err, "Backoff.Base", "the ReconnectPeriod is the base")
	_, err = heartbeat.New(nil, heartbeat.Config{BeatTarget: good}, head)
	require.ErrorContains(t, err, "host")
	_, err = heartbeat.New(nil, heartbeat.Config{BeatTarget: good}, nil, heartbeat.WithTransport(transport.NewNetwork().Dialer("me")))
	require.ErrorContains(t, err, "head")
}

func TestDefaultsAreTheLegacyOnes(t *testing.T) {
	c := heartbeat.DefaultConfig()
	require.Equal(t, "3s", c.BeatPeriod)
	require.Equal(t, "10s", c.ReconnectPeriod)
	require.Equal(t, "fil/heartbeat/1.0.0", heartbeat.ProtocolID)
}

// A failing head getter still yields heartbeats, with the last good head,
// and its error is logged once per outage, not once per beat.
func TestHeadErrorsKeepTheLastGoodHead(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	head := func() (heartbeat.ChainHead, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls >= 2 && calls <= 4 {
			return heartbeat.ChainHead{}, errors.New("chain store closed")
		}
		return heartbeat.ChainHead{Head: "{ h" + strings.Repeat("i", calls) + " }", Height: uint64(calls)}, nil
	}
	h := newHarness(t, harnessConfig{head: head})
	h.startAggregator()
	h.run()
	h.advanceUntil(13 * time.Second) // beats at 0, 3, 6, 9, 12
	var heights []uint64
	for range 5 {
		heights = append(heights, h.nextLine().hb.Height)
	}
	require.Equal(t, []uint64{1, 1, 1, 1, 5}, heights)
	var warns, infos []time.Duration
	for _, l := range h.sink.lines(t) {
		switch {
		case strings.HasPrefix(l.Message, "head unavailable"):
			warns = append(warns, l.At)
			require.Equal(t, "chain store closed", l.Fields["error"])
		case strings.HasPrefix(l.Message, "head available again"):
			infos = append(infos, l.At)
		}
	}
	require.Equal(t, seconds(3), warns)
	require.Equal(t, seconds(12), infos)
}

// The node-runtime helper starts the primary sender and one alert sender
// per FIL_HEARTBEAT_ALERTS target, with the legacy 10 s periods.
func TestStartNodeSenders(t *testing.T) {
	noLeaks(t)
	net := transport.NewNetwork()
	var targets []string
	var listeners []*transport.Listener
	for i := range 3 {
		id := testPeerID(t, int64(10+i))
		l, err := net.Listen(id)
		require.NoError(t, err)
		listeners = append(listeners, l)
		targets = append(targets, "/ip4/127.0.0.1/tcp/4001/p2p/"+id.String())
	}
	t.Setenv(heartbeat.AlertsEnv, " "+targets[1]+" ,, "+targets[2])
	head := func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{Head: "{ }"}, nil }
	cfg := heartbeat.Config{BeatTarget: targets[0], Nickname: "n1"}
	senders, err := heartbeat.StartNodeSenders(t.Context(), nil, cfg, head, heartbeat.WithTransport(net.Dialer(testPeerID(t, 2))))
	require.NoError(t, err)
	defer func() { require.NoError(t, senders.Close()) }()

	var names []string
	for i, svc := range senders.Services() {
		st := svc.Status()
		names = append(names, st.Name)
		require.Equal(t, listeners[i].ID(), st.Target)
		if i == 0 {
			require.Equal(t, [2]time.Duration{3 * time.Second, 10 * time.Second}, [2]time.Duration{st.BeatPeriod, st.ReconnectPeriod})
		} else {
			require.Equal(t, [2]time.Duration{heartbeat.AlertPeriod, heartbeat.AlertPeriod}, [2]time.Duration{st.BeatPeriod, st.ReconnectPeriod})
		}
	}
	require.Equal(t, []string{"primary", "alert-1", "alert-2"}, names)
	for _, l := range listeners {
		ctx, cancel := context.WithTimeout(t.Context(), guard)
		s, err := l.Accept(ctx)
		cancel()
		require.NoError(t, err)
		line := make([]byte, 64)
		n, err := s.Read(line)
		require.NoError(t, err)
		require.Contains(t, string(line[:n]), `"Nickname":"n1"`)
		require.NoError(t, l.Close())
	}

	// No primary target and no alerts: nothing starts.
	t.Setenv(heartbeat.AlertsEnv, "")
	none, err := heartbeat.StartNodeSenders(t.Context(), nil, heartbeat.Config{}, head, heartbeat.WithTransport(net.Dialer("me")))
	require.NoError(t, err)
	require.Empty(t, none.Services())

	// A bad alert target fails the whole start, naming the sender, and leaves nothing running.
	_, err = heartbeat.StartSenders(t.Context(), nil, cfg, "/ip4/1.2.3.4", head, heartbeat.WithTransport(net.Dialer("me")))
	require.ErrorContains(t, err, "alert-1")
	require.ErrorContains(t, err, "beatTarget")
}

// The config section keeps the legacy JSON names and duration strings.
func TestConfigReadsTheLegacyJSONSection(t *testing.T) {
	var c heartbeat.Config
	require.NoError(t, json.Unmarshal([]byte(`{"beatTarget":"/ip4/1.2.3.4/tcp/1/p2p/12D3KooWHHzSeKaY8xuZVzkLbKFfvNgPPeKhFBGrMbNzbm5akpqu",
		"beatPeriod":"5s","reconnectPeriod":"1m","nickname":"BobHoblaw"}`), &c))
	require.Equal(t, heartbeat.Config{
		BeatTarget: "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWHHzSeKaY8xuZVzkLbKFfvNgPPeKhFBGrMbNzbm5akpqu",
		BeatPeriod: "5s", ReconnectPeriod: "1m", Nickname: "BobHoblaw",
	}, c)
	svc, err := heartbeat.New(nil, c, func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{}, nil },
		heartbeat.WithTransport(transport.NewNetwork().Dialer("me")))
	require.NoError(t, err)
	require.Equal(t, 5*time.Second, svc.Status().BeatPeriod)
	require.Equal(t, time.Minute, svc.Status().ReconnectPeriod)
	out, err := json.Marshal(heartbeat.DefaultConfig())
	require.NoError(t, err)
	require.JSONEq(t, `{"beatTarget":"","beatPeriod":"3s","reconnectPeriod":"10s","nickname":""}`, string(out))
}

// A closed Service does not run again; a running one runs once.
func TestRunAfterClose(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	require.NoError(t, h.svc.Close())
	require.ErrorIs(t, h.svc.Run(t.Context()), heartbeat.ErrClosed)
	require.ErrorIs(t, h.svc.Start(t.Context()), heartbeat.ErrClosed)

	h2 := newHarness(t, harnessConfig{})
	h2.run()
	require.ErrorIs(t, h2.svc.Start(t.Context()), heartbeat.ErrAlreadyRunning)
}

// A target that is the host's own peer id is a config error naming the
// field (libp2p would refuse every dial to self, for ever).
func TestSelfTargetIsAConfigError(t *testing.T) {
	h, err := libp2p.New(libp2p.NoListenAddrs)
	require.NoError(t, err)
	defer h.Close()
	head := func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{}, nil }
	_, err = heartbeat.New(h, heartbeat.Config{BeatTarget: "/ip4/127.0.0.1/tcp/4001/p2p/" + h.ID().String()}, head)
	var ce *heartbeat.ConfigError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "beatTarget", ce.Field)
	require.ErrorContains(t, err, "own peer id")
}

// An alert target with the primary's peer id (at any address) starts no
// second sender, and one INFO line says so.
func TestStartSendersDeduplicatesByPeerID(t *testing.T) {
	noLeaks(t)
	net := transport.NewNetwork()
	agg, other := testPeerID(t, 20), testPeerID(t, 21)
	sink := &logSink{}
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Info, JSONFormat: true, Output: sink})
	head := func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{}, nil }
	cfg := heartbeat.Config{BeatTarget: "/ip4/127.0.0.1/tcp/4001/p2p/" + agg.String(), Nickname: "n1"}
	alerts := "/dns4/agg.example/tcp/4002/p2p/" + agg.String() + ",/ip4/127.0.0.1/tcp/4003/p2p/" + other.String() +
		",/ip4/127.0.0.1/tcp/4004/p2p/" + other.String()
	senders, err := heartbeat.StartSenders(t.Context(), nil, cfg, alerts, head,
		heartbeat.WithTransport(net.Dialer(testPeerID(t, 2))), heartbeat.WithLogger(log))
	require.NoError(t, err)
	defer func() { require.NoError(t, senders.Close()) }()
	var names []string
	for _, svc := range senders.Services() {
		names = append(names, svc.Status().Name)
	}
	require.Equal(t, []string{"primary", "alert-2"}, names)
	var dropped []string
	for _, l := range sink.lines(t) {
		if strings.HasPrefix(l.Message, "sender not started") {
			require.Equal(t, "INFO", l.Level)
			dropped = append(dropped, fmt.Sprint(l.Fields["sender"], " same_as ", l.Fields["same_as"]))
		}
	}
	require.Equal(t, []string{"alert-1 same_as primary", "alert-3 same_as alert-2"}, dropped)
}

// The nickname is the one config field that grows a heartbeat: New rejects
// one that makes the line longer than wire.MaxLineBytes (the default
// aggregator's limit, which would reset every stream as line_too_long),
// measured encoded (a '<' is 6 bytes of JSON), and accepts the longest that
// fits.
func TestNicknameThatOverflowsTheLineIsAConfigError(t *testing.T) {
	head := func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{}, nil }
	good := "/ip4/127.0.0.1/tcp/4001/p2p/" + testPeerID(t, 1).String()
	newWith := func(nickname string) error {
		_, err := heartbeat.New(nil, heartbeat.Config{BeatTarget: good, Nickname: nickname}, head,
			heartbeat.WithTransport(transport.NewNetwork().Dialer("me")))
		return err
	}
	base, err := wire.AppendLine(nil, wire.Heartbeat{Height: math.MaxUint64})
	require.NoError(t, err)
	longest := wire.MaxLineBytes - (len(base) - 1)
	require.NoError(t, newWith(strings.Repeat("a", longest)))
	for _, nick := range []string{strings.Repeat("a", longest+1), strings.Repeat("a", 9000), strings.Repeat("<", 1400)} {
		err := newWith(nick)
		var cerr *heartbeat.ConfigError
		require.ErrorAs(t, err, &cerr)
		require.Equal(t, "nickname", cerr.Field)
		require.ErrorContains(t, err, fmt.Sprintf("over the aggregator's limit of %d", wire.MaxLineBytes))
		require.ErrorContains(t, err, fmt.Sprintf("(%d bytes)", len(nick)), "a long value is shown by its size")
		require.Less(t, len(err.Error()), 300)
	}
}

// At run time a head that makes the line too long is never sent: ERROR
// once per run of such heads, and the heartbeat carries the last head that
// fitted; a miner address too long for any head drops both.
func TestOversizedHeartbeatIsNotSent(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	huge := "{ " + strings.Repeat("bafy", 2500) + " }"
	head := func() (heartbeat.ChainHead, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		switch calls {
		case 2, 3, 5:
			return heartbeat.ChainHead{Head: huge, Height: uint64(calls)}, nil
		}
		return heartbeat.ChainHead{Head: fmt.Sprintf("{ h%d }", calls), Height: uint64(calls)}, nil
	}
	miner := ""
	h := newHarness(t, harnessConfig{head: head, opts: []heartbeat.Option{heartbeat.WithMinerAddress(func() string {
		mu.Lock()
		defer mu.Unlock()
		return miner
	})}})
	h.startAggregator()
	h.run()
	h.advanceUntil(16 * time.Second) // beats at 0, 3, 6, 9, 12, 15
	var got []string
	for range 6 {
		hb := h.nextLine().hb
		got = append(got, fmt.Sprintf("%s@%d", hb.Head, hb.Height))
	}
	require.Equal(t, []string{"{ h1 }@1", "{ h1 }@1", "{ h1 }@1", "{ h4 }@4", "{ h4 }@4", "{ h6 }@6"}, got)
	var errs []time.Duration
	for _, l := range h.lines("ERROR") {
		require.Equal(t, "heartbeat line too long, not sent; reporting the last head that fits", l.Message)
		require.EqualValues(t, wire.MaxLineBytes, l.Fields["limit_bytes"])
		errs = append(errs, l.At)
	}
	require.Equal(t, seconds(3, 12), errs, "once per run of oversized heads")

	mu.Lock()
	miner = strings.Repeat("t0", 5000)
	mu.Unlock()
	h.advanceUntil(19 * time.Second)
	hb := h.nextLine().hb
	require.Equal(t, "@6 miner=", fmt.Sprintf("%s@%d miner=%s", hb.Head, hb.Height, hb.MinerAddress),
		"no head, no miner address; the last height that was sent")
	require.Len(t, h.lines("ERROR"), 3)
	require.Equal(t, fsm.Beating, h.svc.Status().State, "the stream was never reset")
}
