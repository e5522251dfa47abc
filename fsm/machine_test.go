package fsm

import (
	"errors"
	"flag"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// t0 is an arbitrary virtual start; the machine never reads a clock.
var t0 = time.Date(2019, 6, 1, 12, 0, 0, 0, time.UTC)

// rowsHit records every table row some test in this package exercised.
var rowsHit = make([]int, len(table))

// TestMain fails the run if a whole-package run leaves a row of Table
// unexercised: the table is the specification, and an untested row is an
// untested behaviour. A run that lists, filters or skips tests runs only
// some of them (or none), so it is not checked.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 && wholeRun() {
		for i, n := range rowsHit {
			if n == 0 {
				t := table[i]
				os.Stderr.WriteString("fsm: table row never exercised: " + t.From.String() + " " + t.On.String() + " " + t.When.String() + "\n")
				code = 1
			}
		}
	}
	os.Exit(code)
}

// wholeRun reports whether every test of the package ran: no -test.list,
// -test.run or -test.skip.
func wholeRun() bool {
	for _, name := range []string{"test.list", "test.run", "test.skip"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" {
			return false
		}
	}
	return true
}

func testConfig() Config {
	c := DefaultConfig()
	c.Backoff.Jitter = 0
	return c
}

func newMachine(t testing.TB, c Config) *Machine {
	t.Helper()
	m, err := New(c)
	require.NoError(t, err)
	return m
}

// step runs one Step, records the row it matched and copies the effects.
func step(t testing.TB, m *Machine, now time.Time, ev Event) []Effect {
	t.Helper()
	effs, err := m.Step(now, ev)
	require.NoError(t, err, "step %s in %s", ev.Kind, m.State())
	rowsHit[m.LastRow()]++
	return append([]Effect(nil), effs...)
}

func kinds(effs []Effect) []EffectKind {
	out := make([]EffectKind, len(effs))
	for i, e := range effs {
		out[i] = e.Kind
	}
	return out
}

// reach drives a fresh machine into state s at t0 and returns it.
func reach(t *testing.T, s State) *Machine {
	t.Helper()
	m := newMachine(t, testConfig())
	switch s {
	case Disconnected:
	case Connecting:
		step(t, m, t0, Event{Kind: Start})
	case Beating:
		step(t, m, t0, Event{Kind: Start})
		step(t, m, t0, Event{Kind: DialSucceeded, Attempt: 1})
	case Backoff:
		step(t, m, t0, Event{Kind: Start})
		step(t, m, t0, Event{Kind: DialFailed, Attempt: 1, Err: errRefused})
	case Stopped:
		step(t, m, t0, Event{Kind: Stop})
	}
	require.Equal(t, s, m.State())
	return m
}

// proven stands, in TestTransitions, for Beating on a proven stream.
const proven = State(100)

// reachProven drives a fresh machine into Beating on a stream that survived
// its first beat: connected at t0, written, proven at 3 s, whose beat of 3 s
// is in flight.
func reachProven(t *testing.T) *Machine {
	t.Helper()
	m := reach(t, Beating)
	step(t, m, t0, Event{Kind: WriteSucceeded, Attempt: 1})
	step(t, m, sec(3), Event{Kind: BeatDue})
	require.True(t, m.proven)
	return m
}

var errRefused = errors.New("connection refused")

func sec(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }

