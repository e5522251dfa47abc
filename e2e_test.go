package heartbeat_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat"
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
