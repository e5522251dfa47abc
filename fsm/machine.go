// Package fsm is the heartbeat sender's connection lifecycle as a pure state
// machine: given the time and an event it returns effects for a shell to
// carry out. It starts no goroutine, reads no clock, does no I/O and draws
// randomness only from the seeded source it holds, so the same inputs give
// the same outputs, in a Service with a real network or in a simulation of
// thousands of nodes.
//
// Table holds every transition as data; Machine.Step looks the event up in
// it and performs the row's Action. See docs/state-machine.md for the
// diagram generated from Table and docs/logging.md for the log policy.
package fsm

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Config is the machine's timing and policy. All durations are required:
// the heartbeat package fills in the defaults.
type Config struct {
	// BeatPeriod is the time between heartbeats.
	BeatPeriod time.Duration
	// DialTimeout bounds a dial in the machine's time.
	DialTimeout time.Duration
	// WriteTimeout bounds one heartbeat write in the machine's time.
	WriteTimeout time.Duration
	// ErrorEvery is the legacy 10 minutes: a connection failure strictly
	// more than ErrorEvery after the last WARN/ERROR logs ERROR.
	ErrorEvery time.Duration
	// Backoff is the delay before the next attempt; Backoff.Base is the
	// ReconnectPeriod.
	Backoff BackoffPolicy
	// Seed seeds the jitter. The same seed gives the same delays.
	Seed uint64
}

// The defaults of the sender's policy. This is their one home: the
// heartbeat package, its options and the libp2p transport's backstop
// deadlines all derive from them.
const (
	// DefaultBeatPeriod is the legacy time between heartbeats.
	DefaultBeatPeriod = 3 * time.Second
	// DefaultReconnectPeriod is the legacy time between connection attempts.
	DefaultReconnectPeriod = 10 * time.Second
	// DefaultDialTimeout bounds a dial in the machine's time.
	DefaultDialTimeout = 10 * time.Second
	// DefaultWriteTimeout bounds a heartbeat write in the machine's time.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultErrorEvery is the legacy go-filecoin 10 minutes between ERROR
	// lines of a continuing connection failure.
	DefaultErrorEvery = 10 * time.Minute
	// DefaultJitter spreads each reconnect delay by ±20%, so that a fleet
	// that lost its aggregator at once does not retry in lockstep.
	DefaultJitter = 0.2
)

// DefaultConfig is the legacy timing (3 s beats, 10 s reconnects, ERROR
// every 10 minutes) with ±20% jitter on the reconnect delay and 10 s bounds
// on a dial and a write.
func DefaultConfig() Config {
	return Config{
		BeatPeriod:   DefaultBeatPeriod,
		DialTimeout:  DefaultDialTimeout,
		WriteTimeout: DefaultWriteTimeout,
		ErrorEvery:   DefaultErrorEvery,
		Backoff:      BackoffPolicy{Base: DefaultReconnectPeriod, Jitter: DefaultJitter},
	}
}

// Validate reports the first field that makes c unusable, by name.
func (c Config) Validate() error {
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"BeatPeriod", c.BeatPeriod}, {"DialTimeout", c.DialTimeout}, {"WriteTimeout", c.WriteTimeout}, {"ErrorEvery", c.ErrorEvery}} {
		if f.d <= 0 {
			return fmt.Errorf("fsm: Config.%s must be positive, got %s", f.name, f.d)
		}
	}
	if err := c.Backoff.Validate(); err != nil {
		return fmt.Errorf("fsm: Config.%w", err)
	}
	return nil
}

// MaxRetryAfter is the longest a GoAway makes the sender wait, jitter
// included: the protocol's bound on a GoAway's retry-after,
// wire2.MaxRetryAfter (restated here because the machine imports no codec;
// TestProtocolBounds in package heartbeat holds the two equal).
const MaxRetryAfter = time.Hour

// MaxPeriodFactor bounds the beat period a v2 aggregator may ask for in its
// Welcome: the sender beats at the asked period clamped to [BeatPeriod,
// MaxPeriodFactor×BeatPeriod]. Never
// faster than configured, so an aggregator cannot raise a node's load; at
// most 10 times slower, so that it cannot stretch the node's detection of a
// hung aggregator (2×the period) or its visibility without limit. The
// protocol leaves the bounds to the sender (docs/protocol.md, Welcome).
const MaxPeriodFactor = 10

