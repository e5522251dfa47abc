package fsm

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// world is a minimal synchronous shell: results come back at the instant
// their effect is executed, and time jumps from deadline to deadline. It is
// enough to replay scripts in virtual time; the real shell is the Service.
type world struct {
	t          *testing.T
	m          *Machine
	now        time.Time
	queue      []Event
	trace      []string
	dialErr    func(now time.Time) error // nil: the dial succeeds
	dialHangs  func(now time.Time) bool
	writeErr   func(now time.Time) error
	writeHangs func(now time.Time) bool
	logs       []logAt
	dials      []time.Time
	sends      []time.Time
}

type logAt struct {
	at  time.Duration
	rec LogRecord
}

func newWorld(t *testing.T, c Config) *world {
	w := &world{t: t, m: newMachine(t, c), now: t0}
	never := func(time.Time) bool { return false }
	w.dialErr = func(time.Time) error { return nil }
	w.writeErr = w.dialErr
	w.dialHangs, w.writeHangs = never, never
	return w
}

func (w *world) elapsed() time.Duration { return w.now.Sub(t0) }

func (w *world) handle(ev Event) {
	effs := step(w.t, w.m, w.now, ev)
	for _, e := range effs {
		switch e.Kind {
		case Dial:
			w.dials = append(w.dials, w.now)
			switch err := w.dialErr(w.now); {
			case w.dialHangs(w.now):
			case err != nil:
				w.queue = append(w.queue, Event{Kind: DialFailed, Attempt: e.Attempt, Err: err})
			default:
				w.queue = append(w.queue, Event{Kind: DialSucceeded, Attempt: e.Attempt})
			}
		case Send:
			w.sends = append(w.sends, w.now)
			switch err := w.writeErr(w.now); {
			case w.writeHangs(w.now):
			case err != nil:
				w.queue = append(w.queue, Event{Kind: WriteFailed, Attempt: e.Attempt, Err: err})
			default:
				w.queue = append(w.queue, Event{Kind: WriteSucceeded, Attempt: e.Attempt})
			}
		case Log:
			w.logs = append(w.logs, logAt{w.elapsed(), e.Log})
			w.trace = append(w.trace, fmt.Sprintf("+%-7s %s", w.elapsed(), e.Log))
		case Transitioned, CancelDial, ResetStream, CloseStream:
			w.trace = append(w.trace, fmt.Sprintf("+%-7s %s", w.elapsed(), e))
		}
	}
}

// runUntil handles queued results, then fires timers in deadline order,
// until the next deadline is after end.
func (w *world) runUntil(end time.Time) {
	for {
		for len(w.queue) > 0 {
			ev := w.queue[0]
			w.queue = w.queue[1:]
			w.handle(ev)
		}
		tm, at, ok := w.m.NextDeadline()
		if !ok || at.After(end) {
			w.now = end
			return
		}
		w.now = at
		w.handle(Event{Kind: tm.Event()})
	}
}

