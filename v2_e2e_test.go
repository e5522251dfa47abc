package heartbeat_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/aggregator/api"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/fsm"
)

// observed collects a Service's observations for a test on real libp2p.
type observed struct {
	mu   sync.Mutex
	obs  []heartbeat.Observation
	poke chan struct{}
}

func newObserved() *observed { return &observed{poke: make(chan struct{}, 1)} }

func (o *observed) observe(ob heartbeat.Observation) {
	o.mu.Lock()
	o.obs = append(o.obs, ob)
	o.mu.Unlock()
	select {
	case o.poke <- struct{}{}:
	default:
	}
}

func (o *observed) observations() []heartbeat.Observation {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]heartbeat.Observation(nil), o.obs...)
}

// inflight counts the dials and writes started whose result is not handled.
func (o *observed) inflight() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, ob := range o.obs {
		for _, e := range ob.Effects {
			if e.Kind == fsm.Dial || e.Kind == fsm.Send {
				n++
			}
		}
		switch ob.Event.Kind {
		case fsm.DialSucceeded, fsm.DialFailed, fsm.WriteSucceeded, fsm.WriteFailed:
			n--
		}
	}
	return n
}

// waitIdle waits until every dial and write is handled: against a receiver
// that never reads, nothing else can happen until the clock moves.
func (o *observed) waitIdle(t *testing.T) {
	t.Helper()
	deadline := time.After(guard)
	for o.inflight() != 0 {
		select {
		case <-o.poke:
		case <-deadline:
			t.Fatalf("the sender never settled: %d operations in flight", o.inflight())
		}
	}
}

// A hung v2 aggregator over real libp2p on loopback: a host that accepts
// /fil/heartbeat/2.0.0 streams and never reads nor answers. (A v1 sender
// kept "Beating" against one until the yamux window filled, about two
// hours at 3 s.) Our sender at a 1 s period finds it at 2 s, on its
// injected clock: the Ack of the first Beat is overdue (2×BeatPeriod, no
// RTT yet). The stream never proved itself, so each attempt is a failed
// one under the legacy policy, to the virtual second: WARN at 2 s, DEBUG
// every 12 s (10 s ReconnectPeriod, then 2 s to find the next stream hung),
// ERROR strictly more than 10 minutes after the WARN: at 614 s; never INFO
// "connected".
func TestHungAggregatorIsDetected(t *testing.T) {
	noLeaks(t)
	hung, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	require.NoError(t, err)
	defer hung.Close()
	var held sync.Map // the streams it holds open, never read
	hung.SetStreamHandler(protocol.ID(heartbeat.ProtocolIDV2), func(s network.Stream) {
		held.Store(s, struct{}{})
	})

	node, err := libp2p.New(libp2p.NoListenAddrs)
	require.NoError(t, err)
	defer node.Close()
	clk := clockwork.NewMock(start)
	sink := &logSink{}
	obs := newObserved()
	svc, err := heartbeat.New(node, heartbeat.Config{
		BeatTarget: hung.Addrs()[0].String() + "/p2p/" + hung.ID().String(),
		BeatPeriod: "1s", Nickname: "BobHoblaw",
	}, func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{Head: "{ h }", Height: 7}, nil },
		heartbeat.WithClock(clk), heartbeat.WithBackoff(heartbeat.Backoff{}),
		heartbeat.WithLogger(hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, JSONFormat: true, Output: sink, TimeFn: clk.Now})),
		heartbeat.WithObserver(obs.observe))
	require.NoError(t, err)
	require.NoError(t, svc.Start(t.Context()))
	defer func() {
		// The hung host resets what it holds first: a clean stop waits for
		// its end, on a clock nobody moves any more.
		held.Range(func(k, _ any) bool { _ = k.(network.Stream).Reset(); return true })
		require.NoError(t, svc.Close())
	}()

	var detected time.Duration
	for deadline := time.After(guard); len(obs.observations()) == 0; {
		select { // the Service's first step: Start
		case <-obs.poke:
		case <-deadline:
			t.Fatal("the Service never started")
		}
	}
	for clk.Now().Sub(start) < 620*time.Second {
		obs.waitIdle(t)
		at, ok := clockwork.AdvanceToNext(clk)
		require.True(t, ok)
		obs.mu.Lock()
		last := obs.obs[len(obs.obs)-1]
		obs.mu.Unlock()
		if detected == 0 && last.Event.Kind == fsm.AckOverdue {
			detected = at.Sub(start)
		}
	}
	obs.waitIdle(t)
	require.Equal(t, 2*time.Second, detected, "the first Beat's Ack overdue")
	require.Equal(t, protocol.ID(heartbeat.ProtocolIDV2), svc.Status().Protocol)

	lines := sink.lines(t)
	at := func(level, prefix string) []time.Duration {
		var out []time.Duration
		for _, l := range lines {
			if l.Level == level && strings.HasPrefix(l.Message, prefix) {
				out = append(out, l.At)
			}
		}
		return out
	}
	const failed = "Heartbeat service failed to connect"
	require.Equal(t, seconds(2), at("WARN", ""), "one WARN, at detection")
	require.Equal(t, every(14, 602, 12), at("DEBUG", failed))
	require.Equal(t, seconds(614), at("ERROR", ""))
	require.Empty(t, at("INFO", "Heartbeat service connected"))
	for _, l := range lines {
		if l.Level == "WARN" {
			require.Equal(t, failed, l.Message)
			require.Contains(t, l.Fields["error"], "stream ended before its first heartbeat was acknowledged: heartbeat not acknowledged")
		}
	}
}