func TestTransitions(t *testing.T) {
	arm := func(tm Timer, at time.Time) Effect { return Effect{Kind: ArmTimer, Timer: tm, At: at} }
	cancel := func(tm Timer) Effect { return Effect{Kind: CancelTimer, Timer: tm} }
	moved := func(from, to State) Effect { return Effect{Kind: Transitioned, From: from, To: to} }
	logOf := func(r LogRecord) Effect { return Effect{Kind: Log, Log: r} }

	cases := []struct {
		name    string
		from    State
		now     time.Time
		ev      Event
		want    State
		effects []Effect
	}{
		{"start dials at once", Disconnected, t0, Event{Kind: Start}, Connecting, []Effect{
			{Kind: Dial, Attempt: 1}, arm(DialTimer, sec(10)), moved(Disconnected, Connecting)}},
		{"stop before start", Disconnected, t0, Event{Kind: Stop}, Stopped, []Effect{moved(Disconnected, Stopped)}},
		{"dial succeeds: first beat at once", Connecting, sec(1), Event{Kind: DialSucceeded, Attempt: 1}, Beating, []Effect{
			cancel(DialTimer), {Kind: Send, Attempt: 1}, arm(WriteTimer, sec(11)), arm(BeatTimer, sec(4)), moved(Connecting, Beating)}},
		{"dial fails: WARN and retry", Connecting, sec(1), Event{Kind: DialFailed, Attempt: 1, Err: errRefused}, Backoff, []Effect{
			cancel(DialTimer),
			logOf(LogRecord{Level: LevelWarn, Kind: LogConnectFailed, Attempt: 1, Failures: 1, Err: errRefused}),
			arm(RetryTimer, sec(11)), moved(Connecting, Backoff)}},
		{"dial hangs past its deadline", Connecting, sec(10), Event{Kind: DialTimedOut}, Backoff, []Effect{
			{Kind: CancelDial, Attempt: 1},
			logOf(LogRecord{Level: LevelWarn, Kind: LogConnectFailed, Attempt: 1, Failures: 1, Err: ErrDialTimeout}),
			arm(RetryTimer, sec(20)), moved(Connecting, Backoff)}},
		{"stop while connecting cancels the dial", Connecting, sec(1), Event{Kind: Stop}, Stopped, []Effect{
			{Kind: CancelDial, Attempt: 1}, cancel(DialTimer), moved(Connecting, Stopped)}},
		{"late dial failure of an old attempt", Connecting, sec(1), Event{Kind: DialFailed, Attempt: 7}, Connecting, nil},
		{"late stream of an old attempt is reset", Connecting, sec(1), Event{Kind: DialSucceeded, Attempt: 7}, Connecting, []Effect{
			{Kind: ResetStream, Attempt: 7}}},
		{"dial timer not yet due", Connecting, sec(9), Event{Kind: DialTimedOut}, Connecting, nil},

		{"first beat survived: the stream is proven", Beating, sec(3), Event{Kind: BeatDue}, Beating, nil}, // filled below
		{"write done", Beating, sec(1), Event{Kind: WriteSucceeded, Attempt: 1}, Beating, []Effect{cancel(WriteTimer)}},
		{"refused: reset before the first beat survived", Beating, sec(1), Event{Kind: RemoteReset, Attempt: 1, Err: errRefused}, Backoff, []Effect{
			cancel(BeatTimer), cancel(WriteTimer), {Kind: ResetStream, Attempt: 1},
			logOf(LogRecord{Level: LevelWarn, Kind: LogConnectFailed, Attempt: 1, Failures: 1, Err: refusedError{errRefused}}),
			arm(RetryTimer, sec(11)), moved(Beating, Backoff)}},
		{"closed in order before the first beat survived: no failure, no rejoin", Beating, sec(1), Event{Kind: RemoteClosed, Attempt: 1}, Backoff, []Effect{
			cancel(BeatTimer), cancel(WriteTimer), {Kind: CloseStream, Attempt: 1},
			logOf(LogRecord{Level: LevelInfo, Kind: LogRemoteClosed, Attempt: 1}),
			arm(RetryTimer, sec(11)), moved(Beating, Backoff)}},
		{"first write fails: a failed attempt", Beating, sec(1), Event{Kind: WriteFailed, Attempt: 1, Err: errRefused}, Backoff, []Effect{
			cancel(BeatTimer), cancel(WriteTimer), {Kind: ResetStream, Attempt: 1},
			logOf(LogRecord{Level: LevelWarn, Kind: LogConnectFailed, Attempt: 1, Failures: 1, Err: refusedError{errRefused}}),
			arm(RetryTimer, sec(11)), moved(Beating, Backoff)}},
		{"first write stalls: a failed attempt", Beating, sec(10), Event{Kind: WriteTimedOut}, Backoff, []Effect{
			cancel(BeatTimer), {Kind: ResetStream, Attempt: 1},
			logOf(LogRecord{Level: LevelWarn, Kind: LogConnectFailed, Attempt: 1, Failures: 1, Err: refusedError{ErrWriteTimeout}}),
			arm(RetryTimer, sec(20)), moved(Beating, Backoff)}},

		// A proven stream (see reachProven): the beat of 3 s is in flight.
		{"beat every BeatPeriod", proven, sec(6), Event{Kind: BeatDue}, Beating, nil}, // filled below
		{"write fails: reset this stream only, rejoin", proven, sec(4), Event{Kind: WriteFailed, Attempt: 1, Err: errRefused}, Backoff, []Effect{
			cancel(BeatTimer), cancel(WriteTimer), {Kind: ResetStream, Attempt: 1},
			logOf(LogRecord{Level: LevelWarn, Kind: LogWriteFailed, Attempt: 1, Err: errRefused}),
			arm(RetryTimer, sec(4).Add(1500*time.Millisecond)), moved(Beating, Backoff)}},
		{"write stalls past its deadline, rejoin", proven, sec(13), Event{Kind: WriteTimedOut}, Backoff, []Effect{
			cancel(BeatTimer), {Kind: ResetStream, Attempt: 1},
			logOf(LogRecord{Level: LevelWarn, Kind: LogWriteFailed, Attempt: 1, Err: ErrWriteTimeout}),
			arm(RetryTimer, sec(14).Add(500*time.Millisecond)), moved(Beating, Backoff)}},
		{"remote closes in order, rejoin", proven, sec(4), Event{Kind: RemoteClosed, Attempt: 1}, Backoff, []Effect{
			cancel(BeatTimer), cancel(WriteTimer), {Kind: CloseStream, Attempt: 1},
			logOf(LogRecord{Level: LevelInfo, Kind: LogRemoteClosed, Attempt: 1}),
			arm(RetryTimer, sec(5).Add(500*time.Millisecond)), moved(Beating, Backoff)}},
		{"remote resets, rejoin", proven, sec(4), Event{Kind: RemoteReset, Attempt: 1, Err: errRefused}, Backoff, []Effect{
			cancel(BeatTimer), cancel(WriteTimer), {Kind: ResetStream, Attempt: 1},
			logOf(LogRecord{Level: LevelWarn, Kind: LogRemoteReset, Attempt: 1, Err: errRefused}),
			arm(RetryTimer, sec(5).Add(500*time.Millisecond)), moved(Beating, Backoff)}},
		{"stop while a write is in flight resets", Beating, sec(2), Event{Kind: Stop}, Stopped, []Effect{
			{Kind: ResetStream, Attempt: 1}, cancel(BeatTimer), cancel(WriteTimer), moved(Beating, Stopped)}},
		{"late write result of an old stream", Beating, sec(2), Event{Kind: WriteSucceeded, Attempt: 9}, Beating, nil},
		{"late write failure of an old stream", Beating, sec(2), Event{Kind: WriteFailed, Attempt: 9}, Beating, nil},
		{"end of an old stream", Beating, sec(2), Event{Kind: RemoteClosed, Attempt: 9}, Beating, nil},
		{"reset of an old stream", Beating, sec(2), Event{Kind: RemoteReset, Attempt: 9}, Beating, nil},
		{"stale retry timer while beating", Beating, sec(2), Event{Kind: RetryDue}, Beating, nil},

		{"retry", Backoff, sec(10), Event{Kind: RetryDue}, Connecting, []Effect{
			{Kind: Dial, Attempt: 2}, arm(DialTimer, sec(20)), moved(Backoff, Connecting)}},
		{"retry timer not yet due", Backoff, sec(9), Event{Kind: RetryDue}, Backoff, nil},
		{"stop in backoff cancels the retry", Backoff, sec(2), Event{Kind: Stop}, Stopped, []Effect{
			cancel(RetryTimer), moved(Backoff, Stopped)}},
		{"stale beat timer in backoff", Backoff, sec(3), Event{Kind: BeatDue}, Backoff, nil},
		{"stale write timer in backoff", Backoff, sec(3), Event{Kind: WriteTimedOut}, Backoff, nil},

		{"stop is idempotent", Stopped, sec(1), Event{Kind: Stop}, Stopped, nil},
		{"a stream arriving after stop is reset", Stopped, sec(1), Event{Kind: DialSucceeded, Attempt: 1}, Stopped, []Effect{
			{Kind: ResetStream, Attempt: 1}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var m *Machine
			if tc.from == proven {
				m, tc.from = reachProven(t), Beating
			} else {
				m = reach(t, tc.from)
			}
			switch tc.name {
			case "first beat survived: the stream is proven":
				// Clear the write first, so the beat is awaited, not busy.
				// No INFO: there was no outage to end.
				step(t, m, sec(1), Event{Kind: WriteSucceeded, Attempt: 1})
				tc.effects = []Effect{{Kind: Send, Attempt: 1}, arm(WriteTimer, sec(13)), arm(BeatTimer, sec(6))}
			case "beat every BeatPeriod":
				step(t, m, sec(4), Event{Kind: WriteSucceeded, Attempt: 1})
				tc.effects = []Effect{{Kind: Send, Attempt: 1}, arm(WriteTimer, sec(16)), arm(BeatTimer, sec(9))}
			}
			got := step(t, m, tc.now, tc.ev)
			require.Equal(t, tc.want, m.State())
			if tc.effects == nil {
				require.Empty(t, got)
			} else {
				require.Equal(t, tc.effects, got)
			}
		})
	}
}

