package fsm

import (
	"errors"
	"fmt"
	"time"
)

//go:generate go tool stringer -linecomment -type=State,EventKind,Timer,EffectKind,Guard,Action,Retry,Level,Protocol

// State is where the connection lifecycle stands.
type State uint8

// The states of a heartbeat sender.
const (
	// Disconnected is the initial state: nothing attempted yet.
	Disconnected State = iota
	// Connecting: a dial (opening the stream) is in flight.
	Connecting
	// Beating: the stream is open and heartbeats are written every BeatPeriod.
	Beating
	// Backoff: the last attempt failed or the stream was lost; a retry is armed.
	Backoff
	// Stopped is terminal: Stop was requested.
	Stopped
)

// numStates counts the states. It is an int, not a State, so that stringer
// does not name it.
const numStates = int(Stopped) + 1

// Any stands for every state in a transition's From. It only appears in the
// table, never as a machine's state.
const Any State = 255 // *

// Same as a transition's To means the machine stays in the state it was in.
const Same State = 254 // (same)

// States lists every state a machine can be in, in declaration order.
func States() []State {
	out := make([]State, numStates)
	for i := range out {
		out[i] = State(i)
	}
	return out
}

// EventKind names a fact that the shell reports to the machine.
type EventKind uint8

// The events. Results (dial, write, remote end) carry the attempt number of
// the stream they concern; the timer events are reported when a timer armed
// by an ArmTimer effect fires.
const (
	// Start asks the machine to begin connecting.
	Start EventKind = iota
	// Stop asks the machine to end; Stopped is terminal.
	Stop
	// DialSucceeded: the stream of attempt Event.Attempt is open.
	DialSucceeded
	// DialFailed: attempt Event.Attempt failed with Event.Err.
	DialFailed
	// WriteSucceeded: the heartbeat written on attempt Event.Attempt's stream went out.
	WriteSucceeded
	// WriteFailed: writing on attempt Event.Attempt's stream failed with Event.Err.
	WriteFailed
	// RemoteClosed: the aggregator closed attempt Event.Attempt's stream in order.
	RemoteClosed
	// RemoteReset: the aggregator reset attempt Event.Attempt's stream (or the connection died).
	RemoteReset
	// BeatDue: the beat timer fired.
	BeatDue
	// RetryDue: the backoff timer fired.
	RetryDue
	// DialTimedOut: the dial deadline passed before the dial ended.
	DialTimedOut
	// WriteTimedOut: the write deadline passed before the write ended.
	WriteTimedOut
	// WelcomeReceived (v2): the aggregator's Welcome arrived on attempt
	// Event.Attempt's stream; Event.BeatPeriod is the period it asks for
	// (0: none).
	WelcomeReceived
	// AckReceived (v2): the aggregator acknowledged the Beat Event.Seq on
	// attempt Event.Attempt's stream, having read it at Event.RemoteTime
	// on its own clock.
	AckReceived
	// AckOverdue (v2): the ack timer fired: the oldest unacknowledged Beat
	// got no Ack within 2×BeatPeriod plus the last RTT.
	AckOverdue
	// GoAwayReceived (v2): the aggregator refused or ended attempt
	// Event.Attempt's stream, asking the sender to wait Event.RetryAfter
	// (Event.Reason says why).
	GoAwayReceived
	// BadFrame (v2): the aggregator sent on attempt Event.Attempt's stream
	// something the protocol does not allow (a malformed or unknown frame,
	// a frame only a sender sends, a second Welcome), Event.Err says what.
	BadFrame
)

// numEvents counts the event kinds (an int, so that stringer does not name it).
const numEvents = int(BadFrame) + 1

// Events lists every event kind in declaration order.
func Events() []EventKind {
	out := make([]EventKind, numEvents)
	for i := range out {
		out[i] = EventKind(i)
	}
	return out
}