func (w *world) golden(name string) {
	w.t.Helper()
	got := strings.Join(w.trace, "\n") + "\n"
	path := filepath.Join("testdata", name+".golden")
	if *update {
		require.NoError(w.t, os.MkdirAll("testdata", 0o755))
		require.NoError(w.t, os.WriteFile(path, []byte(got), 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(w.t, err, "run with -update to create %s", path)
	require.Equal(w.t, string(want), got, "trace differs from %s (rerun with -update if the change is intended)", path)
}

// TestOutageLogPolicy is the legacy policy at the exact virtual second: an
// aggregator unreachable for 45 minutes, retried every 10 s without jitter.
func TestOutageLogPolicy(t *testing.T) {
	w := newWorld(t, testConfig())
	w.dialErr = func(now time.Time) error {
		if now.Before(t0.Add(45 * time.Minute)) {
			return errRefused
		}
		return nil
	}
	w.handle(Event{Kind: Start})
	w.runUntil(t0.Add(46 * time.Minute))

	var warn, errs, debug, info []time.Duration
	for _, l := range w.logs {
		switch l.rec.Level {
		case LevelWarn:
			warn = append(warn, l.at)
		case LevelError:
			errs = append(errs, l.at)
		case LevelDebug:
			debug = append(debug, l.at)
		case LevelInfo:
			info = append(info, l.at)
			require.Equal(t, 45*time.Minute, l.rec.Outage)
			require.Equal(t, uint64(270), l.rec.Failures)
		}
	}
	require.Equal(t, []time.Duration{0}, warn)
	// Strictly more than 10 minutes: 600 s after the WARN is still DEBUG.
	require.Equal(t, []time.Duration{610 * time.Second, 1220 * time.Second, 1830 * time.Second, 2440 * time.Second}, errs)
	require.Len(t, debug, 270-1-4)
	require.Equal(t, []time.Duration{45 * time.Minute}, info)
	require.Len(t, w.dials, 271)
	for i, at := range w.dials {
		require.Equal(t, t0.Add(time.Duration(i)*10*time.Second), at, "attempt %d", i+1)
	}
	// Beats: at once on connecting, then every 3 s.
	require.Equal(t, t0.Add(45*time.Minute), w.sends[0])
	require.Equal(t, t0.Add(45*time.Minute+3*time.Second), w.sends[1])
	require.Equal(t, "Heartbeat service failed to connect", w.logs[61].rec.Message())
	require.Equal(t, 10*time.Minute+10*time.Second, w.logs[61].rec.Outage)
	w.golden("outage-45m")
}

func TestWriteFailureThenReconnect(t *testing.T) {
	w := newWorld(t, testConfig())
	w.writeErr = func(now time.Time) error {
		if now.Equal(t0.Add(9 * time.Second)) {
			return errRefused
		}
		return nil
	}
	w.handle(Event{Kind: Start})
	w.runUntil(t0.Add(30 * time.Second))
	require.Equal(t, []time.Time{t0, sec(19)}, w.dials)
	require.Equal(t, Beating, w.m.State())
	w.golden("write-failure")
}

func TestStalledWriteHitsItsDeadline(t *testing.T) {
	c := testConfig()
	c.WriteTimeout = 5 * time.Second
	w := newWorld(t, c)
	w.writeHangs = func(now time.Time) bool { return now.Equal(sec(6)) }
	w.handle(Event{Kind: Start})
	w.runUntil(t0.Add(30 * time.Second))
	// The write at 6 s hangs; the beat at 9 s is skipped; the deadline at 11 s drops the stream.
	require.Equal(t, []time.Time{t0, sec(21)}, w.dials)
	w.golden("stalled-write")
}

func TestHungDialIsAbandoned(t *testing.T) {
	w := newWorld(t, testConfig())
	w.dialHangs = func(now time.Time) bool { return now.Equal(t0) }
	w.handle(Event{Kind: Start})
	w.runUntil(t0.Add(25 * time.Second))
	require.Equal(t, []time.Time{t0, sec(20)}, w.dials)
	// The hung dial's stream shows up late: it belongs to attempt 1 and is reset.
	effs := step(t, w.m, w.now, Event{Kind: DialSucceeded, Attempt: 1})
	require.Equal(t, []Effect{{Kind: ResetStream, Attempt: 1}}, effs)
	w.golden("hung-dial")
}

// TestJitterIsSeeded: the same seed gives the same delays, another seed
// others, and every delay stays within ±20% of ReconnectPeriod.
func TestJitterIsSeeded(t *testing.T) {
	delays := func(seed uint64) []time.Duration {
		c := DefaultConfig()
		c.Seed = seed
		w := newWorld(t, c)
		w.dialErr = func(time.Time) error { return errRefused }
		w.handle(Event{Kind: Start})
		w.runUntil(t0.Add(time.Hour))
		var out []time.Duration
		for i := 1; i < len(w.dials); i++ {
			out = append(out, w.dials[i].Sub(w.dials[i-1]))
		}
		return out
	}
	a, b, c := delays(1), delays(1), delays(2)
	require.Equal(t, a, b)
	require.NotEqual(t, a, c)
	for _, d := range a {
		require.GreaterOrEqual(t, d, 8*time.Second)
		require.Less(t, d, 12*time.Second)
	}
}
