package fsm_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/internal/scenario"
)

// start is an arbitrary virtual start; the machine never reads a clock.
var start = time.Date(2019, 6, 1, 12, 0, 0, 0, time.UTC)

// The causes the memory transport fails with, which the Service's driver
// sees under the transport's wrapping (see scenario.RootCause).
var (
	errRefused  = errors.New("connection refused")
	errReset    = errors.New("stream reset")
	errCanceled = errors.New("context canceled")
	// errUnexpected is the cause the Service's reader gives a frame only a
	// sender sends (heartbeat.ErrUnexpectedFrame).
	errUnexpected = errors.New("heartbeat v2 frame that an aggregator does not send")
)

// world is the pure driver of the scenarios: a synchronous shell around one
// fsm.Machine. Results come back at the instant their effect is carried
// out, and time jumps from deadline to deadline, as the Service does on the
// memory network and a mock clock.
type world struct {
	t      *testing.T
	rec    *scenario.Recorder
	m      *fsm.Machine
	now    time.Time
	queue  []fsm.Event
	agg    scenario.Aggregator
	faults scenario.Faults
	// v2: the attempt whose Hello the aggregator read (it answers the
	// first Beat of a stream with a Welcome first), and the Beats it read
	// and has not acked yet (acks=manual).
	welcomed uint64
	unacked  []readBeat
	dials    []time.Time
	// The attempts whose dial or write a fault parked (0: none), released
	// as the memory network releases them: a cancelled dial, a reset or
	// closed stream.
	parkedDial, parkedWrite uint64
}

// readBeat is a v2 Beat the aggregator read, at its read time.
type readBeat struct {
	attempt, seq uint64
	at           time.Time
}

func newWorld(t *testing.T, rec *scenario.Recorder, c fsm.Config) *world {
	m, err := fsm.New(c)
	require.NoError(t, err)
	return &world{t: t, rec: rec, m: m, now: start}
}

// TestScenarios runs every scenario file on the pure machine, with the
// legacy timing and no jitter, as the Service's driver runs them.
func TestScenarios(t *testing.T) {
	scenario.RunAll(t, func(t *testing.T, rec *scenario.Recorder) scenario.Driver {
		c := fsm.DefaultConfig()
		c.Backoff.Jitter = 0
		return newWorld(t, rec, c)
	})
}

func (w *world) step(ev fsm.Event) {
	w.t.Helper()
	effs, err := w.m.Step(w.now, ev)
	require.NoError(w.t, err, "step %s in %s", ev.Kind, w.m.State())
	fsm.RecordRow(w.m.LastRow())
	w.rec.Effects(w.now.Sub(start), effs)
	for _, e := range effs {
		switch e.Kind {
		case fsm.Dial:
			w.dials = append(w.dials, w.now)
			switch {
			case w.faults.HangDials:
				w.parkedDial = e.Attempt
			case !w.agg.Up:
				w.queue = append(w.queue, fsm.Event{Kind: fsm.DialFailed, Attempt: e.Attempt, Err: errRefused})
			default:
				proto := fsm.V1
				if w.agg.V2 {
					proto = fsm.V2
				}
				w.queue = append(w.queue, fsm.Event{Kind: fsm.DialSucceeded, Attempt: e.Attempt, Protocol: proto})
			}
		case fsm.Send:
			switch {
			case w.faults.WriteErr != nil:
				w.queue = append(w.queue, fsm.Event{Kind: fsm.WriteFailed, Attempt: e.Attempt, Err: w.faults.WriteErr})
			case w.faults.StallWrites:
				w.parkedWrite = e.Attempt
			default:
				w.queue = append(w.queue, fsm.Event{Kind: fsm.WriteSucceeded, Attempt: e.Attempt})
				if e.Seq != 0 {
					w.read(e)
				}
			}
		case fsm.CancelDial:
			if w.parkedDial == e.Attempt {
				// The cancelled dial fails, as a cancelled context fails it.
				w.parkedDial = 0
				w.queue = append(w.queue, fsm.Event{Kind: fsm.DialFailed, Attempt: e.Attempt, Err: errCanceled})
			}
		case fsm.ResetStream, fsm.CloseStream:
			if w.parkedWrite == e.Attempt {
				w.parkedWrite = 0
				w.queue = append(w.queue, fsm.Event{Kind: fsm.WriteFailed, Attempt: e.Attempt, Err: errReset})
			}
			w.unacked = slices.DeleteFunc(w.unacked, func(b readBeat) bool { return b.attempt == e.Attempt })
		}
	}
}

// read is the v2 aggregator reading the Beat e (after the Hello, on the
// stream's first write) and answering as it is told.
func (w *world) read(e fsm.Effect) {
	if w.agg.Hung {
		return
	}
	if w.welcomed != e.Attempt {
		w.welcomed = e.Attempt
		w.queue = append(w.queue, fsm.Event{Kind: fsm.WelcomeReceived, Attempt: e.Attempt, BeatPeriod: w.agg.Period})
	}
	switch w.agg.Acks {
	case scenario.AcksAuto:
		w.queue = append(w.queue, fsm.Event{Kind: fsm.AckReceived, Attempt: e.Attempt, Seq: e.Seq, RemoteTime: w.now.Add(w.agg.Skew)})
	case scenario.AcksManual:
		w.unacked = append(w.unacked, readBeat{e.Attempt, e.Seq, w.now})
	}
}