func TestStopWhileBeatingIdleClosesInOrder(t *testing.T) {
	m := reach(t, Beating)
	step(t, m, sec(1), Event{Kind: WriteSucceeded, Attempt: 1})
	got := step(t, m, sec(2), Event{Kind: Stop})
	require.Equal(t, []Effect{{Kind: CloseStream, Attempt: 1}, {Kind: CancelTimer, Timer: BeatTimer},
		{Kind: Transitioned, From: Beating, To: Stopped}}, got)
}

// A hung dial's stream that shows up after the retry connected belongs to
// the abandoned attempt: it is reset, and the current stream stays.
func TestLateStreamOfAbandonedDialIsReset(t *testing.T) {
	m := reach(t, Connecting)
	step(t, m, sec(10), Event{Kind: DialTimedOut})
	step(t, m, sec(20), Event{Kind: RetryDue})
	step(t, m, sec(20), Event{Kind: DialSucceeded, Attempt: 2})
	got := step(t, m, sec(25), Event{Kind: DialSucceeded, Attempt: 1})
	require.Equal(t, []Effect{{Kind: ResetStream, Attempt: 1}}, got)
	require.Equal(t, Beating, m.State())
	require.Equal(t, uint64(2), m.Attempt())
}

func TestBeatWhileWriteInFlightIsSkipped(t *testing.T) {
	m := reach(t, Beating) // the first write (t0) is still in flight
	got := step(t, m, sec(3), Event{Kind: BeatDue})
	require.Equal(t, []EffectKind{Log, ArmTimer}, kinds(got))
	require.Equal(t, LevelDebug, got[0].Log.Level)
	require.Equal(t, LogBeatSkipped, got[0].Log.Kind)
	require.Equal(t, sec(6), got[1].At)
	require.Equal(t, Beating, m.State())
}

