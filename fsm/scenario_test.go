package fsm_test

import (
	"errors"
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
	up     bool
	faults scenario.Faults
	dials  []time.Time
	// The attempts whose dial or write a fault parked (0: none), released
	// as the memory network releases them: a cancelled dial, a reset or
	// closed stream.
	parkedDial, parkedWrite uint64
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
			case !w.up:
				w.queue = append(w.queue, fsm.Event{Kind: fsm.DialFailed, Attempt: e.Attempt, Err: errRefused})
			default:
				w.queue = append(w.queue, fsm.Event{Kind: fsm.DialSucceeded, Attempt: e.Attempt})
			}
		case fsm.Send:
			switch {
			case w.faults.WriteErr != nil:
				w.queue = append(w.queue, fsm.Event{Kind: fsm.WriteFailed, Attempt: e.Attempt, Err: w.faults.WriteErr})
			case w.faults.StallWrites:
				w.parkedWrite = e.Attempt
			default:
				w.queue = append(w.queue, fsm.Event{Kind: fsm.WriteSucceeded, Attempt: e.Attempt})
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
		}
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

func (w *world) Configure(dial, write time.Duration) {
	require.Zero(w.t, w.m.Attempt(), "config comes first")
	c := fsm.DefaultConfig()
	c.Backoff.Jitter = 0
	c.DialTimeout, c.WriteTimeout = dial, write
	*w = *newWorld(w.t, w.rec, c)
}

func (w *world) Run() {
	w.step(fsm.Event{Kind: fsm.Start})
	w.drain()
}

func (w *world) Aggregator(up bool)       { w.up = up }
func (w *world) Faults(f scenario.Faults) { w.faults = f }
func (w *world) Now() time.Duration       { return w.now.Sub(start) }
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
	return scenario.Status{
		State: w.m.State(), Attempt: w.m.Attempt(), Beats: w.m.Beats(), Failures: w.m.Failures(),
		NextRetry: at.Sub(start), RetryArmed: armed, LastError: w.m.LastError(),
		Parked: btoi(w.parkedDial != 0) + btoi(w.parkedWrite != 0),
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
