package clockwork

import (
	"context"
	"testing"
	"time"

	"github.com/benbjohnson/clock"
	"github.com/stretchr/testify/require"
)

func TestNewMockStartsAtStart(t *testing.T) {
	m := NewMock(t0)
	require.True(t, m.Now().Equal(t0))
	var c Clock = m // the alias is the benbjohnson interface
	require.NotNil(t, c)
}

func TestNewTimerIsDisarmed(t *testing.T) {
	m := NewMock(t0)
	tm := NewTimer(m)
	require.NotNil(t, tm.C())
	require.True(t, registered(m))
	_, armed := tm.Deadline()
	require.False(t, armed)
	_, ok := NextDeadline(m)
	require.False(t, ok)
	require.Equal(t, 0, Armed(m))

	now, ok := AdvanceToNext(m)
	require.False(t, ok, "nothing armed, nothing to advance to")
	require.True(t, now.Equal(t0))
	requireEmpty(t, tm.C(), "disarmed timer")

	tm.Close()
	tm.Close() // idempotent
	require.False(t, registered(m), "the last Close removes the registry entry")

	rt := NewTimer(Real())
	require.NotNil(t, rt.C())
	_, armed = rt.Deadline()
	require.False(t, armed)
	rt.Close()
}

func TestResetAtAfterClosePanics(t *testing.T) {
	for name, c := range map[string]Clock{"mock": NewMock(t0), "real": Real()} {
		t.Run(name, func(t *testing.T) {
			tm := NewTimer(c)
			tm.Close()
			require.Panics(t, func() { tm.ResetAt(t0) })
		})
	}
}

// TestRawMockRearmWithoutDrainBlocksClock documents the hazard this package
// exists for: with benbjohnson/clock's own Timer, re-arming while a fired
// value is still pending makes the next fire block inside the Mock's mutex,
// and the whole clock with it, until someone drains the channel.
func TestRawMockRearmWithoutDrainBlocksClock(t *testing.T) {
	m := NewMock(t0)
	raw := m.Timer(time.Second)
	m.Add(time.Second) // fires: the value sits in raw.C, unread
	raw.Reset(time.Second)

	added := make(chan struct{})
	go func() {
		m.Add(time.Second) // the fire blocks on the full one-slot channel
		close(added)
	}()
	// One-sided check: Add cannot finish while the channel is full, so if it
	// did finish here the hazard would be gone. Waiting on a timer channel
	// for a moment is not a sleep the test relies on for correctness.
	g := time.NewTimer(20 * time.Millisecond)
	select {
	case <-added:
		require.FailNow(t, "the raw Mock did not block; has benbjohnson/clock changed?")
	case <-g.C:
	}
	<-raw.C // drain: the blocked fire can now complete
	recv(t, added, "the raw Mock's Add to finish after draining")
}

// TestTimerRearmWithoutDrainDoesNotDeadlock is the same sequence with our
// Timer: the owner re-arms while a fired value is pending, repeatedly, and
// nothing blocks, because ResetAt drains (and counts the unread value as
// acknowledged) before arming.
func TestTimerRearmWithoutDrainDoesNotDeadlock(t *testing.T) {
	m := NewMock(t0)
	tm := NewTimer(m) // the test goroutine is the owner
	defer tm.Close()

	tm.ResetAt(t0.Add(time.Second))
	for i := 1; i <= 5; i++ {
		res := goAdvanceToNext(m)
		waitUnacked(t, m, 1) // the value is now pending in tm.C()
		requireNotYet(t, res, "AdvanceToNext before the pending value was handled")

		tm.ResetAt(t0.Add(time.Duration(i+1) * time.Second)) // no drain by the owner
		r := recv(t, res, "AdvanceToNext")
		require.True(t, r.ok)
		require.True(t, r.now.Equal(t0.Add(time.Duration(i)*time.Second)))
		requireEmpty(t, tm.C(), "drained timer")
	}

	// The last arm still fires normally.
	res := goAdvanceToNext(m)
	v := recv(t, tm.C(), "timer value")
	require.True(t, v.Equal(t0.Add(6*time.Second)))
	requireNotYet(t, res, "AdvanceToNext before Ack")
	tm.Ack()
	require.True(t, recv(t, res, "AdvanceToNext").ok)
}