func TestRejectedEventsAreTypedErrorsAndChangeNothing(t *testing.T) {
	for _, s := range []State{Connecting, Beating, Backoff, Stopped} {
		m := reach(t, s)
		before := *m
		effs, err := m.Step(sec(1), Event{Kind: Start})
		require.Nil(t, effs)
		require.ErrorIs(t, err, ErrRejected)
		var rej *RejectedError
		require.ErrorAs(t, err, &rej)
		require.Equal(t, s, rej.State)
		require.Equal(t, Start, rej.Event)
		require.Equal(t, before.state, m.State())
		require.Equal(t, before.deadlines, m.deadlines)
		require.Equal(t, -1, m.LastRow())
	}
	// A due timer in a state that never arms it would be a shell bug: also an error.
	m := reach(t, Connecting)
	m.deadlines[BeatTimer] = t0
	_, err := m.Step(sec(1), Event{Kind: BeatDue})
	require.ErrorIs(t, err, ErrRejected)
}

func TestStepNeverPanicsOnAnyInput(t *testing.T) {
	for _, s := range States() {
		for _, k := range Events() {
			for _, attempt := range []uint64{0, 1, 2, 1 << 63} {
				m := reach(t, s)
				m.deadlines[BeatTimer] = t0 // even an inconsistent timer
				require.NotPanics(t, func() { _, _ = m.Step(sec(5), Event{Kind: k, Attempt: attempt}) })
			}
		}
	}
	m := reach(t, Beating)
	_, err := m.Step(t0, Event{Kind: EventKind(200)})
	require.ErrorIs(t, err, ErrRejected)
}

