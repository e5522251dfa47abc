package heartbeat_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/fsm"
)

// jsonLines hands every hclog JSON line to the test.
type jsonLines chan map[string]any

func (c jsonLines) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			select {
			case c <- m:
			default:
			}
		}
	}
	return len(p), nil
}

func (c jsonLines) waitMessage(t *testing.T, msg string) map[string]any {
	t.Helper()
	deadline := time.After(guard)
	for {
		select {
		case m := <-c:
			if m["@message"] == msg {
				return m
			}
		case <-deadline:
			t.Fatalf("no log line %q", msg)
		}
	}
}

// A connection lost under the stream (here closed by the node's own host,
// as a keepalive timeout or a network reset closes it) is logged as what
// it is, not as a reset by the aggregator; every line names the node and
// the aggregator.
func TestLostConnectionIsNotBlamedOnTheAggregator(t *testing.T) {
	noLeaks(t)
	key, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	recv := startLegacyReceiver(t, key, "/ip4/127.0.0.1/tcp/0")
	defer recv.host.Close()
	node, err := libp2p.New(libp2p.NoListenAddrs)
	require.NoError(t, err)
	defer node.Close()

	lines := make(jsonLines, 1024)
	states := make(chan fsm.State, 1024)
	svc, err := heartbeat.New(node, heartbeat.Config{
		BeatTarget: recv.target(t), BeatPeriod: "50ms", ReconnectPeriod: "100ms", Nickname: "n1",
	}, func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{Head: "h", Height: 1}, nil },
		heartbeat.WithLogger(hclog.New(&hclog.LoggerOptions{JSONFormat: true, Output: lines, Level: hclog.Info})),
		heartbeat.WithObserver(func(o heartbeat.Observation) {
			if o.From != o.To {
				states <- o.To
			}
		}),
	)
	require.NoError(t, err)
	require.NoError(t, svc.Start(t.Context()))
	defer func() { require.NoError(t, svc.Close()) }()
	waitState(t, states, fsm.Beating)
	recv.next(t)
	recv.next(t) // the second beat: the stream is proven, so its loss is a lost stream, not a refusal

	require.NoError(t, node.Network().ClosePeer(recv.host.ID()))
	m := lines.waitMessage(t, "heartbeat stream reset")
	require.Equal(t, "connection_lost", m["cause"], m)
	require.Equal(t, "n1", m["nickname"])
	require.Equal(t, node.ID().String(), m["peer_id"])
	require.Equal(t, recv.host.ID().String(), m["target"])
	require.NotContains(t, m["error"], "\n")
}