// maxUnacked is how many v2 Beats a stream keeps the send times of for RTT.
// The ack deadline counts at most maxUnacked-3 BeatPeriods of RTT
// (ackTimeout), so a stream never has more Beats unacknowledged than this.
const maxUnacked = 16

// maxEffects bounds the effects of one step; the longest actions (leaving a
// v2 stream: close, four timers, log, retry, transition) need 8.
const maxEffects = 12

// Machine is one sender's state machine. It is not safe for concurrent use:
// one goroutine (the Service's actor, or a simulator) owns it.
type Machine struct {
	cfg       Config
	state     State
	since     time.Time
	attempt   uint64
	writing   bool
	proven    bool      // the current stream survived its first beat
	openedAt  time.Time // when the current stream opened
	deadlines [numTimers]time.Time
	policy    logPolicy
	rng       *rand.Rand
	beats     uint64
	lastErr   error
	lastRow   int

	// The current stream's protocol and beat period (a v2 Welcome may
	// change the period, within bounds).
	proto  Protocol
	period time.Duration
	// v2: seq is the last Beat seq written (per machine, across streams:
	// 1, 2, 3… per boot), acked the highest acknowledged on this stream;
	// sent keeps the send times of the unacknowledged ones, by seq.
	seq, acked uint64
	sent       [maxUnacked]sentBeat
	acks       uint64
	// RTT (last, smoothed per RFC 6298) and the aggregator's clock skew,
	// from the latest Ack; hasRTT once one was measured.
	rtt, srtt, skew time.Duration
	hasRTT          bool

	buf [maxEffects]Effect
	out []Effect
}

// sentBeat is when the Beat seq was written.
type sentBeat struct {
	seq uint64
	at  time.Time
}

// New returns a machine in Disconnected, or an error naming the invalid
// field of cfg.
func New(cfg Config) (*Machine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Machine{
		cfg:     cfg,
		policy:  logPolicy{errorEvery: cfg.ErrorEvery},
		rng:     rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		lastRow: noRow,
		period:  cfg.BeatPeriod,
	}
	return m, nil
}

// Step handles ev at now and returns the effects to carry out, in order.
// The returned slice is owned by the machine and valid until the next Step:
// copy what you keep. An event the current state does not accept returns a
// *RejectedError (matching ErrRejected) and changes nothing.
func (m *Machine) Step(now time.Time, ev Event) ([]Effect, error) {
	m.out = m.buf[:0]
	guard := m.classify(now, &ev)
	row, ok := Lookup(m.state, ev.Kind, guard)
	if !ok {
		m.lastRow = noRow
		return nil, &RejectedError{State: m.state, Event: ev.Kind, Guard: guard}
	}
	m.lastRow = row
	t := &table[row]
	from := m.state
	var due time.Time
	if tm, ok := timerOf(ev.Kind); ok && guard != Stale {
		// The timer fired and the shell knows it: clear it without a CancelTimer.
		due, m.deadlines[tm] = m.deadlines[tm], time.Time{}
	}
	// The wait a GoAway grants is drawn first, so that its log line can say
	// it; the backoff's is drawn after the action counted the failure.
	r := t.Do.Retry()
	var wait time.Duration
	if r == RetryGoAway {
		wait = m.retryDelay(r, &ev)
	}
	m.perform(t.Do, now, due, &ev, wait)
	if r != NoRetry {
		if r != RetryGoAway {
			wait = m.retryDelay(r, &ev)
		}
		m.arm(RetryTimer, now.Add(wait))
	}
	if to := t.To; to != Same && to != from {
		m.state, m.since = to, now
		m.emit(Effect{Kind: Transitioned, From: from, To: to})
	}
	return m.out, nil
}