// Interop over real libp2p on loopback with our aggregator: a Service
// offering v2 then v1 (auto) speaks v2 with it: Hello, Beats acknowledged,
// the RTT in the Service's Status and, as the Beats report it, in the
// aggregator's /api/nodes; a Service configured for v1 speaks the 2019
// lines. The aggregator then restarts with the same key and address: each
// sender comes back on the same protocol, and a v2 sender is no restart to
// the aggregator (its boot id did not change).
func TestInteropWithOurAggregator(t *testing.T) {
	for _, tc := range []struct {
		protocol string
		want     protocol.ID
		version  uint8
	}{
		{heartbeat.ProtocolAuto, protocol.ID(heartbeat.ProtocolIDV2), 2},
		{heartbeat.ProtocolV1, protocol.ID(heartbeat.ProtocolID), 1},
	} {
		t.Run(tc.protocol, func(t *testing.T) { interop(t, tc.protocol, tc.want, tc.version) })
	}
}

func interop(t *testing.T, proto string, want protocol.ID, version uint8) {
	noLeaks(t)
	key, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	beats := make(beatLog, 4096)
	startAgg := func(listen string) (host.Host, *aggregator.Aggregator) {
		return startKeyedAggregator(t, key, listen, beats)
	}
	aggHost, agg := startAgg("/ip4/127.0.0.1/tcp/0")
	listen := aggHost.Addrs()[0].String()
	target := listen + "/p2p/" + aggHost.ID().String()

	node, err := libp2p.New(libp2p.NoListenAddrs)
	require.NoError(t, err)
	defer node.Close()
	svc, err := heartbeat.New(node, heartbeat.Config{
		BeatTarget: target, BeatPeriod: "50ms", ReconnectPeriod: "100ms", Nickname: "n0", Protocol: proto,
	}, func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{Head: "{ h }", Height: 7}, nil })
	require.NoError(t, err)
	require.NoError(t, svc.Start(t.Context()))
	defer func() { require.NoError(t, svc.Close()) }()

	check := func(a *aggregator.Aggregator) {
		t.Helper()
		waitBeats(t, beats, []peer.ID{node.ID()}, 3)
		// v2: the sender reads its Acks in a goroutine of its own, and a
		// Beat reports the RTT of an earlier one: wait for both, a beat at
		// a time.
		for i := 0; version == 2; i++ {
			n, _ := a.Tracker().Node(node.ID())
			if svc.Status().Acks > 0 && n.RTT > 0 {
				break
			}
			require.Less(t, i, 100, "no RTT measured and reported in 100 beats")
			waitBeats(t, beats, []peer.ID{node.ID()}, 1)
		}
		n, ok := a.Tracker().Node(node.ID())
		require.True(t, ok)
		require.Equal(t, tracker.Up, n.State)
		require.Equal(t, "{ h }", n.Head)
		require.Equal(t, "n0", n.Nickname)
		require.Equal(t, version, n.Protocol)
		st := svc.Status()
		require.Equal(t, want, st.Protocol)

		srv := httptest.NewServer(a.HTTPHandler())
		defer srv.Close()
		resp, err := http.Get(srv.URL + "/api/nodes/" + node.ID().String())
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var detail api.NodeDetail
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&detail))
		got := detail.Node
		require.Equal(t, version, got.Protocol)
		if version == 2 {
			// Acks flow: measured on the sender, reported in its next Beats.
			require.Positive(t, st.Acks)
			require.Positive(t, st.RTT)
			require.Positive(t, st.SmoothedRTT)
			require.Positive(t, got.RTTSeconds, "the RTT the Beats report")
			require.Zero(t, got.Restarts, "one boot of the sender")
		} else {
			require.Zero(t, st.Acks)
			require.Zero(t, st.RTT)
			require.Zero(t, got.RTTSeconds)
		}
	}
	check(agg)

	require.NoError(t, agg.Close())
	require.NoError(t, aggHost.Close())
	for len(beats) > 0 { // beats logged before the restart do not count after it
		<-beats
	}
	aggHost, agg = startAgg(listen)
	defer aggHost.Close()
	defer agg.Close()
	check(agg)
	require.GreaterOrEqual(t, svc.Status().Attempt, uint64(2))
}

