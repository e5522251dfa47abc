package clockwork

import (
	"math"
	"slices"
	"time"

	"github.com/benbjohnson/clock"
)

// Timer is a one-shot timer armed at absolute times, for an owner that
// computes deadlines (a state machine that says "next beat at T") rather
// than durations. It is owned by one goroutine: that goroutine alone calls
// ResetAt, Stop, Ack and Close and receives from C. On a Mock, Deadline may
// also be called from other goroutines (a test inspecting an actor); on other
// clocks only the owner may call it.
//
// On a *clock.Mock the owner must call Ack after handling every value it
// receives from C; see the package documentation. Use NewTimer; the zero
// Timer is not usable.
type Timer struct {
	clk Clock

	// rt is the underlying timer on any clock other than a *clock.Mock. With
	// go 1.23+ timer semantics (this module's go directive) its Stop and
	// Reset discard any pending value, and we drain as well in case the Clock
	// is some other implementation.
	rt *clock.Timer

	// reg and ch are set on a *clock.Mock: the registry delivers into ch
	// itself, so ch is never touched by the Mock's blocking send.
	reg *registry
	ch  chan time.Time

	// On a Mock, at, armed and unacked are guarded by reg.mu because
	// AdvanceTo reads and writes them from the test goroutine. Otherwise
	// only the owner touches them.
	at      time.Time
	armed   bool
	unacked int // values delivered to ch, neither acked nor drained

	closed bool // owner-only
}

// NewTimer returns a disarmed Timer on c. If c is a *clock.Mock, the Timer
// registers with that Mock's registry so that NextDeadline, AdvanceToNext
// and AdvanceTo see it; Close unregisters it. A Timer that is never Closed
// keeps the registry entry (a few words) alive for the life of the Mock.
func NewTimer(c Clock) *Timer {
	if c == nil {
		panic("clockwork: NewTimer with a nil Clock")
	}
	if m, ok := c.(*clock.Mock); ok {
		t := &Timer{clk: c, ch: make(chan time.Time, 1)}
		r := acquire(m)
		t.reg = r
		r.mu.Lock()
		r.timers = append(r.timers, t)
		r.mu.Unlock()
		return t
	}
	// The clock interface has no disarmed timer, so make one that is as far
	// away as a Duration allows and stop it at once.
	rt := c.Timer(time.Duration(math.MaxInt64))
	rt.Stop()
	drainChan(rt.C)
	return &Timer{clk: c, rt: rt}
}

// C returns the channel on which the timer delivers the clock's time when it
// fires. It is the same channel for the whole life of the Timer and never nil,
// so it can sit in a select permanently; a disarmed Timer never sends on it.
func (t *Timer) C() <-chan time.Time {
	if t.ch != nil {
		return t.ch
	}
	return t.rt.C
}

// ResetAt stops the timer, drains any value pending on C, and arms it for the
// absolute time at. If at is not after the clock's now the timer fires as
// soon as possible: at once on the wall clock, and on a Mock at the next
// AdvanceToNext/AdvanceTo, without moving the Mock (never backwards).
//
// Draining first is what makes re-arming safe: a value from an earlier
// deadline can never be mistaken for this one, and on a Mock the channel is
// always empty when the timer fires. A drained, unread value counts as
// acknowledged. ResetAt panics after Close.
func (t *Timer) ResetAt(at time.Time) {
	if t.closed {
		panic("clockwork: ResetAt on a closed Timer")
	}
	if r := t.reg; r != nil {
		r.mu.Lock()
		t.drainLocked()
		t.at = at
		t.armed = true
		r.notifyLocked()
		r.mu.Unlock()
		return
	}
	t.rt.Stop()
	drainChan(t.rt.C)
	t.at = at
	t.armed = true
	t.rt.Reset(t.clk.Until(at))
}

// Stop disarms the timer and drains any value pending on C, so that after Stop
// returns nothing is received from C until the next ResetAt. A drained,
// unread value counts as acknowledged.
func (t *Timer) Stop() {
	if r := t.reg; r != nil {
		r.mu.Lock()
		t.drainLocked()
		t.armed = false
		r.notifyLocked()
		r.mu.Unlock()
		return
	}
	t.rt.Stop()
	drainChan(t.rt.C)
	t.armed = false
}

// Deadline returns the time the timer is armed for and true, or false if it
// is disarmed: never armed, stopped, closed, or already fired. On a Mock
// "fired" means delivered by AdvanceToNext/AdvanceTo; on other clocks the
// timer fires by itself, so Deadline reports false once the clock has
// reached the deadline.
func (t *Timer) Deadline() (time.Time, bool) {
	if r := t.reg; r != nil {
		r.mu.Lock()
		defer r.mu.Unlock()
		return t.at, t.armed
	}
	return t.at, t.armed && t.clk.Now().Before(t.at)
}

// Ack tells AdvanceToNext/AdvanceTo that the owner has fully handled one value
// it received from C, including any timers it re-armed and any other work
// the test expects to have happened by the time the clock moves on. Re-arming
// before Ack is fine: the value still counts as handled once Ack is called.
//
// On a Mock the owner must call Ack exactly once per value received from C;
// an Ack with nothing outstanding is ignored. On any other clock Ack does
// nothing, so production code calls it unconditionally.
func (t *Timer) Ack() {
	r := t.reg
	if r == nil {
		return
	}
	r.mu.Lock()
	if t.unacked > 0 {
		t.unacked--
		r.unacked--
		r.notifyLocked()
	}
	r.mu.Unlock()
}

// Close stops the timer and, on a Mock, unregisters it. A value delivered but
// not yet acknowledged counts as acknowledged, so an owner that exits
// mid-tick does not wedge AdvanceToNext. Close is idempotent; the Timer must
// not be re-armed afterwards.
func (t *Timer) Close() {
	if t.closed {
		return
	}
	t.closed = true
	r := t.reg
	if r == nil {
		t.Stop()
		return
	}
	r.mu.Lock()
	drainChan(t.ch)
	t.armed = false
	r.unacked -= t.unacked
	t.unacked = 0
	// slices.Delete keeps registration order (delivery order among Timers
	// due at the same instant is part of what makes runs reproducible) and
	// clears the vacated slot so the registry does not pin the Timer.
	if i := slices.Index(r.timers, t); i >= 0 {
		r.timers = slices.Delete(r.timers, i, i+1)
	}
	r.notifyLocked()
	r.mu.Unlock()
	release(r)
}

// drainLocked empties ch and counts an unread value as acknowledged: the
// owner will never see it, so it will never Ack it. r.mu must be held.
func (t *Timer) drainLocked() {
	select {
	case <-t.ch:
		if t.unacked > 0 {
			t.unacked--
			t.reg.unacked--
		}
	default:
	}
}

// drainChan discards a value pending on c, if any, without blocking.
func drainChan(c <-chan time.Time) {
	select {
	case <-c:
	default:
	}
}
