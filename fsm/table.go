package fsm

import (
	"fmt"
	"slices"
)

// Guard is the condition under which an event matches a transition. The
// machine classifies each event into exactly one guard before it looks the
// (state, event, guard) triple up in Table.
type Guard uint8

// The guards.
const (
	// Always: lifecycle requests (Start, Stop).
	Always Guard = iota // always
	// Awaited: the result or timer the machine is waiting for right now (the
	// current attempt, an armed timer whose deadline has come).
	Awaited // awaited
	// Stale: a result for an attempt the machine no longer waits for, or a
	// timer that is not armed or not yet due. Such events change nothing.
	Stale // stale
	// WriteBusy: a beat came due while the previous write is still in flight.
	WriteBusy // write busy
	// Unproven: the awaited event concerns a stream that has not yet
	// proven itself. A v1 stream is proven when the beat after a successful
	// write comes due and the stream is still open; a v2 stream by its first
	// Ack (Machine.onStream). A stream that ends unproven was refused, not
	// lost.
	Unproven // unproven
	// Invalid: an Ack for a Beat that was not sent on the stream, or was
	// already acknowledged: the aggregator broke the protocol.
	Invalid // invalid
)

// numGuards counts the guards (an int, so that stringer does not name it).
const numGuards = int(Invalid) + 1

// Action names what a transition does besides changing state. The effects
// each action produces are listed in docs/state-machine.md.
type Action uint8

// The actions.
const (
	// Nothing: the event is acknowledged and dropped.
	Nothing Action = iota // nothing
	// OpenStream starts attempt n+1 and arms the dial deadline.
	OpenStream // open stream
	// BeginBeating sends the first heartbeat at once; the stream is on
	// probation until ConfirmStream.
	BeginBeating // begin beating
	// ConfirmStream marks a v1 stream proven (it survived its first beat),
	// logs a recovery, resets the failure count, then as SendBeat.
	ConfirmStream // confirm stream
	// ProveStream marks a v2 stream proven by its first Ack, logs a
	// recovery, resets the failure count, then as CountAck.
	ProveStream // prove stream
	// CountAck measures the RTT (last and smoothed, RFC 6298) and the clock
	// skew from an Ack, and re-arms the ack deadline for the oldest Beat
	// still unacknowledged (or disarms it).
	CountAck // count ack
	// ApplyWelcome beats at the period the Welcome asks for, clamped to
	// [BeatPeriod, MaxPeriodFactor×BeatPeriod] (none asked: nothing changes).
	ApplyWelcome // apply welcome
	// SendBeat writes a heartbeat and arms the write deadline and the next beat.
	SendBeat // send beat
	// SkipBeat logs that the previous write is still in flight and arms the next beat.
	SkipBeat // skip beat
	// CountBeat records a written heartbeat and disarms the write deadline.
	CountBeat // count beat
	// ConnectFailed logs the failure by the WARN/DEBUG/ERROR policy and arms the retry.
	ConnectFailed // connect failed
	// AbandonDial cancels a dial that outlived its deadline, then as ConnectFailed.
	AbandonDial // abandon dial
	// DropStream resets the stream after a failed or timed-out write or an
	// overdue Ack, logs WARN and arms the rejoin.
	DropStream // drop stream
	// RemoteEnded closes (orderly end) or resets (reset) the stream, logs it and arms the rejoin.
	RemoteEnded // remote ended
	// Refused ends a stream that did not survive its first beat and counts
	// it as a failed connection attempt (the log policy, the backoff).
	Refused // refused
	// ClosedUnproven closes a stream the aggregator ended in order before
	// it survived its first beat, logs it, and arms the backoff without
	// counting a failure: an orderly end is the aggregator shutting down,
	// not a refusal, and an aggregator that ends every new stream in order
	// is not redialled at once.
	ClosedUnproven // closed unproven
	// GoneAway closes a stream the aggregator sent GoAway on and waits the
	// retry-after it asked for; not a failure: INFO the first time in an
	// outage, DEBUG after.
	GoneAway // gone away
	// ProtocolError resets a stream on which the aggregator broke the
	// protocol (a bad frame, an Ack for a Beat not sent) and counts a failed
	// attempt (the log policy, the backoff): a broken aggregator is not
	// redialled at once, proven stream or not.
	ProtocolError // protocol error
	// ResetStale resets the stream a stale dial brought back.
	ResetStale // reset stale stream
	// Shutdown releases whatever the state holds: the dial, the stream, the timers.
	Shutdown // shut down
)

// numActions counts the actions (an int, so that stringer does not name it).
const numActions = int(Shutdown) + 1

// Retry is the delay an action arms before the next connection attempt.
type Retry uint8