// classify decides which guard ev falls under in the current state.
func (m *Machine) classify(now time.Time, ev *Event) Guard {
	switch ev.Kind {
	case Start, Stop:
		return Always
	case DialSucceeded, DialFailed:
		if m.state == Connecting && ev.Attempt == m.attempt {
			return Awaited
		}
	case WriteSucceeded:
		if m.state == Beating && m.writing && ev.Attempt == m.attempt {
			return Awaited
		}
	case WriteFailed:
		if m.state == Beating && m.writing && ev.Attempt == m.attempt {
			return m.onStream()
		}
	case RemoteClosed, RemoteReset:
		if m.state == Beating && ev.Attempt == m.attempt {
			return m.onStream()
		}
	case WelcomeReceived, GoAwayReceived, BadFrame:
		if m.onV2Stream(ev) {
			return Awaited
		}
	case AckReceived:
		if m.onV2Stream(ev) {
			if ev.Seq <= m.acked || ev.Seq > m.seq {
				return Invalid
			}
			return m.onStream()
		}
	default:
		if tm, ok := timerOf(ev.Kind); ok {
			at := m.deadlines[tm]
			if at.IsZero() || now.Before(at) {
				return Stale
			}
			switch {
			case tm == BeatTimer && m.writing:
				return WriteBusy
			case tm == BeatTimer && m.proto == V2:
				return Awaited // a v2 stream is proven by an Ack, not by time
			case tm == BeatTimer || tm == WriteTimer || tm == AckTimer:
				return m.onStream()
			}
			return Awaited
		}
	}
	return Stale
}

// onV2Stream reports whether ev is about the current stream, a v2 one.
func (m *Machine) onV2Stream(ev *Event) bool {
	return m.state == Beating && ev.Attempt == m.attempt && m.proto == V2
}

// onStream is the guard of an awaited event about the current stream:
// Unproven until the stream proved itself.
//
// A v2 stream is proven by its first Ack: an aggregator that accepts the
// stream and never answers (hung, black-holed) is then a failed attempt,
// found within 2×BeatPeriod, not a connection that is lost every cycle.
//
// The rule for protocol v1, which has no acknowledgement: a stream is
// proven when the beat after a successful write comes due and the stream is
// still open, one BeatPeriod after the first heartbeat. An aggregator that
// refuses a sender (too_many_nodes, not_allowed, line_too_long, a bad line)
// resets the stream within a round trip of it opening or of the first line,
// far less than a BeatPeriod; the end of an unproven stream therefore counts
// as a failed connection attempt, not as a lost stream.
func (m *Machine) onStream() Guard {
	if m.proven {
		return Awaited
	}
	return Unproven
}

