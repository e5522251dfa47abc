package heartbeat_test

import (
	"encoding/json"
	"fmt"
	"strings"
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
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/wire"
)

// legacyReceiver is an aggregator as the 2018 one was written: a stream
// handler that decodes JSON with a json.Decoder until the stream ends.
type legacyReceiver struct {
	host  host.Host
	beats chan wire.Heartbeat
}

func startLegacyReceiver(t *testing.T, key crypto.PrivKey, listen string) *legacyReceiver {
	t.Helper()
	h, err := libp2p.New(libp2p.Identity(key), libp2p.ListenAddrStrings(listen))
	require.NoError(t, err)
	r := &legacyReceiver{host: h, beats: make(chan wire.Heartbeat, 128)}
	h.SetStreamHandler(protocol.ID(heartbeat.ProtocolID), func(s network.Stream) {
		defer s.Close()
		dec := json.NewDecoder(s)
		for {
			var hb wire.Heartbeat
			if err := dec.Decode(&hb); err != nil {
				_ = s.Reset()
				return
			}
			select {
			case r.beats <- hb:
			default: // the test stopped listening; drop
			}
		}
	})
	return r
}

func (r *legacyReceiver) target(t *testing.T) string {
	t.Helper()
	addrs := r.host.Addrs()
	require.NotEmpty(t, addrs)
	return addrs[0].String() + "/p2p/" + r.host.ID().String()
}

func (r *legacyReceiver) next(t *testing.T) wire.Heartbeat {
	t.Helper()
	select {
	case hb := <-r.beats:
		return hb
	case <-time.After(guard):
		t.Fatal("the legacy receiver got no heartbeat")
		return wire.Heartbeat{}
	}
}

// End to end over real libp2p hosts on loopback: our sender, a receiver
// written the way the legacy aggregator was, and a restart of that receiver
// with the same key and address, which the sender must reconnect to.
func TestEndToEndWithLegacyReceiver(t *testing.T) {
	noLeaks(t)
	key, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	recv := startLegacyReceiver(t, key, "/ip4/127.0.0.1/tcp/0")
	target := recv.target(t)

	node, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	require.NoError(t, err)
	defer node.Close()

	states := make(chan fsm.State, 1024)
	svc, err := heartbeat.New(node, heartbeat.Config{
		BeatTarget:      target,
		BeatPeriod:      "50ms",
		ReconnectPeriod: "100ms",
		Nickname:        "BobHoblaw",
	}, func() (heartbeat.ChainHead, error) {
		return heartbeat.ChainHead{Head: "{ bafy2bzaceabc bafy2bzacedef }", Height: 444}, nil
	},
		heartbeat.WithMinerAddress(func() string { return "t01234" }),
		heartbeat.WithObserver(func(o heartbeat.Observation) {
			if o.From != o.To {
				select {
				case states <- o.To:
				default:
				}
			}
		}),
	)
	require.NoError(t, err)
	require.NoError(t, svc.Start(t.Context()))
	defer func() { require.NoError(t, svc.Close()) }()

	for range 3 {
		hb := recv.next(t)
		require.Equal(t, wire.Heartbeat{Head: "{ bafy2bzaceabc bafy2bzacedef }", Height: 444, Nickname: "BobHoblaw", MinerAddress: "t01234"}, hb)
	}

	// Restart the receiver with the same identity on the same address.
	listen := recv.host.Addrs()[0].String()
	require.NoError(t, recv.host.Close())
	waitState(t, states, fsm.Backoff)
	recv2 := startLegacyReceiver(t, key, listen)
	defer recv2.host.Close()
	waitState(t, states, fsm.Beating)
	require.Equal(t, "BobHoblaw", recv2.next(t).Nickname)
	require.GreaterOrEqual(t, svc.Status().Attempt, uint64(2))
}

