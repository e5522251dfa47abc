package clockwork

import (
	"context"
	"testing"
	"time"

	"github.com/benbjohnson/clock"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// guard bounds every wait in these tests. It is a failure guard only: on a
// healthy run nothing waits for it, so it can be generous for a busy 2-core
// machine under -race.
const guard = 20 * time.Second

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// recv receives from ch or fails the test after guard.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	g := time.NewTimer(guard)
	defer g.Stop()
	select {
	case v := <-ch:
		return v
	case <-g.C:
		require.FailNowf(t, "timed out", "waiting for %s", what)
		panic("unreachable")
	}
}

// requireNotYet fails if ch already has a value (or is closed).
func requireNotYet[T any](t *testing.T, ch <-chan T, what string) {
	t.Helper()
	select {
	case <-ch:
		require.FailNowf(t, "too early", "%s happened too early", what)
	default:
	}
}

// requireEmpty fails if a value is pending on c.
func requireEmpty(t *testing.T, c <-chan time.Time, what string) {
	t.Helper()
	select {
	case v := <-c:
		require.FailNowf(t, "unexpected fire", "%s fired at %v", what, v)
	default:
	}
}

type advResult struct {
	now time.Time
	ok  bool
}

// goAdvanceToNext runs AdvanceToNext in its own goroutine, so the test can
// check that it is still blocked.
func goAdvanceToNext(m *clock.Mock) <-chan advResult {
	res := make(chan advResult, 1)
	go func() {
		now, ok := AdvanceToNext(m)
		res <- advResult{now, ok}
	}()
	return res
}

// waitUnacked blocks until m's registry has n unacknowledged fires. It uses
// the registry's own change notification: no sleeping, no polling.
func waitUnacked(t *testing.T, m *clock.Mock, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	r := acquire(m)
	defer release(r)
	r.mu.Lock()
	defer r.mu.Unlock()
	require.NoError(t, r.waitLocked(ctx, func() bool { return r.unacked == n }))
}

// registered reports whether m still has an entry in the package registry map.
func registered(m *clock.Mock) bool {
	regMu.Lock()
	defer regMu.Unlock()
	_, ok := regs[m]
	return ok
}

// actor owns one Timer in its own goroutine, the way the heartbeat Service
// does: it receives from C, runs onFire, then Acks. Everything else the test
// wants done to the Timer runs inside the actor through do, so the Timer
// really has a single owner.
type actor struct {
	tm    *Timer
	fired chan time.Time // every value received, in order
	cmds  chan func(*Timer)
	quit  chan struct{}
	done  chan struct{}
}

// startActor starts an actor on c. onFire (may be nil) runs in the actor
// after a value has been recorded on fired and before Ack.
func startActor(t *testing.T, c Clock, onFire func(tm *Timer, v time.Time)) *actor {
	t.Helper()
	a := &actor{
		tm:    NewTimer(c),
		fired: make(chan time.Time, 1024),
		cmds:  make(chan func(*Timer)),
		quit:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	go func() {
		defer close(a.done)
		defer a.tm.Close()
		for {
			select {
			case v := <-a.tm.C():
				a.fired <- v
				if onFire != nil {
					onFire(a.tm, v)
				}
				a.tm.Ack()
			case f := <-a.cmds:
				f(a.tm)
			case <-a.quit:
				return
			}
		}
	}()
	t.Cleanup(a.stop)
	return a
}

// do runs f in the actor and waits until it has returned.
func (a *actor) do(t *testing.T, f func(*Timer)) {
	t.Helper()
	ran := make(chan struct{})
	g := time.NewTimer(guard)
	defer g.Stop()
	select {
	case a.cmds <- func(tm *Timer) { f(tm); close(ran) }:
	case <-g.C:
		require.FailNow(t, "actor busy for too long")
	}
	recv(t, ran, "actor command")
}

func (a *actor) resetAt(t *testing.T, at time.Time) { a.do(t, func(tm *Timer) { tm.ResetAt(at) }) }

// stop ends the actor (which Closes its Timer) and waits for it. Idempotent.
func (a *actor) stop() {
	select {
	case <-a.quit:
	default:
		close(a.quit)
	}
	<-a.done
}

// firedNow returns the values the actor has received so far.
func (a *actor) firedNow() []time.Time {
	var out []time.Time
	for {
		select {
		case v := <-a.fired:
			out = append(out, v)
		default:
			return out
		}
	}
}
