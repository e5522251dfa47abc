package cli

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/aggregator/metrics"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
)

// beatLines is an hclog output that signals each heartbeat the aggregator
// logged (WithBeatLog): it logs one after the tracker counted it.
type beatLines chan struct{}

func (b beatLines) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["@message"] == "heartbeat" {
			b <- struct{}{}
		}
	}
	return len(p), nil
}

// beatAggregator starts an aggregator on loopback that logs every
// heartbeat into beats (buffered for n), and returns its target multiaddr;
// the test's cleanup closes it.
func beatAggregator(t *testing.T, n int) (*aggregator.Aggregator, string, beatLines) {
	t.Helper()
	beats := make(beatLines, n)
	cfg := aggregator.Config{}
	opts, err := aggregator.HostOptions(cfg, nil)
	require.NoError(t, err)
	h, err := libp2p.New(append([]libp2p.Option{libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0")}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { h.Close() })
	log := hclog.New(&hclog.LoggerOptions{JSONFormat: true, Output: beats, Level: hclog.Info})
	agg, err := aggregator.New(h, cfg, aggregator.WithLogger(log), aggregator.WithBeatLog(true))
	require.NoError(t, err)
	t.Cleanup(func() { agg.Close() })
	return agg, h.Addrs()[0].String() + "/p2p/" + h.ID().String(), beats
}

// `heartbeat beat` stopped by its context (SIGINT/SIGTERM) right after its
// first heartbeat ends in order every time, although it closes its libp2p
// host at once on return (issue 9, case 3): the aggregator counts every
// stream closed by EOF, none reset, and sees every node Left.
func TestBeatStopsArriveAsOrderlyEnds(t *testing.T) {
	stops := 40
	if testing.Short() {
		stops = 10
	}
	agg, target, beats := beatAggregator(t, stops)

	for range stops {
		ctx, cancel := context.WithCancel(context.Background())
		code := make(chan int, 1)
		go func() {
			code <- Main(ctx, []string{"beat", "--target", target, "--beat-period", "1h", "--log-level", "error"}, io.Discard, io.Discard)
		}()
		select {
		case <-beats:
		case <-time.After(30 * time.Second):
			cancel()
			t.Fatal("the aggregator logged no heartbeat")
		}
		cancel()
		require.Equal(t, 0, <-code)
	}
	mfs, err := agg.Registry().Gather()
	require.NoError(t, err)
	closed := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "heartbeat_streams_closed_total" {
			for _, m := range mf.GetMetric() {
				closed[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	require.Equal(t, float64(stops), closed[metrics.ClosedEOF], "%v", closed)
	require.Zero(t, closed[metrics.ClosedReset], "%v", closed)
	require.Equal(t, stops, agg.Tracker().Summary().ByState[tracker.Left])
}

// `heartbeat beat --protocol` picks what the sender offers: auto (the
// default) and v2 get protocol v2 from our aggregator, which serves both,
// and v1 the 2019 lines; the aggregator's view of the node says which.
func TestBeatProtocolFlag(t *testing.T) {
	agg, target, beats := beatAggregator(t, 1)

	for _, tc := range []struct {
		args []string
		want uint8
	}{
		{nil, 2},
		{[]string{"--protocol", "auto"}, 2},
		{[]string{"--protocol", "v2"}, 2},
		{[]string{"--protocol", "v1"}, 1},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		code := make(chan int, 1)
		nick := strings.Join(append([]string{"p"}, tc.args...), "")
		args := append([]string{"beat", "--target", target, "--nickname", nick, "--beat-period", "1h", "--log-level", "error"}, tc.args...)
		go func() { code <- Main(ctx, args, io.Discard, io.Discard) }()
		select {
		case <-beats:
		case <-time.After(30 * time.Second):
			cancel()
			t.Fatal("the aggregator logged no heartbeat")
		}
		cancel()
		require.Equal(t, 0, <-code)
		var got *tracker.Node
		for _, n := range agg.Tracker().Nodes(nil) {
			if n.Nickname == nick {
				got = &n
			}
		}
		require.NotNil(t, got, "%v", tc.args)
		require.Equal(t, tc.want, got.Protocol, "%v", tc.args)
	}
}