func waitState(t *testing.T, states <-chan fsm.State, want fsm.State) {
	t.Helper()
	deadline := time.After(guard)
	for {
		select {
		case s := <-states:
			if s == want {
				return
			}
		case <-deadline:
			t.Fatalf("the sender never reached %s", want)
		}
	}
}

// End to end with our own aggregator: senders on real libp2p hosts appear
// Up with their fields; the aggregator restarts with the same key and
// address, and every sender reconnects and is Up again.
//
// The aggregator runs on an injected clock that the test never advances:
// what is checked is the path of a heartbeat (stream, line, tracker fields),
// not silence detection, which real time on a loaded machine would turn
// into a race between 50 ms beats and the sweeper (a node seen Suspect
// between two beats). Silence detection is tested on the injected clock in
// package aggregator and over virtual time in package sim.
func TestEndToEndWithOurAggregator(t *testing.T) {
	noLeaks(t)
	key, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	beats := make(beatLog, 4096)
	startAgg := func(listen string) (host.Host, *aggregator.Aggregator) {
		cfg := aggregator.Config{ExpectedPeriod: 50 * time.Millisecond}
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
	aggHost, agg := startAgg("/ip4/127.0.0.1/tcp/0")
	listen := aggHost.Addrs()[0].String()
	target := listen + "/p2p/" + aggHost.ID().String()

	const n = 3
	states := make(chan fsm.State, 1024)
	var ids []peer.ID
	for i := range n {
		node, err := libp2p.New(libp2p.NoListenAddrs)
		require.NoError(t, err)
		defer node.Close()
		ids = append(ids, node.ID())
		svc, err := heartbeat.New(node, heartbeat.Config{
			BeatTarget: target, BeatPeriod: "50ms", ReconnectPeriod: "100ms", Nickname: fmt.Sprintf("n%d", i),
		}, func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{Head: "{ h }", Height: 7}, nil },
			heartbeat.WithObserver(func(o heartbeat.Observation) {
				if o.From != o.To && o.To == fsm.Beating {
					states <- o.To
				}
			}))
		require.NoError(t, err)
		require.NoError(t, svc.Start(t.Context()))
		defer func() { require.NoError(t, svc.Close()) }()
	}
	waitUp := func(a *aggregator.Aggregator) {
		t.Helper()
		for range n {
			waitState(t, states, fsm.Beating)
		}
		waitBeats(t, beats, ids, 2)
		for _, id := range ids {
			node, ok := a.Tracker().Node(id)
			require.True(t, ok)
			require.Equal(t, tracker.Up, node.State)
			require.Equal(t, "{ h }", node.Head)
			require.Equal(t, uint64(7), node.Height)
		}
		require.Equal(t, n, a.Tracker().Summary().InConsensus)
	}
	waitUp(agg)

	require.NoError(t, agg.Close())
	require.NoError(t, aggHost.Close())
	for len(beats) > 0 { // beats logged before the restart do not count after it
		<-beats
	}
	aggHost, agg = startAgg(listen)
	defer aggHost.Close()
	defer agg.Close()
	waitUp(agg)
}

// beatLog is an hclog output that reports each per-heartbeat log line of
// the aggregator (WithBeatLog), logged after the tracker counted the beat.
type beatLog chan string

func (b beatLog) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["@message"] == "heartbeat" {
			b <- fmt.Sprint(m["peer_id"])
		}
	}
	return len(p), nil
}

// waitBeats waits until the aggregator logged want heartbeats from each of ids.
func waitBeats(t *testing.T, beats beatLog, ids []peer.ID, want int) {
	t.Helper()
	seen := map[string]int{}
	deadline := time.After(guard)
	for {
		done := true
		for _, id := range ids {
			done = done && seen[id.String()] >= want
		}
		if done {
			return
		}
		select {
		case id := <-beats:
			seen[id]++
		case <-deadline:
			t.Fatalf("the aggregator did not log %d beats from each sender: %v", want, seen)
		}
	}
}
