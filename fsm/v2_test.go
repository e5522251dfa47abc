package fsm

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// reachV2 drives a fresh machine onto a v2 stream opened at t0, whose
// first Beat (seq 1) is written.
func reachV2(t *testing.T, c Config) *Machine {
	t.Helper()
	m := newMachine(t, c)
	step(t, m, t0, Event{Kind: Start})
	effs := step(t, m, t0, Event{Kind: DialSucceeded, Attempt: 1, Protocol: V2})
	require.Equal(t, Effect{Kind: Send, Attempt: 1, Seq: 1, At: t0}, effs[1])
	step(t, m, t0, Event{Kind: WriteSucceeded, Attempt: 1})
	require.Equal(t, V2, m.Protocol())
	return m
}

// A v1 stream is as before: no seq, no ack deadline, and a v2 frame on it
// is stale (the Service never reads one there).
func TestV1StreamHasNoAcks(t *testing.T) {
	m := reach(t, Beating)
	_, armed := m.Deadline(AckTimer)
	require.False(t, armed)
	require.Zero(t, m.Seq())
	for _, k := range []EventKind{WelcomeReceived, AckReceived, GoAwayReceived, BadFrame} {
		effs := step(t, m, t0, Event{Kind: k, Attempt: 1, Seq: 1})
		require.Empty(t, effs, "%s on a v1 stream", k)
		require.Equal(t, Beating, m.State())
	}
}

// A v2 stream is proven by its first Ack, not by a beat period passing:
// the beat due at 3 s with no Ack yet just sends.
func TestV2ProvenByFirstAckNotByTime(t *testing.T) {
	m := reachV2(t, testConfig())
	effs := step(t, m, sec(3), Event{Kind: BeatDue})
	require.False(t, m.proven)
	require.Equal(t, Effect{Kind: Send, Attempt: 1, Seq: 2, At: sec(3)}, effs[0])
	step(t, m, sec(3), Event{Kind: WriteSucceeded, Attempt: 1})
	step(t, m, sec(3).Add(ms(30)), Event{Kind: AckReceived, Attempt: 1, Seq: 1})
	require.True(t, m.proven)
	require.Equal(t, ProveStream, table[m.LastRow()].Do)
}

// Acks are cumulative: an Ack for seq 3 acknowledges 2 and 3 as well; the
// RTT is measured on seq 3's send time, the deadline disarmed when nothing
// is left unacknowledged and re-armed from the oldest Beat otherwise.
func TestV2AcksAreCumulativeAndRearmTheDeadline(t *testing.T) {
	m := reachV2(t, testConfig())
	step(t, m, t0.Add(ms(10)), Event{Kind: AckReceived, Attempt: 1, Seq: 1})
	for i := 1; i <= 3; i++ {
		step(t, m, sec(3*i), Event{Kind: BeatDue})
		step(t, m, sec(3*i), Event{Kind: WriteSucceeded, Attempt: 1})
	}
	at, ok := m.Deadline(AckTimer)
	require.True(t, ok)
	require.Equal(t, sec(3).Add(6*time.Second+ms(10)), at, "seq 2's send + 2×BeatPeriod + the last RTT")

	step(t, m, sec(6).Add(ms(50)), Event{Kind: AckReceived, Attempt: 1, Seq: 3})
	last, _, _, _ := m.RTT()
	require.Equal(t, ms(50), last)
	at, _ = m.Deadline(AckTimer)
	require.Equal(t, sec(9).Add(6*time.Second+ms(50)), at, "from seq 4, the oldest left")

	step(t, m, sec(9).Add(ms(20)), Event{Kind: AckReceived, Attempt: 1, Seq: 4})
	_, armed := m.Deadline(AckTimer)
	require.False(t, armed)
	require.EqualValues(t, 3, m.Acks())
}

