package heartbeat_test

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/internal/scenario"
	"github.com/p2pbeat/heartbeat/transport"
	"github.com/p2pbeat/heartbeat/wire"
	"github.com/p2pbeat/heartbeat/wire2"
)

// TestScenarios runs every scenario file (fsm/testdata/scenarios) on the
// Service: memory transport, mock clock, no jitter. The same files drive the
// pure machine in package fsm; `go test -rewrite` rewrites them.
//
// Beyond the shared output, this driver checks what only a Service has:
// every Log effect is one hclog line at its virtual time with the legacy
// message (full error text) and snake_case fields; the aggregator reads one
// heartbeat line per counted beat, with the node's head and nickname; a
// stream the sender closes reads to EOF and one it resets reads ErrReset;
// Close is idempotent and Run then returns nil.
func TestScenarios(t *testing.T) {
	scenario.RunAll(t, func(t *testing.T, rec *scenario.Recorder) scenario.Driver {
		noLeaks(t)
		return &serviceDriver{t: t, rec: rec, remoteEnded: map[uint64]bool{}}
	})
}

// serviceDriver carries out scenario commands on a harness, created at its
// first use so that config can come first.
type serviceDriver struct {
	t    *testing.T
	rec  *scenario.Recorder
	hc   harnessConfig
	h    *harness
	seen int // observations recorded so far

	logs     []loggedAt // Log effects, with their full errors
	logsSeen int        // of them, checked against hclog lines
	received int        // heartbeat lines the aggregator read

	adopted     []uint64        // attempts whose stream the Service adopted, in order
	remoteEnded map[uint64]bool // attempts whose stream the aggregator ended itself
}

type loggedAt struct {
	at  time.Duration
	rec fsm.LogRecord
}

func (d *serviceDriver) harness() *harness {
	if d.h == nil {
		d.h = newHarness(d.t, d.hc)
	}
	return d.h
}

func (d *serviceDriver) Configure(c scenario.Config) {
	require.Nil(d.t, d.h, "config comes first")
	d.hc.opts = append(d.hc.opts, heartbeat.WithTimeouts(c.DialTimeout, c.WriteTimeout))
	d.hc.cfg.BeatPeriod = c.BeatPeriod.String()
}

func (d *serviceDriver) Run() {
	d.harness().run()
	d.sync()
}

func (d *serviceDriver) Aggregator(a scenario.Aggregator) {
	h := d.harness()
	switch {
	case !a.Up:
		h.stopAggregator()
	case h.listener != nil:
		h.setMode(a) // up already: answer differently from now on
	default:
		h.startAggregatorWith(a)
	}
}

func (d *serviceDriver) Faults(f scenario.Faults) {
	h := d.harness()
	h.setFaults(transport.Faults{HangDials: f.HangDials, StallWrites: f.StallWrites, WriteErr: f.WriteErr})
}

func (d *serviceDriver) Advance() bool {
	if _, ok := d.NextDeadline(); !ok {
		return false
	}
	d.h.advance()
	d.sync()
	return true
}

func (d *serviceDriver) NextDeadline() (time.Duration, bool) {
	at, ok := clockwork.NextDeadline(d.harness().clk)
	return at.Sub(start), ok
}

func (d *serviceDriver) Now() time.Duration { return d.harness().now() }

func (d *serviceDriver) RemoteEnd(reset bool) {
	h := d.harness()
	st := h.svc.Status()
	require.Equal(d.t, fsm.Beating, st.State, "no open stream to end")
	s := d.stream(st.Attempt)
	d.remoteEnded[st.Attempt] = true
	mark := len(h.observations())
	if reset {
		require.NoError(d.t, s.Reset())
		h.waitFor(mark, fsm.RemoteReset)
	} else {
		require.NoError(d.t, s.Close())
		h.waitFor(mark, fsm.RemoteClosed)
	}
	h.settle()
	d.sync()
}

// current is the aggregator's side of the open stream.
func (d *serviceDriver) current() (uint64, *srvStream) {
	h := d.harness()
	st := h.svc.Status()
	require.Equal(d.t, fsm.Beating, st.State, "no open stream")
	return st.Attempt, h.srvStreamOf(d.stream(st.Attempt))
}

