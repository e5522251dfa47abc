// Package clockwork is the module's one door to time. It re-exports the clock
// interface of github.com/benbjohnson/clock (the only import of that module
// in this repository) and adds a one-shot Timer armed at absolute deadlines
// with the test sync point that benbjohnson/clock's Mock lacks. (The
// many-node simulation keeps its own virtual clock: see package sim.)
//
// It is not github.com/jonboulle/clockwork, which shares the name: that is a
// separate clock library with its own Clock interface and FakeClock, and this
// module does not use it. Ours is a thin layer over benbjohnson/clock's
// Clock and Mock.
//
// # Why not the Mock's own timers
//
// benbjohnson/clock v1.3.5's Mock fires a timer by a blocking send on a
// one-slot channel while holding the mock's mutex, so a timer re-armed while a
// value is still pending wedges the whole clock. It then sleeps 1 ms of real
// time hoping the consumer caught up; nothing tells the caller that the
// consumer actually handled the tick. A Tick that already left
// runNextTimer's critical section can also race a concurrent Stop+Reset and
// delete the re-armed timer, and firing a timer whose deadline is in the past
// moves the Mock's Now backwards for the length of that tick.
//
// A Timer created on a *clock.Mock therefore does not use the Mock's timers
// at all. It registers in a per-Mock registry that knows every armed
// deadline; AdvanceToNext and AdvanceTo move the Mock with Mock.Set (never
// past the next registered deadline) and then deliver to the due Timers
// themselves, under the registry lock, with a non-blocking send into a
// channel that arming always drains first. They then wait, without sleeping or
// polling, until every owner has called Timer.Ack. The Mock's 1 ms sleep
// still happens inside Mock.Set, but nothing here relies on it.
//
// # Contract for owners
//
// A Timer is owned by one goroutine, which calls ResetAt, Stop, Ack and Close
// and receives from C. When the clock is a Mock, the owner must call Ack after
// it has fully handled every value it received from C (including any ResetAt
// it did while handling it); AdvanceToNext and AdvanceTo do not return until
// it has. A value that ResetAt, Stop or Close drains from C unread counts as
// acknowledged, because the owner never saw it. On any other clock Ack is a
// no-op, so the same owner code runs in production and under test.
//
// # Moving a Mock
//
// Move a Mock that has Timers only with AdvanceToNext, AdvanceTo or Advance.
// Mock.Add and Mock.Set move its time but do not fire Timers: those then fire,
// late, at the next AdvanceToNext/AdvanceTo, at the Mock's current time. Raw
// Mock timers (Mock.Timer, Mock.After, Mock.Ticker) still fire inside the
// Mock.Set these functions call, with the Mock's own semantics.
//
// Call the Advance functions for one Mock from one goroutine at a time, as the
// Mock itself requires of Set and Add.
package clockwork

import (
	"time"

	"github.com/benbjohnson/clock"
)

// Clock is the clock interface of github.com/benbjohnson/clock. It is an
// alias, so values of either name are interchangeable and no other package
// in the module needs to import benbjohnson/clock.
type Clock = clock.Clock

// Mock is benbjohnson/clock's mock clock, re-exported so that tests in other
// packages can name the type (for struct fields, helpers) without importing
// benbjohnson/clock themselves.
type Mock = clock.Mock

// realClock is shared: the wall clock is stateless.
var realClock = clock.New()

// Real returns the wall clock.
func Real() Clock { return realClock }

// NewMock returns a Mock set to start. clock.NewMock starts at the Unix epoch,
// which is a poor default for anything that logs or compares timestamps.
func NewMock(start time.Time) *clock.Mock {
	m := clock.NewMock()
	m.Set(start)
	return m
}
