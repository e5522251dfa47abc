package clockwork

import (
	"context"
	"sync"
	"time"

	"github.com/benbjohnson/clock"
)

// registry holds the Timers created on one *clock.Mock. The Mock itself has
// no hook to ask for the next deadline or to learn that a consumer handled a
// tick, so this is where both live.
type registry struct {
	mock *clock.Mock
	refs int // live Timers plus in-flight package calls; guarded by regMu

	// mu is held across Mock.Set and delivery in the Advance functions and
	// by every Timer method, so a fire never interleaves with a re-arm: the
	// race the Mock has between a Tick and a concurrent Stop+Reset cannot
	// happen here.
	mu      sync.Mutex
	timers  []*Timer // registration order
	unacked int      // sum of Timer.unacked
	// changed is closed (and cleared) on every state change that a waiter
	// might be waiting for; it is made lazily by the first waiter, so owners
	// pay nothing when nobody waits.
	changed chan struct{}
}

// regMu guards regs and every registry's refs.
var (
	regMu sync.Mutex
	regs  = make(map[*clock.Mock]*registry)
)

// acquire returns m's registry, creating it if needed, and takes a reference
// that release gives back. Holding a reference for the length of a call keeps
// every caller on the same registry even if the last Timer closes meanwhile.
func acquire(m *clock.Mock) *registry {
	if m == nil {
		panic("clockwork: nil *clock.Mock")
	}
	regMu.Lock()
	defer regMu.Unlock()
	r := regs[m]
	if r == nil {
		r = &registry{mock: m}
		regs[m] = r
	}
	r.refs++
	return r
}

// release drops a reference and removes the registry from the package map
// when nothing uses it, so finished tests do not pin their Mocks.
func release(r *registry) {
	regMu.Lock()
	defer regMu.Unlock()
	r.refs--
	if r.refs == 0 && regs[r.mock] == r {
		delete(regs, r.mock)
	}
}

// notifyLocked wakes every waiter. r.mu must be held.
func (r *registry) notifyLocked() {
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
}

// waitLocked blocks until cond holds or ctx is done. r.mu must be held; it is
// released while blocked and held again on return. Waiting is on a channel
// that state changes close: no sleeping, no polling.
func (r *registry) waitLocked(ctx context.Context, cond func() bool) error {
	for !cond() {
		if r.changed == nil {
			r.changed = make(chan struct{})
		}
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
			r.mu.Lock()
		case <-ctx.Done():
			r.mu.Lock()
			if cond() {
				return nil
			}
			return ctx.Err()
		}
	}
	return nil
}

// nextLocked returns the earliest armed deadline. r.mu must be held.
func (r *registry) nextLocked() (time.Time, bool) {
	var next time.Time
	found := false
	for _, t := range r.timers {
		if t.armed && (!found || t.at.Before(next)) {
			next, found = t.at, true
		}
	}
	return next, found
}

// armedLocked counts armed Timers. r.mu must be held.
func (r *registry) armedLocked() int {
	n := 0
	for _, t := range r.timers {
		if t.armed {
			n++
		}
	}
	return n
}

// fireAtLocked moves the Mock to deadline, or leaves it where it is if the
// deadline has already passed (a Mock moved backwards would hand owners a
// time before one they have already seen), then delivers now to every armed
// Timer due by then, in registration order. It returns the Mock's time.
// r.mu must be held.
func (r *registry) fireAtLocked(deadline time.Time) time.Time {
	now := r.mock.Now()
	if deadline.After(now) {
		// Set also fires any raw Mock timers due by then, with the Mock's
		// own semantics; our Timers are not among them.
		r.mock.Set(deadline)
		now = deadline
	}
	for _, t := range r.timers {
		if !t.armed || t.at.After(now) {
			continue
		}
		t.armed = false
		select {
		case t.ch <- now:
		default:
			// Arming always drains and a fire disarms, so an armed Timer's
			// channel is empty; a full one means the invariant broke.
			panic("clockwork: internal error: armed Timer has a pending value")
		}
		t.unacked++
		r.unacked++
	}
	r.notifyLocked()
	return now
}