// Event is one fact, handed to Machine.Step together with the time it is
// handled at. Only the fields its Kind names are set.
type Event struct {
	Kind EventKind
	// Attempt identifies the stream a result concerns (1 for the first dial).
	Attempt uint64
	// Err is the failure of a DialFailed, WriteFailed, RemoteReset or
	// BadFrame.
	Err error
	// Protocol is what a DialSucceeded's stream negotiated (V1 if unset).
	Protocol Protocol
	// Seq is the Beat an AckReceived acknowledges.
	Seq uint64
	// RemoteTime is when the aggregator read that Beat, on its clock (AckReceived).
	RemoteTime time.Time
	// BeatPeriod is the period a WelcomeReceived asks for, 0 for none.
	BeatPeriod time.Duration
	// RetryAfter and Reason are a GoAwayReceived's delay and reason.
	RetryAfter time.Duration
	Reason     string
}

// Protocol is the heartbeat protocol a stream speaks, as multistream-select
// negotiated it (docs/protocol.md).
type Protocol uint8

// The protocols.
const (
	// V1 is fil/heartbeat/1.0.0: one-way JSON lines, no acknowledgement.
	V1 Protocol = iota // v1
	// V2 is /fil/heartbeat/2.0.0: Hello, acknowledged Beats, Bye.
	V2 // v2
)

// Timer names one of the machine's timers. Each is armed at an absolute
// time by an ArmTimer effect, and its firing is reported as its Event.
type Timer uint8

// The machine's timers. When two are due at once, the first here fires
// first (NextDeadline): an Ack overdue ends the stream before the beat due at
// the same instant is written on it.
const (
	// AckTimer (v2) fires when the oldest unacknowledged Beat is overdue.
	AckTimer Timer = iota // ack
	// BeatTimer paces heartbeats while Beating.
	BeatTimer // beat
	// RetryTimer ends a Backoff.
	RetryTimer // retry
	// DialTimer bounds a dial, in the machine's (possibly virtual) time.
	DialTimer // dial
	// WriteTimer bounds a write, in the machine's (possibly virtual) time.
	WriteTimer // write
)

// NumTimers is the number of timers, for shells that keep one slot per timer.
const NumTimers = int(WriteTimer) + 1

// numTimers is NumTimers for this package's own arrays.
const numTimers = NumTimers

// Event is the event kind reported when t fires.
func (t Timer) Event() EventKind {
	return [numTimers]EventKind{AckOverdue, BeatDue, RetryDue, DialTimedOut, WriteTimedOut}[t]
}

// timerOf is the timer whose firing is reported as k.
func timerOf(k EventKind) (Timer, bool) {
	switch k {
	case BeatDue:
		return BeatTimer, true
	case RetryDue:
		return RetryTimer, true
	case DialTimedOut:
		return DialTimer, true
	case WriteTimedOut:
		return WriteTimer, true
	case AckOverdue:
		return AckTimer, true
	}
	return 0, false
}

// EffectKind names a command the shell carries out.
type EffectKind uint8

// The effects, executed by the shell in the order Step returns them.
const (
	// Dial opens a stream for Effect.Attempt; its result comes back as
	// DialSucceeded or DialFailed with that attempt.
	Dial EffectKind = iota + 1
	// CancelDial abandons the dial of Effect.Attempt. A stream it still
	// brings back is reported as usual and will be reset.
	CancelDial
	// Send writes one heartbeat on Effect.Attempt's stream; on a v2 stream
	// it is the Beat Effect.Seq, sent at Effect.At, carrying the last RTT
	// Effect.RTT (preceded by the Hello on the stream's first write).
	// The result comes back as WriteSucceeded or WriteFailed.
	Send
	// ResetStream aborts Effect.Attempt's stream (after any error).
	ResetStream
	// CloseStream ends Effect.Attempt's stream in order; with Effect.Bye
	// (a clean stop of a v2 stream) it writes Bye first.
	CloseStream
	// ArmTimer arms Effect.Timer at the absolute time Effect.At, replacing
	// any earlier deadline of that timer.
	ArmTimer
	// CancelTimer disarms Effect.Timer.
	CancelTimer
	// Log emits Effect.Log.
	Log
	// Transitioned reports that the state changed from Effect.From to Effect.To.
	Transitioned
)