// drain handles the queued results.
func (w *world) drain() {
	for len(w.queue) > 0 {
		ev := w.queue[0]
		w.queue = w.queue[1:]
		w.step(ev)
	}
}

func (w *world) Configure(sc scenario.Config) {
	require.Zero(w.t, w.m.Attempt(), "config comes first")
	c := fsm.DefaultConfig()
	c.Backoff.Jitter = 0
	c.DialTimeout, c.WriteTimeout, c.BeatPeriod = sc.DialTimeout, sc.WriteTimeout, sc.BeatPeriod
	*w = *newWorld(w.t, w.rec, c)
}

func (w *world) Run() {
	w.step(fsm.Event{Kind: fsm.Start})
	w.drain()
}

func (w *world) Aggregator(a scenario.Aggregator) { w.agg = a }
func (w *world) Faults(f scenario.Faults)         { w.faults = f }

func (w *world) Ack(seq uint64) {
	if seq != 0 {
		w.step(fsm.Event{Kind: fsm.AckReceived, Attempt: w.m.Attempt(), Seq: seq, RemoteTime: w.now.Add(w.agg.Skew)})
	} else {
		acks := w.unacked
		w.unacked = nil
		for _, b := range acks {
			w.step(fsm.Event{Kind: fsm.AckReceived, Attempt: b.attempt, Seq: b.seq, RemoteTime: b.at.Add(w.agg.Skew)})
		}
	}
	w.drain()
}

func (w *world) Pass(d time.Duration) { w.now = w.now.Add(d) }

func (w *world) GoAway(after time.Duration, reason string) {
	require.Equal(w.t, fsm.Beating, w.m.State(), "no open stream")
	a := w.m.Attempt()
	w.step(fsm.Event{Kind: fsm.GoAwayReceived, Attempt: a, RetryAfter: after, Reason: reason})
	// The aggregator closes the stream after its GoAway.
	w.step(fsm.Event{Kind: fsm.RemoteClosed, Attempt: a})
	w.drain()
}

func (w *world) BadFrame() {
	require.Equal(w.t, fsm.Beating, w.m.State(), "no open stream")
	w.step(fsm.Event{Kind: fsm.BadFrame, Attempt: w.m.Attempt(), Err: errUnexpected})
	w.drain()
}
func (w *world) Now() time.Duration { return w.now.Sub(start) }
func (w *world) NextDeadline() (time.Duration, bool) {
	_, at, ok := w.m.NextDeadline()
	return at.Sub(start), ok
}

// Advance fires every timer due at the next deadline, then handles the
// results, as the Service's actor does.
func (w *world) Advance() bool {
	_, at, ok := w.m.NextDeadline()
	if !ok {
		return false
	}
	w.now = at
	for {
		tm, at, ok := w.m.NextDeadline()
		if !ok || at.After(w.now) {
			break
		}
		w.step(fsm.Event{Kind: tm.Event()})
	}
	w.drain()
	return true
}

func (w *world) RemoteEnd(reset bool) {
	require.Equal(w.t, fsm.Beating, w.m.State(), "no open stream to end")
	if reset {
		w.step(fsm.Event{Kind: fsm.RemoteReset, Attempt: w.m.Attempt(), Err: errReset})
	} else {
		w.step(fsm.Event{Kind: fsm.RemoteClosed, Attempt: w.m.Attempt()})
	}
	w.drain()
}

func (w *world) Close() {
	w.step(fsm.Event{Kind: fsm.Stop})
	w.drain()
}

func (w *world) Status() scenario.Status {
	at, armed := w.m.Deadline(fsm.RetryTimer)
	rtt, srtt, skew, ok := w.m.RTT()
	return scenario.Status{
		State: w.m.State(), Attempt: w.m.Attempt(), Beats: w.m.Beats(), Failures: w.m.Failures(),
		NextRetry: at.Sub(start), RetryArmed: armed, LastError: w.m.LastError(),
		Parked:   btoi(w.parkedDial != 0) + btoi(w.parkedWrite != 0),
		Protocol: w.m.Protocol(), Seq: w.m.Seq(), Acks: w.m.Acks(), BeatPeriod: w.m.BeatPeriod(),
		RTT: rtt, SRTT: srtt, Skew: skew, HasRTT: ok,
	}
}

// TestJitterIsSeeded: the same seed gives the same delays, another seed
// others, and every delay stays within ±20% of ReconnectPeriod.
func TestJitterIsSeeded(t *testing.T) {
	delays := func(seed uint64) []time.Duration {
		c := fsm.DefaultConfig()
		c.Seed = seed
		w := newWorld(t, &scenario.Recorder{}, c)
		w.Run()
		for w.Now() < time.Hour {
			w.Advance()
		}
		var out []time.Duration
		for i := 1; i < len(w.dials); i++ {
			out = append(out, w.dials[i].Sub(w.dials[i-1]))
		}
		return out
	}
	a, b, c := delays(1), delays(1), delays(2)
	require.Equal(t, a, b)
	require.NotEqual(t, a, c)
	require.Greater(t, len(a), 250)
	for _, d := range a {
		require.GreaterOrEqual(t, d, 8*time.Second)
		require.Less(t, d, 12*time.Second)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