// The retry delays.
const (
	// NoRetry: the action arms no retry.
	NoRetry Retry = iota // none
	// RetryRejoin: the first attempt after losing a proven stream comes
	// within one BeatPeriod (BackoffPolicy.Rejoin), so that a node that was
	// beating reconnects before an aggregator suspects it.
	RetryRejoin // within one BeatPeriod
	// RetryBackoff: a failed attempt waits the backoff delay
	// (BackoffPolicy.Delay: ReconnectPeriod, jittered).
	RetryBackoff // ReconnectPeriod
	// RetryGoAway: the GoAway's retry-after, at least BeatPeriod, at most
	// MaxRetryAfter (the protocol's bound), jittered (BackoffPolicy.After).
	RetryGoAway // retry-after
)

// actionRetry says which delay each action arms: the backoff rule as data,
// read by the machine and printed in docs/state-machine.md.
var actionRetry = [numActions]Retry{
	ConnectFailed:  RetryBackoff,
	AbandonDial:    RetryBackoff,
	Refused:        RetryBackoff,
	ClosedUnproven: RetryBackoff,
	ProtocolError:  RetryBackoff,
	DropStream:     RetryRejoin,
	RemoteEnded:    RetryRejoin,
	GoneAway:       RetryGoAway,
}

// Retry is the delay a arms before the next connection attempt.
func (a Action) Retry() Retry {
	if int(a) < numActions {
		return actionRetry[a]
	}
	return NoRetry
}

// Transition is one row of the table: in state From (or Any), event On under
// guard When moves the machine to To (or Same) and performs Do.
type Transition struct {
	From State
	On   EventKind
	When Guard
	To   State
	Do   Action
	// Why says in a few words why the row exists; the docs print it.
	Why string
}

// Table returns a copy of the transition table: the single source of truth
// for the runtime, the tests (every row must be exercised) and the generated
// diagram. The table is the only place that names a destination state. A row
// for a specific state takes precedence over a row for Any. Row indexes (as
// Lookup and Machine.LastRow return them) index this slice.
func Table() []Transition { return slices.Clone(table) }

// table is read-only: the index and every Machine share it.
var table = []Transition{
	{Disconnected, Start, Always, Connecting, OpenStream, "connect at once (the legacy waited one ReconnectPeriod)"},
	{Disconnected, Stop, Always, Stopped, Shutdown, "stopped before it started"},

	{Connecting, DialSucceeded, Awaited, Beating, BeginBeating, "first heartbeat at once (the legacy waited one BeatPeriod); the stream is unproven"},
	{Connecting, DialFailed, Awaited, Backoff, ConnectFailed, "retry after the backoff delay"},
	{Connecting, DialTimedOut, Awaited, Backoff, AbandonDial, "a dial that hangs counts as a failure"},
	{Connecting, Stop, Always, Stopped, Shutdown, "cancel the dial"},

	{Beating, BeatDue, Awaited, Beating, SendBeat, "one heartbeat every BeatPeriod"},
	{Beating, BeatDue, WriteBusy, Beating, SkipBeat, "never queue writes behind a slow one"},
	{Beating, BeatDue, Unproven, Beating, ConfirmStream, "v1: the stream survived its first beat: connected, the outage ends (a v2 stream waits for its first Ack)"},
	{Beating, WriteSucceeded, Awaited, Beating, CountBeat, "the heartbeat went out"},
	{Beating, WriteFailed, Awaited, Backoff, DropStream, "reset this stream only (the legacy closed the connection); rejoin at once"},
	{Beating, WriteTimedOut, Awaited, Backoff, DropStream, "a stalled write counts as a failed one; rejoin at once"},
	{Beating, RemoteClosed, Awaited, Backoff, RemoteEnded, "the aggregator ended the stream in order; rejoin at once"},
	{Beating, RemoteReset, Awaited, Backoff, RemoteEnded, "the stream was reset, by the aggregator or with its connection; rejoin before the aggregator suspects the node"},
	{Beating, WriteFailed, Unproven, Backoff, Refused, "lost before its first beat survived: a failed attempt"},
	{Beating, WriteTimedOut, Unproven, Backoff, Refused, "stalled before its first beat survived: a failed attempt"},
	{Beating, RemoteClosed, Unproven, Backoff, ClosedUnproven, "ended in order before its first beat survived (the aggregator shuts down): no rejoin, no failure"},
	{Beating, RemoteReset, Unproven, Backoff, Refused, "refused (too_many_nodes, not_allowed, line_too_long): a failed attempt, never a rejoin"},
	{Beating, AckReceived, Unproven, Same, ProveStream, "v2: the first Ack proves the stream: connected, the outage ends"},
	{Beating, AckReceived, Awaited, Same, CountAck, "v2: RTT and clock skew measured; the ack deadline moves on"},
	{Beating, AckReceived, Invalid, Backoff, ProtocolError, "v2: an Ack for a Beat not sent (or acknowledged twice): a broken aggregator, a failed attempt"},
	{Beating, AckOverdue, Awaited, Backoff, DropStream, "v2: a proven stream stopped acknowledging (a hung or black-holed aggregator); rejoin at once"},
	{Beating, AckOverdue, Unproven, Backoff, Refused, "v2: no Ack for the first Beat within 2×BeatPeriod (a hung aggregator): a failed attempt"},
	{Beating, WelcomeReceived, Awaited, Same, ApplyWelcome, "v2: beat at the period the aggregator asks for, within the sender's bounds"},
	{Beating, GoAwayReceived, Awaited, Backoff, GoneAway, "v2: the aggregator is full or shedding load: come back after its retry-after, no failure"},
	{Beating, BadFrame, Awaited, Backoff, ProtocolError, "v2: a malformed, unknown or unexpected frame: a broken aggregator, a failed attempt"},
	{Beating, Stop, Always, Stopped, Shutdown, "close the stream in order, v2 saying Bye first (reset it if a write is in flight)"},

	{Backoff, RetryDue, Awaited, Connecting, OpenStream, "next attempt"},
	{Backoff, Stop, Always, Stopped, Shutdown, "cancel the retry"},

	{Stopped, Stop, Always, Same, Nothing, "Stop is idempotent"},

	{Any, DialSucceeded, Stale, Same, ResetStale, "a late stream from an abandoned attempt is reset"},
	{Any, DialFailed, Stale, Same, Nothing, "late failure of an abandoned attempt"},
	{Any, WriteSucceeded, Stale, Same, Nothing, "late result of a dropped stream"},
	{Any, WriteFailed, Stale, Same, Nothing, "late result of a dropped stream"},
	{Any, RemoteClosed, Stale, Same, Nothing, "end of a dropped stream"},
	{Any, RemoteReset, Stale, Same, Nothing, "end of a dropped stream"},
	{Any, BeatDue, Stale, Same, Nothing, "a timer that was re-armed or cancelled"},
	{Any, RetryDue, Stale, Same, Nothing, "a timer that was re-armed or cancelled"},
	{Any, DialTimedOut, Stale, Same, Nothing, "a timer that was re-armed or cancelled"},
	{Any, WriteTimedOut, Stale, Same, Nothing, "a timer that was re-armed or cancelled"},
	{Any, AckOverdue, Stale, Same, Nothing, "a timer that was re-armed or cancelled"},
	{Any, WelcomeReceived, Stale, Same, Nothing, "a frame read from a dropped stream"},
	{Any, AckReceived, Stale, Same, Nothing, "a frame read from a dropped stream"},
	{Any, GoAwayReceived, Stale, Same, Nothing, "a frame read from a dropped stream"},
	{Any, BadFrame, Stale, Same, Nothing, "a frame read from a dropped stream"},
}

