package fsm

import (
	"fmt"
	"time"
)

// Level is a log record's severity.
type Level uint8

// The levels, in hclog's order.
const (
	LevelDebug Level = iota + 1 // DEBUG
	LevelInfo                   // INFO
	LevelWarn                   // WARN
	LevelError                  // ERROR
)

// LogKind says which message a log record carries.
type LogKind uint8

// The log messages of the sender.
const (
	// LogConnectFailed: a connection attempt failed (WARN, DEBUG or ERROR by the policy).
	LogConnectFailed LogKind = iota + 1
	// LogConnected: connected again after failures or a lost stream (INFO).
	LogConnected
	// LogWriteFailed: a heartbeat could not be written; the stream is dropped (WARN).
	LogWriteFailed
	// LogRemoteClosed: the aggregator closed the stream in order (INFO).
	LogRemoteClosed
	// LogRemoteReset: the stream was reset, by the aggregator or with its
	// connection (WARN).
	LogRemoteReset
	// LogBeatSkipped: a beat came due while the previous write was still in flight (DEBUG).
	LogBeatSkipped
	// LogAckOverdue: a proven v2 stream stopped acknowledging Beats; it is
	// reset (WARN).
	LogAckOverdue
	// LogProtocolError: the aggregator broke the v2 protocol; the stream is
	// reset and the attempt counted as failed (WARN, DEBUG or ERROR by the
	// policy).
	LogProtocolError
	// LogGoAway: the aggregator sent GoAway; the sender waits before dialing
	// again (INFO the first time in an outage, DEBUG after).
	LogGoAway
	// LogBeatPeriod: the aggregator's Welcome asked for a beat period (INFO).
	LogBeatPeriod
)

// LogRecord is a log line decided by the machine. The shell renders it with
// Message and its fields as key/value pairs.
type LogRecord struct {
	Level Level
	Kind  LogKind
	// Attempt is the attempt the record is about.
	Attempt uint64
	// Outage is how long the failures have lasted, to the millisecond: for
	// LogConnectFailed since the first failure (as the legacy counted), for
	// LogConnected since the stream was lost or the first failure.
	Outage time.Duration
	// Failures is the number of failed attempts in the current outage.
	Failures uint64
	// Err is the failure, if any.
	Err error
	// Asked is what the aggregator asked for (LogGoAway: the retry-after;
	// LogBeatPeriod: the period), Granted what the sender does (the wait
	// before the next attempt; the period it beats at), within its bounds.
	Asked, Granted time.Duration
	// Reason is the GoAway's reason, as the aggregator sent it (untrusted text).
	Reason string
}

// Message is the log line's text: constant for a kind, with the facts in
// the record's fields (hclog's convention), so a search or an alert on a
// message matches every line of its kind. A failed connection keeps the
// legacy text's constant start, "Heartbeat service failed to connect", so
// searches on that keep matching.
func (r LogRecord) Message() string {
	switch r.Kind {
	case LogConnectFailed:
		return "Heartbeat service failed to connect"
	case LogConnected:
		return "Heartbeat service connected to aggregator"
	case LogWriteFailed:
		return "disconnecting from aggregator, failed to send heartbeat"
	case LogRemoteClosed:
		return "aggregator closed the heartbeat stream"
	case LogRemoteReset:
		// Not "the aggregator reset it": a lost connection (keepalive
		// timeout, network reset) ends the stream the same way; the
		// shell adds the cause it can tell from the error.
		return "heartbeat stream reset"
	case LogBeatSkipped:
		return "heartbeat skipped: the previous write is still in flight"
	case LogAckOverdue:
		return "disconnecting from aggregator, heartbeats not acknowledged"
	case LogProtocolError:
		return "disconnecting from aggregator, it broke the heartbeat protocol"
	case LogGoAway:
		return "aggregator asked to come back later"
	case LogBeatPeriod:
		return "aggregator asked for another beat period"
	}
	return fmt.Sprintf("LogKind(%d)", uint8(r.Kind))
}

// String renders the record for traces and scenario files.
func (r LogRecord) String() string {
	s := fmt.Sprintf("%s %q attempt=%d", r.Level, r.Message(), r.Attempt)
	if r.Kind == LogConnected || r.Kind == LogConnectFailed || r.Kind == LogProtocolError {
		s += fmt.Sprintf(" outage=%s failures=%d", r.Outage, r.Failures)
	}
	switch r.Kind {
	case LogGoAway:
		s += fmt.Sprintf(" retry_after=%s wait=%s reason=%q", r.Asked, r.Granted, r.Reason)
	case LogBeatPeriod:
		s += fmt.Sprintf(" asked=%s beat_period=%s", r.Asked, r.Granted)
	}
	if r.Err != nil {
		s += fmt.Sprintf(" error=%q", r.Err.Error())
	}
	return s
}

// logPolicy decides the level of connection-failure lines, with the legacy
// semantics: the first failure since the last success is WARN, later ones
// DEBUG, and one strictly more than errorEvery after the last WARN/ERROR is
// ERROR, which restarts the period.
type logPolicy struct {
	errorEvery time.Duration
	failedAt   time.Time // first failure since the last success; zero while none
	loggedAt   time.Time // the last WARN or ERROR of this outage
	lostAt     time.Time // when an open stream was lost; zero if none
	failures   uint64
	goneAway   bool // a GoAway was logged at INFO in this outage
}

// connectFailed records a failed attempt at now and returns its level and
// how long the failures have lasted.
func (p *logPolicy) connectFailed(now time.Time) (Level, time.Duration) {
	p.failures++
	if p.failedAt.IsZero() {
		p.failedAt, p.loggedAt = now, now
		return LevelWarn, 0
	}
	if now.Sub(p.loggedAt) > p.errorEvery {
		p.loggedAt = now
		return LevelError, now.Sub(p.failedAt)
	}
	return LevelDebug, now.Sub(p.failedAt)
}

// lost records that an open stream ended at now.
func (p *logPolicy) lost(now time.Time) { p.lostAt = now }

// goAway records a GoAway at now, which is no failure: it starts an outage
// unless one is under way, and returns its level (INFO the first time in the
// outage, DEBUG after: an aggregator that stays full does not flood the log).
func (p *logPolicy) goAway(now time.Time) Level {
	if p.lostAt.IsZero() && p.failedAt.IsZero() {
		p.lostAt = now
	}
	if p.goneAway {
		return LevelDebug
	}
	p.goneAway = true
	return LevelInfo
}

// connected records a success at now. It reports whether an outage just
// ended, how long it lasted and how many attempts failed in it, and starts
// afresh.
func (p *logPolicy) connected(now time.Time) (ended bool, outage time.Duration, failures uint64) {
	start := p.lostAt
	if start.IsZero() {
		start = p.failedAt
	}
	ended = !start.IsZero()
	if ended {
		outage = now.Sub(start)
	}
	failures = p.failures
	*p = logPolicy{errorEvery: p.errorEvery}
	return ended, outage, failures
}