// Effect is one command for the shell. Only the fields its Kind names are set.
type Effect struct {
	Kind     EffectKind
	Attempt  uint64
	Timer    Timer
	At       time.Time
	From, To State
	Log      LogRecord
	// Seq and RTT are a v2 Send's Beat seq and last measured RTT (Seq is
	// 0 on a v1 stream). The RTT is as measured: the shell bounds it to
	// what the wire carries (wire2.MaxRTT).
	Seq uint64
	RTT time.Duration
	// Bye: a CloseStream that says Bye first (v2, clean stop).
	Bye bool
}

// String renders e compactly for traces and scenario files.
func (e Effect) String() string {
	switch e.Kind {
	case Send:
		if e.Seq != 0 {
			return fmt.Sprintf("%s attempt=%d seq=%d rtt=%s", e.Kind, e.Attempt, e.Seq, e.RTT)
		}
		return fmt.Sprintf("%s attempt=%d", e.Kind, e.Attempt)
	case CloseStream:
		if e.Bye {
			return fmt.Sprintf("%s attempt=%d bye", e.Kind, e.Attempt)
		}
		return fmt.Sprintf("%s attempt=%d", e.Kind, e.Attempt)
	case Dial, CancelDial, ResetStream:
		return fmt.Sprintf("%s attempt=%d", e.Kind, e.Attempt)
	case ArmTimer:
		return fmt.Sprintf("ArmTimer %s at=%s", e.Timer, e.At.UTC().Format(time.RFC3339Nano))
	case CancelTimer:
		return fmt.Sprintf("CancelTimer %s", e.Timer)
	case Log:
		return "Log " + e.Log.String()
	case Transitioned:
		return fmt.Sprintf("Transitioned %s -> %s", e.From, e.To)
	}
	return e.Kind.String()
}

// ErrRejected is matched by every error Step returns: the event is not one
// the current state accepts, which is a bug in the shell, never a panic.
var ErrRejected = errors.New("fsm: event not accepted in this state")

// RejectedError says which event a state did not accept.
type RejectedError struct {
	State State
	Event EventKind
	Guard Guard
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("fsm: state %s does not accept %s (%s)", e.State, e.Event, e.Guard)
}

// Is makes errors.Is(err, ErrRejected) true.
func (e *RejectedError) Is(target error) bool { return target == ErrRejected }

// ErrDialTimeout is the error of a dial that outlived Config.DialTimeout.
var ErrDialTimeout = errors.New("dial timed out")

// ErrWriteTimeout is the error of a write that outlived Config.WriteTimeout.
var ErrWriteTimeout = errors.New("write timed out")

// ErrRefused is matched by the error of a connection attempt whose stream
// opened but ended before it survived its first beat: the aggregator
// refused the sender (too_many_nodes, not_allowed, line_too_long) or the
// stream failed at once. It wraps the stream's own error.
var ErrRefused = errors.New("stream ended before its first heartbeat was acknowledged")

// ErrAckOverdue is the error of a v2 stream whose oldest unacknowledged
// Beat got no Ack within 2×BeatPeriod plus the last RTT.
var ErrAckOverdue = errors.New("heartbeat not acknowledged within 2×BeatPeriod plus the last RTT")

// ErrUnsentAck is matched by the error of an Ack for a Beat that was not
// sent on the stream, or was already acknowledged.
var ErrUnsentAck = errors.New("ack for a heartbeat not sent or already acknowledged")

// ackError is ErrUnsentAck with the numbers.
type ackError struct{ seq, acked, sent uint64 }

func (e ackError) Error() string {
	return fmt.Sprintf("%s: seq %d (acknowledged up to %d, sent up to %d)", ErrUnsentAck, e.seq, e.acked, e.sent)
}

func (e ackError) Is(target error) bool { return target == ErrUnsentAck }

// refusedError is ErrRefused with its cause.
type refusedError struct{ cause error }

func (e refusedError) Error() string {
	if e.cause == nil {
		return ErrRefused.Error()
	}
	return ErrRefused.Error() + ": " + e.cause.Error()
}

func (e refusedError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrRefused}
	}
	return []error{ErrRefused, e.cause}
}