// perform carries out a; due is the deadline of the timer whose firing ev
// reports (zero for other events), wait the delay a GoAway grants.
func (m *Machine) perform(a Action, now, due time.Time, ev *Event, wait time.Duration) {
	switch a {
	case Nothing:
	case OpenStream:
		m.disarm(RetryTimer)
		m.attempt++
		m.emit(Effect{Kind: Dial, Attempt: m.attempt})
		m.arm(DialTimer, now.Add(m.cfg.DialTimeout))
	case BeginBeating:
		m.disarm(DialTimer)
		m.proven, m.openedAt = false, now
		m.proto, m.period, m.acked = ev.Protocol, m.cfg.BeatPeriod, m.seq
		m.send(now, now)
	case ConfirmStream:
		m.prove()
		m.send(now, due)
	case ProveStream:
		m.prove()
		m.countAck(now, ev)
	case CountAck:
		m.countAck(now, ev)
	case ApplyWelcome:
		m.applyWelcome(now, ev.BeatPeriod)
	case GoneAway:
		level := m.policy.goAway(now)
		m.endStream(CloseStream, false)
		m.log(LogRecord{Level: level, Kind: LogGoAway, Asked: ev.RetryAfter, Granted: wait, Reason: ev.Reason})
	case ProtocolError:
		err := ev.Err
		if ev.Kind == AckReceived {
			err = ackError{seq: ev.Seq, acked: m.acked, sent: m.seq}
		}
		m.endStream(ResetStream, false)
		m.lastErr = err
		level, outage := m.policy.connectFailed(now)
		m.log(LogRecord{Level: level, Kind: LogProtocolError, Outage: outage.Round(time.Millisecond), Failures: m.policy.failures, Err: err})
	case SendBeat:
		m.send(now, due)
	case SkipBeat:
		m.log(LogRecord{Level: LevelDebug, Kind: LogBeatSkipped})
		m.arm(BeatTimer, m.nextBeat(now, due))
	case CountBeat:
		m.writing = false
		m.beats++
		m.disarm(WriteTimer)
	case ConnectFailed:
		m.disarm(DialTimer)
		m.connectFailed(now, ev.Err)
	case AbandonDial:
		m.disarm(DialTimer)
		m.emit(Effect{Kind: CancelDial, Attempt: m.attempt})
		m.connectFailed(now, ErrDialTimeout)
	case DropStream:
		rec := LogRecord{Level: LevelWarn, Kind: LogWriteFailed, Err: ev.Err}
		switch ev.Kind {
		case WriteTimedOut:
			rec.Err = ErrWriteTimeout
		case AckOverdue:
			rec.Kind, rec.Err = LogAckOverdue, ErrAckOverdue
		}
		m.loseStream(now, ResetStream, rec)
	case RemoteEnded:
		if ev.Kind == RemoteClosed {
			m.loseStream(now, CloseStream, LogRecord{Level: LevelInfo, Kind: LogRemoteClosed, Err: ev.Err})
		} else {
			m.loseStream(now, ResetStream, LogRecord{Level: LevelWarn, Kind: LogRemoteReset, Err: ev.Err})
		}
	case Refused:
		cause := ev.Err
		switch ev.Kind {
		case WriteTimedOut:
			cause = ErrWriteTimeout
		case AckOverdue:
			cause = ErrAckOverdue
		}
		m.endStream(ResetStream, false)
		m.connectFailed(now, refusedError{cause})
	case ClosedUnproven:
		m.loseStream(now, CloseStream, LogRecord{Level: LevelInfo, Kind: LogRemoteClosed, Err: ev.Err})
	case ResetStale:
		m.emit(Effect{Kind: ResetStream, Attempt: ev.Attempt})
	case Shutdown:
		switch m.state {
		case Connecting:
			m.emit(Effect{Kind: CancelDial, Attempt: m.attempt})
		case Beating:
			// Close in order, unless a write is in flight: then the end is
			// not orderly, and a reset also frees the blocked writer at once.
			how := CloseStream
			if m.writing {
				how = ResetStream
			}
			m.emit(Effect{Kind: how, Attempt: m.attempt, Bye: how == CloseStream && m.proto == V2})
		}
		m.writing, m.proven = false, false
		for tm := range m.deadlines {
			m.disarm(Timer(tm))
		}
	}
}

// send writes a heartbeat now and arms the next one a BeatPeriod after due.
// On a v2 stream it is the next Beat seq, and the ack deadline is armed
// if no earlier Beat is awaiting its Ack.
func (m *Machine) send(now, due time.Time) {
	m.writing = true
	e := Effect{Kind: Send, Attempt: m.attempt}
	if m.proto == V2 {
		m.seq++
		e.Seq, e.RTT, e.At = m.seq, m.rtt, now
		m.sent[m.seq%maxUnacked] = sentBeat{seq: m.seq, at: now}
	}
	m.emit(e)
	if m.proto == V2 && m.acked == m.seq-1 {
		m.arm(AckTimer, now.Add(m.ackTimeout()))
	}
	m.arm(WriteTimer, now.Add(m.cfg.WriteTimeout))
	m.arm(BeatTimer, m.nextBeat(now, due))
}

// ackTimeout is how long a Beat may wait for its Ack: 2×BeatPeriod plus the
// last RTT (docs/protocol.md, rules for a v2 sender), the RTT counted up to
// maxUnacked-3 periods so that the Beats awaiting an Ack fit in sent.
func (m *Machine) ackTimeout() time.Duration {
	return 2*m.period + min(m.rtt, (maxUnacked-3)*m.period)
}

// prove marks the stream proven (v1: it survived its first beat; v2: its
// first Ack came). The outage ended when this stream opened; it is
// reported now that the stream has shown it was not refused.
func (m *Machine) prove() {
	m.proven = true
	if ended, outage, failures := m.policy.connected(m.openedAt); ended {
		m.log(LogRecord{Level: LevelInfo, Kind: LogConnected, Outage: outage.Round(time.Millisecond), Failures: failures})
	}
	m.lastErr = nil
}

