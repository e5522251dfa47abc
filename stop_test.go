package heartbeat_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/aggregator/metrics"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/transport"
)

// startOurAggregator runs our aggregator on a loopback libp2p host and
// returns it with the target multiaddr; both end with the test.
func startOurAggregator(t *testing.T) (*aggregator.Aggregator, string) {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	cfg := aggregator.Config{}
	opts, err := aggregator.HostOptions(cfg, nil)
	require.NoError(t, err)
	h, err := libp2p.New(append([]libp2p.Option{libp2p.Identity(key), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0")}, opts...)...)
	require.NoError(t, err)
	a, err := aggregator.New(h, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		require.NoError(t, a.Close())
		require.NoError(t, h.Close())
	})
	return a, h.Addrs()[0].String() + "/p2p/" + h.ID().String()
}

// streamsClosed reads heartbeat_streams_closed_total by its how label.
func streamsClosed(t *testing.T, a *aggregator.Aggregator) map[string]float64 {
	t.Helper()
	mfs, err := a.Registry().Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "heartbeat_streams_closed_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[label(m, "how")] = m.GetCounter().GetValue()
		}
	}
	return out
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// A clean stop arrives as an orderly end even when the host is closed right
// after it (issue 9, case 3: yamux queues the FIN and a host closed at once
// dropped it). 500 times: a fresh sender host beats once, then Close (or the
// end of its context), then the host is closed at once. The aggregator must
// count every stream closed by EOF, none reset, and see every node Left.
func TestCleanStopsArriveAsOrderlyEnds(t *testing.T) {
	noLeaks(t)
	stops := 500
	if testing.Short() {
		stops = 50
	}
	agg, target := startOurAggregator(t)
	sink := &logSink{}
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, JSONFormat: true, Output: sink})
	for i := range stops {
		stopOnce(t, target, i%2 == 0, log)
	}
	for _, l := range sink.lines(t) {
		require.NotContains(t, l.Message, "reset", "the sender saw the aggregator's orderly end every time: %v", l.Fields)
	}
	got := streamsClosed(t, agg)
	require.Equal(t, map[string]float64{metrics.ClosedEOF: float64(stops), metrics.ClosedReset: 0, metrics.ClosedError: 0}, got)
	sum := agg.Tracker().Summary()
	require.Equal(t, stops, sum.Nodes)
	require.Equal(t, stops, sum.ByState[tracker.Left], "every node Left, none Suspect or Down")
}

// stopOnce runs one sender on a fresh host until its first heartbeat went
// out, stops it with Close (or by cancelling its context) and closes the
// host at once.
func stopOnce(t *testing.T, target string, byClose bool, log hclog.Logger) {
	t.Helper()
	h, err := libp2p.New(libp2p.NoListenAddrs)
	require.NoError(t, err)
	defer func() { require.NoError(t, h.Close()) }()
	written := make(chan struct{}, 1)
	// One heartbeat an hour: the only write is the first, so none is in
	// flight at the stop (a stop during a write resets, by design).
	svc, err := heartbeat.New(h, heartbeat.Config{BeatTarget: target, BeatPeriod: "1h", Nickname: "stopper"},
		func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{Head: "{ h }", Height: 1}, nil },
		heartbeat.WithLogger(log),
		heartbeat.WithObserver(func(o heartbeat.Observation) {
			if o.Event.Kind == fsm.WriteSucceeded {
				select {
				case written <- struct{}{}:
				default:
				}
			}
		}))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- svc.Run(ctx) }()
	select {
	case <-written:
	case <-time.After(guard):
		t.Fatal("no heartbeat went out")
	}
	if byClose {
		require.NoError(t, svc.Close())
		require.NoError(t, <-runErr)
	} else {
		cancel()
		require.ErrorIs(t, <-runErr, context.Canceled)
	}
	require.Equal(t, fsm.Stopped, svc.Status().State)
}

// The clean stop waits for the aggregator to close its end in turn, and
// resets the stream once the close timeout passes (on the Service's clock)
// when it does not.
func TestCloseResetsWhenTheAggregatorDoesNotAnswer(t *testing.T) {
	noLeaks(t)
	h := newHarness(t, harnessConfig{opts: []heartbeat.Option{heartbeat.WithCloseTimeout(2 * time.Second)}})
	h.closeOnEOF = false
	h.startAggregator()
	h.run()
	h.advanceUntil(4 * time.Second)
	server := h.nextLine().stream
	closed := make(chan error, 1)
	go func() { closed <- h.svc.Close() }()
	// Armed: the Service's timer (the beat due at 6 s, not yet disarmed
	// while the stop is in progress) and the close timeout's, due first.
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	require.NoError(t, clockwork.WaitArmed(ctx, h.clk, 2))
	select {
	case <-closed:
		t.Fatal("Close returned before the close timeout")
	default:
	}
	at, ok := clockwork.AdvanceToNext(h.clk)
	require.True(t, ok)
	require.Equal(t, 5*time.Second, at.Sub(start), "the stop at 3 s plus the 2 s close timeout")
	require.NoError(t, <-closed)
	requireReset(t, server)
	require.Len(t, h.lines("INFO"), 1)
	require.Equal(t, "aggregator did not close the stream in turn, resetting it", h.lines("INFO")[0].Message)
}

func TestCloseTimeoutMustBePositive(t *testing.T) {
	_, err := heartbeat.New(nil, heartbeat.Config{BeatTarget: "/ip4/127.0.0.1/tcp/1/p2p/" + testPeerID(t, 1).String()},
		func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{}, nil },
		heartbeat.WithTransport(transport.NewNetwork().Dialer(testPeerID(t, 2))), heartbeat.WithCloseTimeout(0))
	require.ErrorContains(t, err, "WithCloseTimeout")
}

// requireReset asserts that the sender reset s: reading it fails with ErrReset.
func requireReset(t *testing.T, s *transport.ServerStream) {
	t.Helper()
	_, err := io.Copy(io.Discard, s)
	require.ErrorIs(t, err, transport.ErrReset)
}

// A stop that lands while a write is in flight lets the write end, for at
// most the close timeout; a write that does not end by then (a stalled
// aggregator) is freed by a reset of the stream.
func TestStopDuringAStalledWriteResetsAfterTheCloseTimeout(t *testing.T) {
	noLeaks(t)
	h := newHarness(t, harnessConfig{opts: []heartbeat.Option{heartbeat.WithCloseTimeout(2 * time.Second)}})
	h.startAggregator()
	h.run()
	h.advanceUntil(4 * time.Second) // beats at 0, 3
	server := h.nextLine().stream
	h.setFaults(transport.Faults{StallWrites: true})
	require.Equal(t, 6*time.Second, h.advance()) // this write stalls
	require.Equal(t, 1, h.net.Blocked())
	closed := make(chan error, 1)
	go func() { closed <- h.svc.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	// The Service's timer (the next beat, at 9 s) and the close timeout's.
	require.NoError(t, clockwork.WaitArmed(ctx, h.clk, 2))
	at, ok := clockwork.AdvanceToNext(h.clk)
	require.True(t, ok)
	require.Equal(t, 8*time.Second, at.Sub(start), "the stop at 6 s plus the 2 s close timeout")
	require.NoError(t, <-closed)
	require.Equal(t, 0, h.net.Blocked(), "the reset freed the stalled writer")
	requireReset(t, server)
	require.Equal(t, seconds(8), h.effectsAt(fsm.ResetStream))
}