// RTT per RFC 6298: the first sample is the smoothed RTT, then 7/8 of it
// plus 1/8 of each new one; skew is the Ack's time minus the Beat's plus
// half the RTT.
func TestV2SmoothedRTTAndSkew(t *testing.T) {
	m := reachV2(t, testConfig())
	step(t, m, t0.Add(ms(80)), Event{Kind: AckReceived, Attempt: 1, Seq: 1, RemoteTime: t0.Add(ms(1040))})
	last, srtt, skew, ok := m.RTT()
	require.True(t, ok)
	require.Equal(t, []time.Duration{ms(80), ms(80), ms(1000)}, []time.Duration{last, srtt, skew})

	effs := step(t, m, sec(3), Event{Kind: BeatDue})
	require.Equal(t, ms(80), effs[0].RTT, "the Beat carries the last RTT")
	step(t, m, sec(3).Add(ms(160)), Event{Kind: AckReceived, Attempt: 1, Seq: 2, RemoteTime: sec(3).Add(ms(20))})
	last, srtt, skew, _ = m.RTT()
	require.Equal(t, ms(160), last)
	require.Equal(t, ms(90), srtt, "80 + (160-80)/8")
	require.Equal(t, -ms(60), skew, "20 - 160/2: the aggregator's clock is behind")
}

// An Ack the machine cannot match: not sent yet, already acknowledged, or
// acknowledged earlier on another stream (seq goes on across streams).
func TestV2InvalidAcks(t *testing.T) {
	for _, tc := range []struct {
		name string
		seq  uint64
	}{{"not sent", 2}, {"zero", 0}, {"acknowledged", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			m := reachV2(t, testConfig())
			if tc.seq == 1 {
				step(t, m, t0, Event{Kind: AckReceived, Attempt: 1, Seq: 1})
			}
			effs := step(t, m, t0, Event{Kind: AckReceived, Attempt: 1, Seq: tc.seq})
			require.Equal(t, Backoff, m.State())
			require.Equal(t, Invalid, table[m.LastRow()].When)
			require.Contains(t, kinds(effs), ResetStream)
			require.ErrorIs(t, m.LastError(), ErrUnsentAck)
			require.EqualValues(t, 1, m.Failures())
		})
	}
	// Seq goes on: stream 2's first Beat is seq 2; an Ack for seq 1 on it
	// (stream 1's) is invalid.
	m := reachV2(t, testConfig())
	step(t, m, t0, Event{Kind: RemoteReset, Attempt: 1, Err: errors.New("reset")})
	at, _ := m.Deadline(RetryTimer)
	step(t, m, at, Event{Kind: RetryDue})
	effs := step(t, m, at, Event{Kind: DialSucceeded, Attempt: 2, Protocol: V2})
	require.EqualValues(t, 2, effs[1].Seq)
	step(t, m, at, Event{Kind: AckReceived, Attempt: 2, Seq: 1})
	require.Equal(t, Invalid, table[m.LastRow()].When)
}

// The RTT counted in the ack deadline is bounded, so that the Beats
// awaiting an Ack always fit the machine's fixed array.
func TestV2AckDeadlineBoundsTheRTT(t *testing.T) {
	c := testConfig()
	c.BeatPeriod = time.Second
	m := reachV2(t, c)
	step(t, m, t0.Add(90*time.Second), Event{Kind: AckReceived, Attempt: 1, Seq: 1})
	require.Equal(t, 2*time.Second+13*time.Second, m.ackTimeout())
	effs := step(t, m, t0.Add(90*time.Second), Event{Kind: BeatDue})
	require.Equal(t, 90*time.Second, effs[0].RTT, "as measured")
	// Beats every second with no Ack: the deadline comes before a 17th.
	var now time.Time
	for n := 0; m.State() == Beating; n++ {
		require.Less(t, n, maxUnacked, "more Beats unacknowledged than the array holds")
		_, next, _ := m.NextDeadline()
		now = next
		tm, _, _ := m.NextDeadline()
		step(t, m, now, Event{Kind: tm.Event()})
		if m.Writing() {
			step(t, m, now, Event{Kind: WriteSucceeded, Attempt: 1})
		}
	}
	require.Equal(t, AckOverdue, table[m.LastRow()].On)
}