// countAck takes in the Ack of Beat ev.Seq (valid: classify checked it):
// it acknowledges every Beat up to it, measures the RTT and skew from its
// send time, and moves the ack deadline to the oldest Beat still awaiting
// its Ack, or disarms it.
func (m *Machine) countAck(now time.Time, ev *Event) {
	if b := m.sent[ev.Seq%maxUnacked]; b.seq == ev.Seq {
		r := max(now.Sub(b.at), 0)
		if m.hasRTT {
			m.srtt += (r - m.srtt) / 8 // RFC 6298 §2.3, alpha = 1/8
		} else {
			m.srtt, m.hasRTT = r, true // §2.2: the first measurement
		}
		m.rtt = r
		if !ev.RemoteTime.IsZero() {
			// The aggregator read the Beat half a round trip after it left.
			m.skew = ev.RemoteTime.Sub(b.at.Add(r / 2))
		}
	}
	m.acked = ev.Seq
	m.acks++
	m.armAck(now)
}

// armAck arms the ack deadline for the oldest unacknowledged Beat, or
// disarms it when every Beat is acknowledged.
func (m *Machine) armAck(now time.Time) {
	if m.acked >= m.seq {
		m.disarm(AckTimer)
		return
	}
	oldest := m.acked + 1
	at := now
	if b := m.sent[oldest%maxUnacked]; b.seq == oldest {
		at = b.at
	}
	m.arm(AckTimer, at.Add(m.ackTimeout()))
}

// applyWelcome beats at the period the aggregator asked for (0: none),
// clamped to [BeatPeriod, MaxPeriodFactor×BeatPeriod]; it never exceeds
// the larger of the asked and the configured period, so the protocol's
// bound on both holds. The next beat moves with it, as does the ack
// deadline.
func (m *Machine) applyWelcome(now time.Time, asked time.Duration) {
	if asked <= 0 {
		return
	}
	own := m.cfg.BeatPeriod
	p := min(max(asked, own), MaxPeriodFactor*own)
	m.log(LogRecord{Level: LevelInfo, Kind: LogBeatPeriod, Asked: asked, Granted: p})
	if p == m.period {
		return
	}
	if at, ok := m.Deadline(BeatTimer); ok {
		m.arm(BeatTimer, at.Add(p-m.period))
	}
	m.period = p
	if _, ok := m.Deadline(AckTimer); ok {
		m.armAck(now)
	}
}

// nextBeat keeps beats on the grid due + k*period, so a shell that handles
// timers late does not drift; if it fell a whole period behind, it starts a
// new grid at now.
func (m *Machine) nextBeat(now, due time.Time) time.Time {
	next := due.Add(m.period)
	if !next.After(now) {
		next = now.Add(m.period)
	}
	return next
}

// connectFailed counts a failed attempt and logs it by the policy; the
// action's Retry arms the backoff.
func (m *Machine) connectFailed(now time.Time, err error) {
	m.lastErr = err
	level, outage := m.policy.connectFailed(now)
	m.log(LogRecord{Level: level, Kind: LogConnectFailed, Outage: outage.Round(time.Millisecond), Failures: m.policy.failures, Err: err})
}

// loseStream ends the current, proven stream with how (ResetStream or
// CloseStream) after rec; the action's Retry arms the rejoin.
func (m *Machine) loseStream(now time.Time, how EffectKind, rec LogRecord) {
	m.lastErr = rec.Err
	m.endStream(how, false)
	m.log(rec)
	m.policy.lost(now)
}

// endStream disarms the stream's timers and ends it with how (bye: say Bye
// first).
func (m *Machine) endStream(how EffectKind, bye bool) {
	m.writing, m.proven = false, false
	m.disarm(BeatTimer)
	m.disarm(WriteTimer)
	m.disarm(AckTimer)
	m.acked = m.seq
	m.emit(Effect{Kind: how, Attempt: m.attempt, Bye: bye})
}