// noRow marks a (state, event, guard) triple that has no transition.
const noRow = -1

// index maps (state, event, guard) to a row of table, built once from it.
var index = buildIndex(table)

type rowIndex [numStates][numEvents][numGuards]int16

func buildIndex(table []Transition) *rowIndex {
	var ix rowIndex
	for s := range ix {
		for e := range ix[s] {
			for g := range ix[s][e] {
				ix[s][e][g] = noRow
			}
		}
	}
	// Specific rows first, so they take precedence over Any rows.
	for pass := 0; pass < 2; pass++ {
		for i, t := range table {
			if (t.From == Any) != (pass == 1) {
				continue
			}
			for s := range State(numStates) {
				if t.From != Any && t.From != s {
					continue
				}
				if ix[s][t.On][t.When] == noRow {
					ix[s][t.On][t.When] = int16(i)
				}
			}
		}
	}
	return &ix
}

// Lookup returns the index in Table of the row that handles event under
// guard in state, or false if there is none.
func Lookup(state State, event EventKind, guard Guard) (int, bool) {
	if int(state) >= numStates || int(event) >= numEvents || int(guard) >= numGuards {
		return noRow, false
	}
	i := index[state][event][guard]
	return int(i), i != noRow
}

// ValidateTable reports rows that can never match because an earlier row
// (or a specific row, for an Any row in every state) already covers them,
// and rows with out-of-range fields. The package's tests run it on Table.
func ValidateTable(table []Transition) error {
	ix := buildIndex(table)
	for i, t := range table {
		if (int(t.From) >= numStates && t.From != Any) || int(t.On) >= numEvents || int(t.When) >= numGuards ||
			(int(t.To) >= numStates && t.To != Same) || int(t.Do) >= numActions {
			return fmt.Errorf("fsm: row %d has a field out of range: %+v", i, t)
		}
		used := false
		for s := range State(numStates) {
			if int(ix[s][t.On][t.When]) == i {
				used = true
			}
		}
		if !used {
			return fmt.Errorf("fsm: row %d (%s on %s when %s) is shadowed by another row", i, t.From, t.On, t.When)
		}
	}
	return nil
}