// Every v2 event about a stream the machine no longer has, and an ack timer
// that is not armed or not due, change nothing.
func TestV2StaleEvents(t *testing.T) {
	m := reachV2(t, testConfig())
	at, ok := m.Deadline(AckTimer)
	require.True(t, ok)
	require.Empty(t, step(t, m, at.Add(-time.Millisecond), Event{Kind: AckOverdue}), "not due yet")
	for _, k := range []EventKind{WelcomeReceived, AckReceived, GoAwayReceived, BadFrame} {
		require.Empty(t, step(t, m, t0, Event{Kind: k, Attempt: 7, Seq: 1}), "%s of another attempt", k)
	}
	m = reach(t, Backoff)
	for _, k := range []EventKind{WelcomeReceived, AckReceived, GoAwayReceived, BadFrame, AckOverdue} {
		require.Empty(t, step(t, m, t0, Event{Kind: k, Attempt: 1, Seq: 1}), "%s in Backoff", k)
		require.Equal(t, Backoff, m.State())
	}
}

// A clean stop of a v2 stream says Bye; with a write in flight it resets.
func TestV2StopSaysBye(t *testing.T) {
	m := reachV2(t, testConfig())
	effs := step(t, m, t0, Event{Kind: Stop})
	require.Equal(t, Effect{Kind: CloseStream, Attempt: 1, Bye: true}, effs[0])

	m = reachV2(t, testConfig())
	step(t, m, sec(3), Event{Kind: BeatDue})
	effs = step(t, m, sec(3), Event{Kind: Stop})
	require.Equal(t, Effect{Kind: ResetStream, Attempt: 1}, effs[0])
}

func TestGoAwayWait(t *testing.T) {
	p := BackoffPolicy{Base: 10 * time.Second}
	floor, ceiling := 3*time.Second, time.Hour
	require.Equal(t, 30*time.Second, p.After(30*time.Second, floor, ceiling, 0.9))
	require.Equal(t, floor, p.After(0, floor, ceiling, 0.9), "never below the floor")
	require.Equal(t, ceiling, p.After(5*time.Hour, floor, ceiling, 0.9), "never above the ceiling")
	p.Jitter = 0.2
	// Upward only: never before the retry-after (the aggregator's slot).
	require.Equal(t, 30*time.Second, p.After(30*time.Second, floor, ceiling, 0))
	require.Equal(t, 30300*time.Millisecond, p.After(30*time.Second, floor, ceiling, 0.5), "2% of it, at most")
	require.Equal(t, 10*time.Second+100*time.Millisecond, p.After(10*time.Second, floor, ceiling, 0.5))
	require.Equal(t, 10*time.Minute+1500*time.Millisecond, p.After(10*time.Minute, floor, ceiling, 0.5), "at most the floor")
	require.Equal(t, floor+30*time.Millisecond, p.After(0, floor, ceiling, 0.5), "the floor, then the spread")
	require.Equal(t, ceiling, p.After(ceiling, floor, ceiling, 0.99), "the spread does not pass the ceiling")
}

// The GoAway's wait is spread by the seeded source, upward only: in
// [retry-after, retry-after + min(BeatPeriod, 2% of it)).
func TestGoAwayIsJittered(t *testing.T) {
	seen := map[time.Duration]bool{}
	for seed := range uint64(20) {
		c := DefaultConfig()
		c.Seed = seed
		m := reachV2(t, c)
		step(t, m, t0, Event{Kind: GoAwayReceived, Attempt: 1, RetryAfter: 30 * time.Second})
		at, ok := m.Deadline(RetryTimer)
		require.True(t, ok)
		d := at.Sub(t0)
		require.GreaterOrEqual(t, d, 30*time.Second)
		require.Less(t, d, 30600*time.Millisecond)
		seen[d] = true
	}
	require.Greater(t, len(seen), 10)
}
