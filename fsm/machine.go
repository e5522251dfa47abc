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

// maxEffects bounds the effects of one step; the longest action (a beat
// after a recovery) needs 8.
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

	buf [maxEffects]Effect
	out []Effect
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
	}
	return m, nil
}

// Step handles ev at now and returns the effects to carry out, in order.
// The returned slice is owned by the machine and valid until the next Step:
// copy what you keep. An event the current state does not accept returns a
// *RejectedError (matching ErrRejected) and changes nothing.
func (m *Machine) Step(now time.Time, ev Event) ([]Effect, error) {
	m.out = m.buf[:0]
	guard := m.classify(now, ev)
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
	m.perform(t.Do, now, due, ev)
	if r := t.Do.Retry(); r != NoRetry {
		m.arm(RetryTimer, now.Add(m.retryDelay(r)))
	}
	if to := t.To; to != Same && to != from {
		m.state, m.since = to, now
		m.emit(Effect{Kind: Transitioned, From: from, To: to})
	}
	return m.out, nil
}

// classify decides which guard ev falls under in the current state.
func (m *Machine) classify(now time.Time, ev Event) Guard {
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
	default:
		if tm, ok := timerOf(ev.Kind); ok {
			at := m.deadlines[tm]
			if at.IsZero() || now.Before(at) {
				return Stale
			}
			switch {
			case tm == BeatTimer && m.writing:
				return WriteBusy
			case tm == BeatTimer || tm == WriteTimer:
				return m.onStream()
			}
			return Awaited
		}
	}
	return Stale
}

// onStream is the guard of an awaited event about the current stream:
// Unproven until the stream survived its first beat.
//
// The rule, for protocol v1, which has no acknowledgement: a stream is
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
// reports (zero for other events).
func (m *Machine) perform(a Action, now, due time.Time, ev Event) {
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
		m.send(now, now)
	case ConfirmStream:
		m.proven = true
		// The outage ended when this stream opened; it is reported now that
		// the stream has shown it was not refused.
		if ended, outage, failures := m.policy.connected(m.openedAt); ended {
			m.log(LogRecord{Level: LevelInfo, Kind: LogConnected, Outage: outage.Round(time.Millisecond), Failures: failures})
		}
		m.lastErr = nil
		m.send(now, due)
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
		err := ev.Err
		if ev.Kind == WriteTimedOut {
			err = ErrWriteTimeout
		}
		m.loseStream(now, ResetStream, LogRecord{Level: LevelWarn, Kind: LogWriteFailed, Err: err})
	case RemoteEnded:
		if ev.Kind == RemoteClosed {
			m.loseStream(now, CloseStream, LogRecord{Level: LevelInfo, Kind: LogRemoteClosed, Err: ev.Err})
		} else {
			m.loseStream(now, ResetStream, LogRecord{Level: LevelWarn, Kind: LogRemoteReset, Err: ev.Err})
		}
	case Refused:
		cause := ev.Err
		if ev.Kind == WriteTimedOut {
			cause = ErrWriteTimeout
		}
		m.endStream(ResetStream)
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
			m.emit(Effect{Kind: how, Attempt: m.attempt})
		}
		m.writing, m.proven = false, false
		for tm := range m.deadlines {
			m.disarm(Timer(tm))
		}
	}
}

// send writes a heartbeat now and arms the next one a BeatPeriod after due.
func (m *Machine) send(now, due time.Time) {
	m.writing = true
	m.emit(Effect{Kind: Send, Attempt: m.attempt})
	m.arm(WriteTimer, now.Add(m.cfg.WriteTimeout))
	m.arm(BeatTimer, m.nextBeat(now, due))
}

// nextBeat keeps beats on the grid due + k*BeatPeriod, so a shell that
// handles timers late does not drift; if it fell a whole period behind, it
// starts a new grid at now.
func (m *Machine) nextBeat(now, due time.Time) time.Time {
	next := due.Add(m.cfg.BeatPeriod)
	if !next.After(now) {
		next = now.Add(m.cfg.BeatPeriod)
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
	m.endStream(how)
	m.log(rec)
	m.policy.lost(now)
}

// endStream disarms the stream's timers and ends it with how.
func (m *Machine) endStream(how EffectKind) {
	m.writing, m.proven = false, false
	m.disarm(BeatTimer)
	m.disarm(WriteTimer)
	m.emit(Effect{Kind: how, Attempt: m.attempt})
}

// retryDelay is the wait r stands for: the rejoin after a lost stream, or
// the backoff after the current failure count.
func (m *Machine) retryDelay(r Retry) time.Duration {
	var u float64
	if m.cfg.Backoff.Jitter > 0 {
		u = m.rng.Float64()
	}
	if r == RetryRejoin {
		return m.cfg.Backoff.Rejoin(m.cfg.BeatPeriod, u)
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
