package heartbeat_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/transport"
)

// A sender refused after its stream opened (the aggregator resets it on the
// first line: too_many_nodes, not_allowed) follows the legacy log policy:
// WARN once, DEBUG, ERROR strictly more than ErrorEvery after the last, a
// ReconnectPeriod apart, and never INFO "connected" nor WARN "reset" per
// attempt. Once accepted, the stream is proven a beat later: one INFO.
func TestRefusedSenderFollowsTheLogPolicy(t *testing.T) {
	h := newHarness(t, harnessConfig{opts: []heartbeat.Option{heartbeat.WithErrorEvery(2 * time.Minute)}})
	h.startAggregator()
	h.run()
	const refusals = 55
	for i := range refusals {
		r := h.nextLine()
		mark := len(h.observations())
		require.NoError(t, r.stream.Reset())
		h.waitFor(mark, fsm.RemoteReset)
		h.settle()
		require.Equal(t, fsm.Backoff, h.svc.Status().State)
		require.Equal(t, time.Duration(i*10)*time.Second, h.now())
		require.Equal(t, time.Duration(i*10+10)*time.Second, h.advance(), "a ReconnectPeriod, never a rejoin")
	}
	h.advanceUntil(time.Duration(refusals*10+4) * time.Second)

	require.Equal(t, every(0, refusals*10, 10), h.effectsAt(fsm.Dial))
	require.Equal(t, seconds(0), h.logsAt("WARN"))
	require.Equal(t, seconds(130, 260, 390, 520), h.logsAt("ERROR"))
	require.Equal(t, seconds(refusals*10+3), h.logsAt("INFO"))
	warn := h.lines("WARN")[0]
	require.Equal(t, "Heartbeat service failed to connect", warn.Message)
	require.EqualValues(t, 0, warn.Fields["outage"])
	require.Contains(t, warn.Fields["error"], "stream ended before its first heartbeat was acknowledged: ")
	require.Contains(t, warn.Fields["error"], "reset")
	info := h.lines("INFO")[0]
	require.Equal(t, "Heartbeat service connected to aggregator", info.Message)
	require.EqualValues(t, refusals, info.Fields["failures"])
	debug := 0
	for _, l := range h.lines("DEBUG") {
		if strings.HasPrefix(l.Message, "Heartbeat service failed to connect") {
			debug++
		}
	}
	require.Equal(t, refusals-1-4, debug)
}

// The other ways a stream can fail before its first beat survived are
// failed attempts too: a failed first write, a stalled one.
func TestUnprovenStreamEndsAreFailedAttempts(t *testing.T) {
	cases := map[string]struct {
		opts   []heartbeat.Option
		faults transport.Faults
		end    func(h *harness) // ends the first stream, returns at once
		event  fsm.EventKind
		at     time.Duration
	}{
		"write fails": {faults: transport.Faults{WriteErr: errBoom}, event: fsm.WriteFailed},
		"write stalls": {opts: []heartbeat.Option{heartbeat.WithTimeouts(10*time.Second, 2*time.Second)},
			faults: transport.Faults{StallWrites: true}, event: fsm.WriteTimedOut, at: 2 * time.Second},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, harnessConfig{opts: tc.opts})
			h.startAggregator()
			h.setFaults(tc.faults)
			h.run()
			if tc.end != nil {
				mark := len(h.observations())
				tc.end(h)
				h.waitFor(mark, tc.event)
				h.settle()
			} else if tc.at > 0 {
				// The write's deadline is armed when the dial's result is
				// handled: wait for it, or the clock may run to the dial's.
				h.waitFor(0, fsm.DialSucceeded)
				h.settle()
				require.Equal(t, tc.at, h.advance())
			}
			h.waitFor(0, tc.event)
			require.Equal(t, fsm.Backoff, h.svc.Status().State)
			require.Equal(t, start.Add(tc.at+10*time.Second), h.svc.Status().NextRetry)
			require.ErrorIs(t, h.svc.Status().LastError, fsm.ErrRefused)
			require.Equal(t, []time.Duration{tc.at}, h.logsAt("WARN"))
			warn := h.lines("WARN")[0]
			require.Equal(t, "Heartbeat service failed to connect", warn.Message)
			require.Contains(t, warn.Fields["error"], "stream ended before its first heartbeat was acknowledged")
			h.setFaults(transport.Faults{})
		})
	}
}

// An orderly close before the first beat survived is not a refusal (our
// aggregator ends streams in order when it shuts down): INFO, no failure
// counted, and the next attempt a ReconnectPeriod later, not a rejoin, so an
// aggregator that ends every new stream in order is not redialled at once.
func TestOrderlyCloseOfAnUnprovenStream(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	h.startAggregator()
	h.run()
	mark := len(h.observations())
	require.NoError(t, h.nextLine().stream.Close())
	h.waitFor(mark, fsm.RemoteClosed)
	h.settle()
	st := h.svc.Status()
	require.Equal(t, fsm.Backoff, st.State)
	require.Equal(t, start.Add(10*time.Second), st.NextRetry)
	require.Zero(t, st.Failures)
	require.NoError(t, st.LastError)
	require.Empty(t, h.lines("WARN"))
	require.Equal(t, "aggregator closed the heartbeat stream", h.lines("INFO")[0].Message)
}

// lines are the Service's log lines at level.
func (h *harness) lines(level string) []logLine {
	var out []logLine
	for _, l := range h.sink.lines(h.t) {
		if l.Level == level {
			out = append(out, l)
		}
	}
	return out
}

// effectsAt lists, with their virtual times, the effects of kind k the
// Service carried out.
func (h *harness) effectsAt(k fsm.EffectKind) []time.Duration {
	var out []time.Duration
	for _, o := range h.observations() {
		for _, e := range o.Effects {
			if e.Kind == k {
				out = append(out, o.At.Sub(start))
			}
		}
	}
	return out
}

func (h *harness) logsAt(level string) []time.Duration {
	var out []time.Duration
	for _, l := range h.lines(level) {
		out = append(out, l.At)
	}
	return out
}

var errBoom = errors.New("boom")