func TestTableIsConsistent(t *testing.T) {
	require.NoError(t, ValidateTable(Table()))
	shadowed := append(Table(), Transition{From: Beating, On: Stop, When: Always, To: Backoff})
	require.Error(t, ValidateTable(shadowed))
	// Table returns a copy: writing to it changes nothing.
	rows := Table()
	rows[0].To = Stopped
	require.Equal(t, Connecting, table[0].To)
	require.Equal(t, Connecting, Table()[0].To)
	// Every state but Stopped can be left, and every state can be reached.
	reached := map[State]bool{Disconnected: true}
	for _, tr := range Table() {
		if tr.To != Same {
			reached[tr.To] = true
		}
	}
	require.Len(t, reached, len(States()))
}

func TestConfigValidationNamesTheField(t *testing.T) {
	for field, mutate := range map[string]func(*Config){
		"BeatPeriod":     func(c *Config) { c.BeatPeriod = 0 },
		"DialTimeout":    func(c *Config) { c.DialTimeout = -time.Second },
		"WriteTimeout":   func(c *Config) { c.WriteTimeout = 0 },
		"ErrorEvery":     func(c *Config) { c.ErrorEvery = 0 },
		"Backoff.Base":   func(c *Config) { c.Backoff.Base = 0 },
		"Backoff.Growth": func(c *Config) { c.Backoff.Growth = 0.5 },
		"Backoff.Max":    func(c *Config) { c.Backoff.Max = time.Second },
		"Backoff.Jitter": func(c *Config) { c.Backoff.Jitter = 1 },
	} {
		c := DefaultConfig()
		mutate(&c)
		_, err := New(c)
		require.ErrorContains(t, err, "Config."+field, field)
	}
}

func TestAccessors(t *testing.T) {
	m := reach(t, Beating)
	require.Equal(t, uint64(1), m.Attempt())
	require.Equal(t, t0, m.Since())
	tm, at, ok := m.NextDeadline()
	require.True(t, ok)
	require.Equal(t, BeatTimer, tm)
	require.Equal(t, sec(3), at)
	require.True(t, m.Writing())
	step(t, m, sec(1), Event{Kind: WriteSucceeded, Attempt: 1})
	require.False(t, m.Writing())
	require.Equal(t, uint64(1), m.Beats())
	step(t, m, sec(2), Event{Kind: RemoteReset, Attempt: 1, Err: errRefused})
	require.ErrorIs(t, m.LastError(), ErrRefused)
	require.ErrorIs(t, m.LastError(), errRefused)
	at, ok = m.Deadline(RetryTimer)
	require.True(t, ok)
	require.Equal(t, sec(12), at)
}

// TestRejoinIsUniformWithinOneBeatPeriod: with jitter, the rejoin after a
// lost proven stream is drawn uniformly in [0, BeatPeriod) for every seed,
// and spreads over the window.
func TestRejoinIsUniformWithinOneBeatPeriod(t *testing.T) {
	const seeds = 2000
	var buckets [10]int
	for seed := uint64(1); seed <= seeds; seed++ {
		c := DefaultConfig()
		c.Seed = seed
		m := reachProvenWith(t, c)
		step(t, m, sec(4), Event{Kind: RemoteReset, Attempt: 1, Err: errRefused})
		at, ok := m.Deadline(RetryTimer)
		require.True(t, ok)
		d := at.Sub(sec(4))
		require.GreaterOrEqual(t, d, time.Duration(0), "seed %d", seed)
		require.Less(t, d, c.BeatPeriod, "seed %d", seed)
		buckets[d*10/c.BeatPeriod]++
	}
	for i, n := range buckets {
		// Expected 200 a bucket; 120 is more than 5 standard deviations off.
		require.Greater(t, n, 120, "bucket %d of 10: %v", i, buckets)
	}
}

// reachProvenWith is reachProven with the config c.
func reachProvenWith(t *testing.T, c Config) *Machine {
	t.Helper()
	m := newMachine(t, c)
	step(t, m, t0, Event{Kind: Start})
	step(t, m, t0, Event{Kind: DialSucceeded, Attempt: 1})
	step(t, m, t0, Event{Kind: WriteSucceeded, Attempt: 1})
	step(t, m, sec(3), Event{Kind: BeatDue})
	require.True(t, m.proven)
	return m
}