// retryDelay is the wait r stands for: the rejoin after a lost stream, the
// retry-after of ev's GoAway, or the backoff after the current failure count.
func (m *Machine) retryDelay(r Retry, ev *Event) time.Duration {
	var u float64
	if m.cfg.Backoff.Jitter > 0 {
		u = m.rng.Float64()
	}
	switch r {
	case RetryRejoin:
		return m.cfg.Backoff.Rejoin(m.cfg.BeatPeriod, u)
	case RetryGoAway:
		return m.cfg.Backoff.After(ev.RetryAfter, m.cfg.BeatPeriod, MaxRetryAfter, u)
	}
	return m.cfg.Backoff.Delay(m.policy.failures, u)
}

func (m *Machine) arm(t Timer, at time.Time) {
	m.deadlines[t] = at
	m.emit(Effect{Kind: ArmTimer, Timer: t, At: at})
}

func (m *Machine) disarm(t Timer) {
	if m.deadlines[t].IsZero() {
		return
	}
	m.deadlines[t] = time.Time{}
	m.emit(Effect{Kind: CancelTimer, Timer: t})
}

func (m *Machine) log(r LogRecord) {
	if r.Attempt == 0 {
		r.Attempt = m.attempt
	}
	m.emit(Effect{Kind: Log, Log: r})
}

// emit appends e to the step's effects. The buffer is sized for the longest
// action; if a future action outgrows it, append falls back to the heap
// rather than losing effects.
func (m *Machine) emit(e Effect) { m.out = append(m.out, e) }

// State is the current state.
func (m *Machine) State() State { return m.state }

// Since is when the machine entered its current state (zero before the first transition).
func (m *Machine) Since() time.Time { return m.since }

// Attempt is the number of the latest dial (0 before the first).
func (m *Machine) Attempt() uint64 { return m.attempt }

// Writing reports whether a heartbeat write is in flight on the current
// stream (Beating only).
func (m *Machine) Writing() bool { return m.state == Beating && m.writing }

// Beats is the number of heartbeats written successfully.
func (m *Machine) Beats() uint64 { return m.beats }

// Failures is the number of failed attempts in the current outage.
func (m *Machine) Failures() uint64 { return m.policy.failures }

// LastError is the error of the latest failure, nil once connected again.
func (m *Machine) LastError() error { return m.lastErr }

// Deadline is when t is armed to fire, and whether it is armed.
func (m *Machine) Deadline(t Timer) (time.Time, bool) {
	at := m.deadlines[t]
	return at, !at.IsZero()
}

// NextDeadline is the earliest armed timer and its deadline.
func (m *Machine) NextDeadline() (Timer, time.Time, bool) {
	var (
		best Timer
		at   time.Time
	)
	for t, d := range m.deadlines {
		if !d.IsZero() && (at.IsZero() || d.Before(at)) {
			best, at = Timer(t), d
		}
	}
	return best, at, !at.IsZero()
}

// LastRow is the index in Table of the row the last Step matched, or -1
// if it matched none.
func (m *Machine) LastRow() int { return m.lastRow }

// Protocol is the protocol of the current (or the last) stream.
func (m *Machine) Protocol() Protocol { return m.proto }

// BeatPeriod is the period the current (or the last) stream beats at: the
// configured one, or what a v2 Welcome asked for within the bounds.
func (m *Machine) BeatPeriod() time.Duration { return m.period }

// Seq is the seq of the last v2 Beat written (0 before the first).
func (m *Machine) Seq() uint64 { return m.seq }

// Acks is the number of v2 Acks taken in.
func (m *Machine) Acks() uint64 { return m.acks }

// RTT is the last measured round trip (a v2 Beat written to its Ack read),
// the smoothed RTT (RFC 6298: 7/8 of the previous plus 1/8 of the new
// measurement), and the aggregator's clock skew estimated from the last Ack
// (its receive time minus the Beat's send time plus half the RTT; positive:
// the aggregator's clock is ahead). ok is false until an Ack was measured.
func (m *Machine) RTT() (last, smoothed, skew time.Duration, ok bool) {
	return m.rtt, m.srtt, m.skew, m.hasRTT
}