func TestAdvanceToNextFiresExactlyTheDueTimers(t *testing.T) {
	m := NewMock(t0)
	// Each actor records the Mock's time while it handles the value: proof
	// that the clock sat at the deadline, not past it, during the handling.
	seenNow := make(chan time.Time, 16)
	onFire := func(_ *Timer, _ time.Time) { seenNow <- m.Now() }
	a := startActor(t, m, onFire)
	b := startActor(t, m, onFire)
	c := startActor(t, m, onFire)
	d := startActor(t, m, onFire)
	a.resetAt(t, t0.Add(1*time.Second))
	b.resetAt(t, t0.Add(1*time.Second))
	c.resetAt(t, t0.Add(2*time.Second))
	d.resetAt(t, t0.Add(5*time.Second))
	require.Equal(t, 4, Armed(m))

	next, ok := NextDeadline(m)
	require.True(t, ok)
	require.True(t, next.Equal(t0.Add(time.Second)))

	step := func(want time.Duration, fired, quiet []*actor) {
		t.Helper()
		now, ok := AdvanceToNext(m)
		require.True(t, ok)
		require.True(t, now.Equal(t0.Add(want)), "now %v", now)
		require.True(t, m.Now().Equal(t0.Add(want)), "never past the deadline")
		// AdvanceToNext returned, so every fired actor has acked, which it
		// does only after recording: these checks are not racy.
		for _, x := range fired {
			require.Equal(t, []time.Time{t0.Add(want)}, x.firedNow())
			require.True(t, recv(t, seenNow, "seen now").Equal(t0.Add(want)))
			_, armed := x.tm.Deadline()
			require.False(t, armed, "a fired timer is disarmed")
		}
		for _, x := range quiet {
			require.Empty(t, x.firedNow())
			_, armed := x.tm.Deadline()
			require.True(t, armed)
		}
	}
	step(1*time.Second, []*actor{a, b}, []*actor{c, d})
	step(2*time.Second, []*actor{c}, []*actor{d})
	step(5*time.Second, []*actor{d}, nil)

	now, ok := AdvanceToNext(m)
	require.False(t, ok)
	require.True(t, now.Equal(t0.Add(5*time.Second)), "nothing armed: the clock stays")
}

func TestAdvanceToNextBlocksUntilAck(t *testing.T) {
	m := NewMock(t0)
	handling := make(chan time.Time)
	release := make(chan struct{})
	a := startActor(t, m, func(_ *Timer, v time.Time) {
		handling <- v
		<-release // the actor acks only after the test says so
	})
	a.resetAt(t, t0.Add(time.Second))

	res := goAdvanceToNext(m)
	v := recv(t, handling, "the actor handling the fire")
	require.True(t, v.Equal(t0.Add(time.Second)))
	requireNotYet(t, res, "AdvanceToNext before Ack")

	close(release)
	r := recv(t, res, "AdvanceToNext after Ack")
	require.True(t, r.ok)
	require.True(t, r.now.Equal(t0.Add(time.Second)))
}

// TestRearmBeforeAckCountsOnAck: the owner re-arms while handling, then acks.
// The fire is handled once Ack is called, and the new deadline is visible as
// soon as AdvanceToNext returns, which is what lets a test step a periodic
// owner without any other synchronisation.
func TestRearmBeforeAckCountsOnAck(t *testing.T) {
	m := NewMock(t0)
	handling := make(chan struct{}, 16) // later fires must not block on it
	release := make(chan struct{})
	a := startActor(t, m, func(tm *Timer, v time.Time) {
		tm.ResetAt(v.Add(time.Second))
		handling <- struct{}{}
		<-release
	})
	a.resetAt(t, t0.Add(time.Second))

	res := goAdvanceToNext(m)
	recv(t, handling, "the actor handling the fire")
	requireNotYet(t, res, "AdvanceToNext after re-arm but before Ack")
	close(release)
	require.True(t, recv(t, res, "AdvanceToNext").ok)

	dl, armed := a.tm.Deadline()
	require.True(t, armed)
	require.True(t, dl.Equal(t0.Add(2*time.Second)))
	next, ok := NextDeadline(m)
	require.True(t, ok)
	require.True(t, next.Equal(t0.Add(2*time.Second)))

	// Once released, the actor handles and acks the next fire by itself.
	now, ok := AdvanceToNext(m)
	require.True(t, ok)
	require.True(t, now.Equal(t0.Add(2*time.Second)))
}