func (d *serviceDriver) Ack(seq uint64) {
	h := d.harness()
	_, ss := d.current()
	var acks []wire2.Ack
	h.aggMu.Lock()
	if seq == 0 {
		acks, ss.unacked = ss.unacked, nil
	} else {
		acks = []wire2.Ack{{Seq: seq, Time: h.clk.Now().Add(h.mode.Skew).UnixNano()}}
	}
	h.aggMu.Unlock()
	for i := range acks {
		h.writeFrame(ss, &acks[i])
	}
	h.settle()
	d.sync()
}

func (d *serviceDriver) Pass(dur time.Duration) {
	h := d.harness()
	clockwork.AdvanceTo(h.clk, h.clk.Now().Add(dur))
	h.settle()
	d.sync()
}

func (d *serviceDriver) GoAway(after time.Duration, reason string) {
	h := d.harness()
	a, ss := d.current()
	d.remoteEnded[a] = true
	mark := len(h.observations())
	h.writeFrame(ss, &wire2.GoAway{RetryAfter: after, Reason: reason})
	require.NoError(d.t, ss.s.Close(), "the aggregator closes after its GoAway")
	h.waitFor(mark, fsm.GoAwayReceived)
	h.settle()
	d.sync()
}

// BadFrame sends a Hello, which only a sender may send.
func (d *serviceDriver) BadFrame() {
	h := d.harness()
	a, ss := d.current()
	d.remoteEnded[a] = true // reset by the sender on it; not an end to check
	mark := len(h.observations())
	h.writeFrame(ss, &wire2.Hello{BootID: wire2.BootID{1}, BeatPeriod: time.Second})
	h.waitFor(mark, fsm.BadFrame)
	h.settle()
	d.sync()
}

func (d *serviceDriver) Close() {
	h := d.harness()
	require.NoError(d.t, h.svc.Close())
	require.NoError(d.t, h.svc.Close(), "Close is idempotent")
	if h.cancel != nil {
		select {
		case err := <-h.runErr:
			require.NoError(d.t, err, "Run returns nil after Close")
		case <-time.After(guard):
			d.t.Fatal("Run did not return after Close")
		}
		h.cancel = nil
	}
	d.sync()
}

func (d *serviceDriver) Status() scenario.Status {
	h := d.harness()
	st := h.svc.Status()
	out := scenario.Status{
		State: st.State, Attempt: st.Attempt, Beats: st.BeatsSent, Failures: st.Failures,
		NextRetry: st.NextRetry.Sub(start), RetryArmed: !st.NextRetry.IsZero(), LastError: st.LastError,
		Parked: h.net.Blocked() - h.liveReaders(),
	}
	if st.Protocol == heartbeat.ProtocolIDV2 {
		out.Protocol, out.Seq, out.Acks, out.BeatPeriod = fsm.V2, st.Seq, st.Acks, st.StreamBeatPeriod
		out.RTT, out.SRTT, out.Skew, out.HasRTT = st.RTT, st.SmoothedRTT, st.ClockSkew, st.Acks > 0
	}
	return out
}

// sync records the observations made since the last sync and checks what
// only the Service shows: log lines, lines received, how streams ended.
func (d *serviceDriver) sync() {
	d.t.Helper()
	obs := d.h.observations()
	for _, o := range obs[d.seen:] {
		at := o.At.Sub(start)
		d.rec.Effects(at, o.Effects)
		if o.Event.Kind == fsm.DialSucceeded && o.From == fsm.Connecting && o.To == fsm.Beating {
			d.adopted = append(d.adopted, o.Event.Attempt)
		}
		for _, e := range o.Effects {
			switch e.Kind {
			case fsm.Log:
				d.logs = append(d.logs, loggedAt{at, e.Log})
			case fsm.ResetStream, fsm.CloseStream:
				d.checkEnd(e)
			}
		}
	}
	d.seen = len(obs)
	d.checkLogs()
	d.checkReceived()
}