// waitAckedLocked blocks until every delivered value has been acknowledged.
// r.mu must be held.
func (r *registry) waitAckedLocked(ctx context.Context) error {
	return r.waitLocked(ctx, func() bool { return r.unacked == 0 })
}

// NextDeadline returns the earliest deadline among the armed Timers registered
// on m, and false if none is armed. The deadline may be before m.Now() (a
// Timer armed in the past, or a Mock moved with Add/Set): such a Timer fires
// at m.Now() on the next AdvanceToNext.
func NextDeadline(m *clock.Mock) (time.Time, bool) {
	r := acquire(m)
	defer release(r)
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nextLocked()
}

// Armed returns how many Timers registered on m are armed.
func Armed(m *clock.Mock) int {
	r := acquire(m)
	defer release(r)
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.armedLocked()
}

// WaitArmed blocks until at least n Timers registered on m are armed, or ctx
// is done. It is the sync point for "the owner has armed its timer; now move
// the clock": without it a test could advance before the owner armed and
// find nothing to fire.
func WaitArmed(ctx context.Context, m *clock.Mock, n int) error {
	r := acquire(m)
	defer release(r)
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.waitLocked(ctx, func() bool { return r.armedLocked() >= n })
}

// AdvanceToNext moves m to the earliest armed deadline among its registered
// Timers (never past it; not at all if that deadline has already passed),
// fires every Timer due by then, and blocks until each fired Timer's owner
// has called Ack (or drained the value with ResetAt/Stop/Close). It returns
// m's new time, or m's time and false if no Timer is armed.
//
// Because the owner acknowledges only after handling, everything the fire
// caused (including re-arming) has happened when AdvanceToNext returns. An
// owner that never Acks blocks AdvanceToNext forever; AdvanceToNextContext
// bounds the wait.
func AdvanceToNext(m *clock.Mock) (time.Time, bool) {
	now, ok, _ := AdvanceToNextContext(context.Background(), m)
	return now, ok
}

// AdvanceToNextContext is AdvanceToNext with the wait for acknowledgements
// bounded by ctx. On ctx's error the clock has moved and the Timers have
// fired, but some owner has not acknowledged yet; a later Advance call waits
// for that acknowledgement too.
func AdvanceToNextContext(ctx context.Context, m *clock.Mock) (time.Time, bool, error) {
	r := acquire(m)
	defer release(r)
	r.mu.Lock()
	defer r.mu.Unlock()
	next, ok := r.nextLocked()
	if !ok {
		return r.mock.Now(), false, nil
	}
	now := r.fireAtLocked(next)
	return now, true, r.waitAckedLocked(ctx)
}

// AdvanceTo moves m to t one deadline at a time: it stops at every armed
// deadline on the way (including deadlines armed by owners while handling
// earlier fires), fires the Timers due there and waits for their Acks, and
// finally sets m to t. Timers due exactly at t fire. If t is before m.Now(),
// m stays where it is and only overdue Timers fire.
func AdvanceTo(m *clock.Mock, t time.Time) {
	_ = AdvanceToContext(context.Background(), m, t)
}

// AdvanceToContext is AdvanceTo with every wait for acknowledgements bounded
// by ctx; it stops at the first error, with m at the deadline it fired.
func AdvanceToContext(ctx context.Context, m *clock.Mock, t time.Time) error {
	r := acquire(m)
	defer release(r)
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.mock.Now(); t.Before(now) {
		t = now // never backwards; still fire whatever is overdue
	}
	for {
		next, ok := r.nextLocked()
		if !ok || next.After(t) {
			break
		}
		r.fireAtLocked(next)
		if err := r.waitAckedLocked(ctx); err != nil {
			return err
		}
	}
	if t.After(r.mock.Now()) {
		r.mock.Set(t)
	}
	return nil
}

// Advance is AdvanceTo(m, m.Now().Add(d)): the replacement for Mock.Add on a
// Mock that has Timers.
func Advance(m *clock.Mock, d time.Duration) {
	AdvanceTo(m, m.Now().Add(d))
}