// TestSeveralTimersAtTheSameInstant: one owner with three timers due at once
// (it can only handle one at a time) and two more owners; one AdvanceToNext
// fires all five, and returns once all five are acked.
func TestSeveralTimersAtTheSameInstant(t *testing.T) {
	m := NewMock(t0)
	at := t0.Add(3 * time.Second)

	timers := []*Timer{NewTimer(m), NewTimer(m), NewTimer(m)}
	for _, tm := range timers {
		tm.ResetAt(at) // armed before the owner goroutine starts owning them
	}
	got := make(chan int, 3)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-timers[0].C():
				got <- 0
				timers[0].Ack()
			case <-timers[1].C():
				got <- 1
				timers[1].Ack()
			case <-timers[2].C():
				got <- 2
				timers[2].Ack()
			case <-quit:
				for _, tm := range timers {
					tm.Close()
				}
				return
			}
		}
	}()
	defer func() { close(quit); <-done }()

	x := startActor(t, m, nil)
	y := startActor(t, m, nil)
	x.resetAt(t, at)
	y.resetAt(t, at)
	later := startActor(t, m, nil)
	later.resetAt(t, at.Add(time.Nanosecond))
	require.Equal(t, 6, Armed(m))

	now, ok := AdvanceToNext(m)
	require.True(t, ok)
	require.True(t, now.Equal(at))
	require.ElementsMatch(t, []int{0, 1, 2}, []int{<-got, <-got, <-got})
	require.Equal(t, []time.Time{at}, x.firedNow())
	require.Equal(t, []time.Time{at}, y.firedNow())
	require.Empty(t, later.firedNow(), "one nanosecond later is not due")
	require.Equal(t, 1, Armed(m))
}

// TestAdvanceToAcrossManyDeadlines: a periodic owner re-arms one second after
// every fire; AdvanceTo stops at every one of those deadlines (each armed only
// while handling the previous fire), so the owner sees every beat at its
// exact time, and the clock ends at the target.
func TestAdvanceToAcrossManyDeadlines(t *testing.T) {
	m := NewMock(t0)
	seen := make(chan [2]time.Time, 128)
	p := startActor(t, m, func(tm *Timer, v time.Time) {
		seen <- [2]time.Time{v, m.Now()}
		tm.ResetAt(v.Add(time.Second))
	})
	one := startActor(t, m, nil)
	p.resetAt(t, t0.Add(time.Second))
	one.resetAt(t, t0.Add(2500*time.Millisecond))

	const beats = 40
	end := t0.Add(beats*time.Second + 500*time.Millisecond)
	AdvanceTo(m, end)
	require.True(t, m.Now().Equal(end))

	require.Len(t, seen, beats)
	for i := 1; i <= beats; i++ {
		s := <-seen
		want := t0.Add(time.Duration(i) * time.Second)
		require.True(t, s[0].Equal(want), "beat %d delivered %v", i, s[0])
		require.True(t, s[1].Equal(want), "beat %d handled at %v: the clock jumped past it", i, s[1])
	}
	require.Equal(t, []time.Time{t0.Add(2500 * time.Millisecond)}, one.firedNow())
	next, ok := NextDeadline(m)
	require.True(t, ok)
	require.True(t, next.Equal(t0.Add((beats+1)*time.Second)))

	// A deadline exactly at the target fires; Advance is relative.
	Advance(m, 500*time.Millisecond)
	require.True(t, m.Now().Equal(t0.Add((beats+1)*time.Second)))
	require.Len(t, seen, 1)
}