// A v2-capable sender (auto, the default) against a receiver written the
// way the 2018 aggregator was (v1 only, a json.Decoder): multistream-select
// picks v1 and the lines are the 2019 format, byte for byte; after the
// receiver restarts, the same.
func TestAutoSenderSpeaksV1ToALegacyReceiver(t *testing.T) {
	noLeaks(t)
	key, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	start := func(listen string) (host.Host, chan string) {
		raw := make(chan string, 128)
		h, err := libp2p.New(libp2p.Identity(key), libp2p.ListenAddrStrings(listen))
		require.NoError(t, err)
		h.SetStreamHandler(protocol.ID(heartbeat.ProtocolID), func(s network.Stream) {
			defer s.Close()
			dec := json.NewDecoder(s)
			for {
				var m json.RawMessage
				if err := dec.Decode(&m); err != nil {
					_ = s.Reset()
					return
				}
				select {
				case raw <- string(m):
				default:
				}
			}
		})
		return h, raw
	}
	recv, raw := start("/ip4/127.0.0.1/tcp/0")
	listen := recv.Addrs()[0].String()
	node, err := libp2p.New(libp2p.NoListenAddrs)
	require.NoError(t, err)
	defer node.Close()
	// The protocol of each stream adopted, once published (the Service
	// updates its Status before it calls the observer).
	adopted := make(chan fsm.Protocol, 16)
	svc, err := heartbeat.New(node, heartbeat.Config{
		BeatTarget: listen + "/p2p/" + recv.ID().String(), BeatPeriod: "50ms", ReconnectPeriod: "100ms", Nickname: "BobHoblaw",
	}, func() (heartbeat.ChainHead, error) {
		return heartbeat.ChainHead{Head: "{ bafy2bzaceabc }", Height: 444}, nil
	}, heartbeat.WithObserver(func(o heartbeat.Observation) {
		if o.Event.Kind == fsm.DialSucceeded && o.To == fsm.Beating {
			adopted <- o.Event.Protocol
		}
	}))
	require.NoError(t, err)
	require.NoError(t, svc.Start(t.Context()))
	defer func() { require.NoError(t, svc.Close()) }()

	const line = `{"Head":"{ bafy2bzaceabc }","Height":444,"Nickname":"BobHoblaw","MinerAddress":""}`
	next := func(raw chan string) string {
		t.Helper()
		select {
		case l := <-raw:
			return l
		case <-time.After(guard):
			t.Fatal("the legacy receiver got no line")
			return ""
		}
	}
	require.Equal(t, line, next(raw))
	require.Equal(t, fsm.V1, <-adopted)
	require.Equal(t, protocol.ID(heartbeat.ProtocolID), svc.Status().Protocol)

	require.NoError(t, recv.Close())
	recv, raw = start(listen)
	defer recv.Close()
	require.Equal(t, line, next(raw), "the restarted receiver's first line")
	for p := range adopted { // the streams opened since, to the old host or the new
		require.Equal(t, fsm.V1, p)
		if len(adopted) == 0 {
			break
		}
	}
	require.Equal(t, protocol.ID(heartbeat.ProtocolID), svc.Status().Protocol)
	require.GreaterOrEqual(t, svc.Status().Attempt, uint64(2))
}