// checkLogs matches every new Log effect with the next hclog line of the
// state machine (the DEBUG "state changed" lines mirror Transitioned).
func (d *serviceDriver) checkLogs() {
	d.t.Helper()
	var lines []logLine
	for _, l := range d.h.sink.lines(d.t) {
		if l.Message != "state changed" {
			lines = append(lines, l)
		}
	}
	require.Len(d.t, lines, len(d.logs), "one hclog line per Log effect")
	for ; d.logsSeen < len(d.logs); d.logsSeen++ {
		want, got := d.logs[d.logsSeen], lines[d.logsSeen]
		r := want.rec
		require.Equal(d.t, want.at, got.At, "%s", got.Message)
		require.Equal(d.t, r.Level.String(), got.Level)
		require.Equal(d.t, r.Message(), got.Message)
		require.EqualValues(d.t, r.Attempt, got.Fields["attempt"])
		if r.Kind == fsm.LogConnectFailed || r.Kind == fsm.LogConnected {
			require.EqualValues(d.t, r.Outage.Seconds(), got.Fields["outage"], "the outage in seconds, a number")
			require.EqualValues(d.t, r.Failures, got.Fields["failures"])
		}
		if r.Kind == fsm.LogRemoteReset {
			// Only the remote command resets a stream the sender still uses.
			require.Equal(d.t, "aggregator_reset", got.Fields["cause"], "the memory transport reports who reset, as yamux does")
		}
		if r.Err != nil {
			require.Equal(d.t, strings.Join(strings.Fields(r.Err.Error()), " "), got.Fields["error"], "the error on one line")
		} else {
			require.NotContains(d.t, got.Fields, "error")
		}
	}
}

// checkReceived waits until the aggregator read one line per counted beat,
// each the node's heartbeat.
func (d *serviceDriver) checkReceived() {
	d.t.Helper()
	want := wire.Heartbeat{Head: "{ bafy2bzaceabc }", Height: 444, Nickname: "BobHoblaw"}
	for beats := int(d.h.svc.Status().BeatsSent); d.received < beats; d.received++ {
		require.Equal(d.t, want, d.h.nextLine().hb)
	}
}

// checkEnd checks that the aggregator's side of the stream the sender just
// closed reads to EOF, and of one it reset reads ErrReset. Streams the
// aggregator ended itself, and late ones never adopted, are not checked.
func (d *serviceDriver) checkEnd(e fsm.Effect) {
	d.t.Helper()
	if d.remoteEnded[e.Attempt] || !adopted(d.adopted, e.Attempt) {
		return
	}
	s := d.stream(e.Attempt)
	err := d.end(s)
	if e.Kind == fsm.CloseStream {
		require.ErrorIs(d.t, err, io.EOF, "attempt %d's stream ends in order", e.Attempt)
		if ss := d.h.srvStreamOf(s); ss.v2 {
			d.h.aggMu.Lock()
			bye := ss.bye
			d.h.aggMu.Unlock()
			require.Equal(d.t, e.Bye, bye, "attempt %d: a Bye before the end of a clean stop, only then", e.Attempt)
		}
	} else {
		require.ErrorIs(d.t, err, transport.ErrReset, "attempt %d's stream is reset", e.Attempt)
	}
}

func adopted(attempts []uint64, a uint64) bool {
	for _, x := range attempts {
		if x == a {
			return true
		}
	}
	return false
}

// stream is the aggregator's side of attempt's stream: adopted streams
// were accepted in the order they were adopted.
func (d *serviceDriver) stream(attempt uint64) *transport.ServerStream {
	d.t.Helper()
	k := -1
	for i, a := range d.adopted {
		if a == attempt {
			k = i
		}
	}
	require.GreaterOrEqual(d.t, k, 0, "attempt %d has no stream", attempt)
	return d.h.acceptedStream(k).s
}

// end waits until the aggregator's reader of s ended, and returns why.
func (d *serviceDriver) end(s *transport.ServerStream) error {
	d.t.Helper()
	return d.h.streamEnd(d.h.srvStreamOf(s))
}