func TestResetAtInThePastFires(t *testing.T) {
	m := NewMock(t0)
	Advance(m, 10*time.Second) // no timers: just moves the clock
	now := m.Now()
	require.True(t, now.Equal(t0.Add(10*time.Second)))

	a := startActor(t, m, nil)
	a.resetAt(t, t0.Add(5*time.Second))
	next, ok := NextDeadline(m)
	require.True(t, ok)
	require.True(t, next.Equal(t0.Add(5*time.Second)), "NextDeadline reports the deadline as armed")

	got, ok := AdvanceToNext(m)
	require.True(t, ok)
	require.True(t, got.Equal(now), "an overdue timer fires at now; the clock never goes back")
	require.True(t, m.Now().Equal(now))
	require.Equal(t, []time.Time{now}, a.firedNow())

	// Exactly now also fires without moving the clock.
	a.resetAt(t, now)
	got, ok = AdvanceToNext(m)
	require.True(t, ok)
	require.True(t, got.Equal(now))
	require.Equal(t, []time.Time{now}, a.firedNow())

	// AdvanceTo a time in the past fires whatever is overdue, stays put.
	a.resetAt(t, t0)
	AdvanceTo(m, t0)
	require.True(t, m.Now().Equal(now))
	require.Equal(t, []time.Time{now}, a.firedNow())
}

func TestStopAndResetPreventFiring(t *testing.T) {
	m := NewMock(t0)
	a := startActor(t, m, nil)

	a.resetAt(t, t0.Add(time.Second))
	a.do(t, func(tm *Timer) { tm.Stop() })
	_, ok := NextDeadline(m)
	require.False(t, ok)
	AdvanceTo(m, t0.Add(10*time.Second))
	require.Empty(t, a.firedNow(), "a stopped timer does not fire")

	// A second ResetAt replaces the first deadline.
	a.resetAt(t, t0.Add(20*time.Second))
	a.resetAt(t, t0.Add(30*time.Second))
	AdvanceTo(m, t0.Add(25*time.Second))
	require.Empty(t, a.firedNow())
	dl, armed := a.tm.Deadline()
	require.True(t, armed)
	require.True(t, dl.Equal(t0.Add(30*time.Second)))
	AdvanceTo(m, t0.Add(40*time.Second))
	require.Equal(t, []time.Time{t0.Add(30 * time.Second)}, a.firedNow())
}

// TestStopDrainsAPendingValue: a fired value the owner never read is thrown
// away by Stop, counts as acknowledged, and is never received afterwards.
func TestStopDrainsAPendingValue(t *testing.T) {
	m := NewMock(t0)
	tm := NewTimer(m)
	defer tm.Close()
	tm.ResetAt(t0.Add(time.Second))

	res := goAdvanceToNext(m)
	waitUnacked(t, m, 1)
	requireNotYet(t, res, "AdvanceToNext with a value pending")
	tm.Stop()
	require.True(t, recv(t, res, "AdvanceToNext after Stop").ok)
	requireEmpty(t, tm.C(), "stopped timer")
	tm.Ack() // nothing outstanding: ignored
	waitUnacked(t, m, 0)
}

// TestCloseWhileUnackedCountsAsAcked covers an owner that exits mid-tick,
// both before reading the value and after reading it but before Ack.
func TestCloseWhileUnackedCountsAsAcked(t *testing.T) {
	for _, read := range []bool{false, true} {
		m := NewMock(t0)
		tm := NewTimer(m)
		tm.ResetAt(t0.Add(time.Second))
		res := goAdvanceToNext(m)
		if read {
			recv(t, tm.C(), "timer value")
		} else {
			waitUnacked(t, m, 1)
		}
		requireNotYet(t, res, "AdvanceToNext before Close")
		tm.Close()
		require.True(t, recv(t, res, "AdvanceToNext after Close").ok)
		require.False(t, registered(m))
	}
}

func TestAdvanceToNextContextBoundsTheWait(t *testing.T) {
	m := NewMock(t0)
	tm := NewTimer(m)
	defer tm.Close()
	tm.ResetAt(t0.Add(time.Second))

	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		now time.Time
		ok  bool
		err error
	}
	res := make(chan result, 1)
	go func() {
		now, ok, err := AdvanceToNextContext(ctx, m)
		res <- result{now, ok, err}
	}()
	waitUnacked(t, m, 1)
	cancel()
	r := recv(t, res, "AdvanceToNextContext after cancel")
	require.ErrorIs(t, r.err, context.Canceled)
	require.True(t, r.ok, "the timer fired; only the wait was cut short")
	require.True(t, r.now.Equal(t0.Add(time.Second)))

	// The fire is still outstanding; a later Advance waits for it.
	done := make(chan struct{})
	go func() {
		AdvanceTo(m, t0.Add(2*time.Second))
		close(done)
	}()
	v := recv(t, tm.C(), "timer value")
	require.True(t, v.Equal(t0.Add(time.Second)))
	requireNotYet(t, done, "AdvanceTo with an outstanding fire")
	tm.Ack()
	recv(t, done, "AdvanceTo after Ack")
	require.True(t, m.Now().Equal(t0.Add(2*time.Second)))
}