// startKeyedAggregator starts our aggregator on a real libp2p host with key,
// listening on listen, logging each heartbeat to beats. Its clock is a
// mock the test never moves: what is checked is the path of a heartbeat,
// not silence detection.
func startKeyedAggregator(t *testing.T, key crypto.PrivKey, listen string, beats beatLog) (host.Host, *aggregator.Aggregator) {
	t.Helper()
	// A v2 sender waits the retry-after of the GoAway a shutdown sends,
	// drawn from the pacing window (1 min by default).
	cfg := aggregator.Config{ExpectedPeriod: 50 * time.Millisecond, PacingWindow: 100 * time.Millisecond}
	opts, err := aggregator.HostOptions(cfg, nil)
	require.NoError(t, err)
	h, err := libp2p.New(append([]libp2p.Option{libp2p.Identity(key), libp2p.ListenAddrStrings(listen)}, opts...)...)
	require.NoError(t, err)
	log := hclog.New(&hclog.LoggerOptions{JSONFormat: true, Output: beats, Level: hclog.Info})
	a, err := aggregator.New(h, cfg, aggregator.WithLogger(log), aggregator.WithBeatLog(true),
		aggregator.WithClock(clockwork.NewMock(time.Date(2025, time.January, 1, 0, 0, 0, 0, time.UTC))))
	require.NoError(t, err)
	return h, a
}

// A 2019 go-filecoin sender against our aggregator, over real libp2p on
// loopback: it opens a stream with exactly fil/heartbeat/1.0.0 (no
// multistream choice) and writes its heartbeat with a plain json.Encoder.
// The node is Up with its fields, as protocol 1; the aggregator restarts
// with the same key and address, the sender opens a new stream (as the
// legacy one did after its ReconnectPeriod) and is Up again.
func TestLegacySenderWithOurAggregator(t *testing.T) {
	noLeaks(t)
	key, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	beats := make(beatLog, 4096)
	aggHost, agg := startKeyedAggregator(t, key, "/ip4/127.0.0.1/tcp/0", beats)
	listen := aggHost.Addrs()[0]

	node, err := libp2p.New(libp2p.NoListenAddrs)
	require.NoError(t, err)
	defer node.Close()
	type legacyHeartbeat struct { // go-filecoin 2019, field for field
		Head         string
		Height       uint64
		Nickname     string
		MinerAddress string
	}
	send := func(a *aggregator.Aggregator) {
		t.Helper()
		node.Peerstore().AddAddr(aggHost.ID(), listen, time.Hour)
		s, err := node.NewStream(t.Context(), aggHost.ID(), protocol.ID(heartbeat.ProtocolID))
		require.NoError(t, err)
		defer s.Close()
		enc := json.NewEncoder(s)
		for range 2 {
			require.NoError(t, enc.Encode(legacyHeartbeat{Head: "{ bafy2bzaceabc }", Height: 444, Nickname: "BobHoblaw", MinerAddress: "empty"}))
		}
		waitBeats(t, beats, []peer.ID{node.ID()}, 2)
		n, ok := a.Tracker().Node(node.ID())
		require.True(t, ok)
		require.Equal(t, tracker.Up, n.State)
		require.Equal(t, "{ bafy2bzaceabc }", n.Head)
		require.Equal(t, uint64(444), n.Height)
		require.Equal(t, "BobHoblaw", n.Nickname)
		require.Equal(t, uint8(1), n.Protocol)
	}
	send(agg)

	require.NoError(t, agg.Close())
	require.NoError(t, aggHost.Close())
	for len(beats) > 0 {
		<-beats
	}
	aggHost, agg = startKeyedAggregator(t, key, listen.String(), beats)
	defer aggHost.Close()
	defer agg.Close()
	send(agg)
}