func TestWaitArmed(t *testing.T) {
	m := NewMock(t0)
	a := startActor(t, m, nil)
	b := startActor(t, m, nil)

	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- WaitArmed(ctx, m, 2) }()

	a.resetAt(t, t0.Add(time.Second))
	requireNotYet(t, res, "WaitArmed with one of two armed")
	b.resetAt(t, t0.Add(time.Second))
	require.NoError(t, recv(t, res, "WaitArmed"))
	require.Equal(t, 2, Armed(m))

	short, cancelShort := context.WithCancel(context.Background())
	cancelShort()
	require.ErrorIs(t, WaitArmed(short, m, 3), context.Canceled)
}

// TestRawMockTimersStillFire: a raw Mock timer (as other code may create)
// fires inside the Mock.Set that AdvanceTo performs.
func TestRawMockTimersStillFire(t *testing.T) {
	m := NewMock(t0)
	raw := m.Timer(3 * time.Second)
	AdvanceTo(m, t0.Add(5*time.Second))
	v := recv(t, raw.C, "raw mock timer")
	require.True(t, v.Equal(t0.Add(3*time.Second)))
}

func TestRegistryIsPerMock(t *testing.T) {
	m1, m2 := NewMock(t0), NewMock(t0)
	a := startActor(t, m1, nil)
	b := startActor(t, m2, nil)
	a.resetAt(t, t0.Add(time.Second))
	b.resetAt(t, t0.Add(2*time.Second))

	now, ok := AdvanceToNext(m2)
	require.True(t, ok)
	require.True(t, now.Equal(t0.Add(2*time.Second)))
	require.Empty(t, a.firedNow(), "m1's timer is not moved by m2")
	require.True(t, m1.Now().Equal(t0))

	a.stop()
	b.stop()
	require.False(t, registered(m1))
	require.False(t, registered(m2))
}

func TestRealClockTimer(t *testing.T) {
	c := Real()
	tm := NewTimer(c)
	defer tm.Close()

	at := time.Now().Add(20 * time.Millisecond)
	tm.ResetAt(at)
	dl, armed := tm.Deadline()
	require.True(t, armed)
	require.True(t, dl.Equal(at))
	v := recv(t, tm.C(), "real timer")
	require.False(t, v.Before(at), "fired at %v, before its deadline %v", v, at)
	tm.Ack() // a no-op on the real clock
	_, armed = tm.Deadline()
	require.False(t, armed, "the deadline has passed")

	// In the past: fires at once.
	tm.ResetAt(time.Now().Add(-time.Hour))
	recv(t, tm.C(), "real timer armed in the past")

	// Stopped, and re-armed far away: nothing arrives. The wait is a bound
	// on how long we look, not something the test relies on for ordering.
	tm.ResetAt(time.Now().Add(5 * time.Millisecond))
	tm.Stop()
	other := NewTimer(c)
	defer other.Close()
	other.ResetAt(time.Now().Add(10 * time.Millisecond))
	tm.ResetAt(time.Now().Add(time.Hour))
	tm.ResetAt(time.Now().Add(time.Hour)) // re-arm an armed timer
	look := time.NewTimer(50 * time.Millisecond)
	defer look.Stop()
	select {
	case v := <-tm.C():
		require.FailNowf(t, "unexpected fire", "stopped/re-armed timer fired at %v", v)
	case <-look.C:
	}
	recv(t, other.C(), "the other real timer")
	_, armed = tm.Deadline()
	require.True(t, armed)
}

// Compile-time check that the aliases are the benbjohnson types.
var (
	_ Clock = (*clock.Mock)(nil)
	_ *Mock = (*clock.Mock)(nil)
	_ Clock = Real()
)
