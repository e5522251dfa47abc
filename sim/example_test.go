package sim_test

import (
	"container/heap"
	"errors"
	"fmt"
	"time"

	"github.com/p2pbeat/heartbeat/fsm"
)

// entry is what the runtime's clock holds: an event for the machine, and for
// a timer the deadline it was armed for, so that a re-armed or cancelled
// timer's old entry can be skipped (stepping it would be harmless too: the
// machine classifies it as stale).
type entry struct {
	at    time.Time
	seq   int // push order: equal times pop in the order they were pushed
	ev    fsm.Event
	timer fsm.Timer
	armed time.Time // zero for network results
}

// virtualClock is the runtime's virtual time: a min-heap of entries by
// (time, push order), with container/heap.
type virtualClock []entry

func (c virtualClock) Len() int { return len(c) }
func (c virtualClock) Less(i, j int) bool {
	return c[i].at.Before(c[j].at) || (c[i].at.Equal(c[j].at) && c[i].seq < c[j].seq)
}
func (c virtualClock) Swap(i, j int) { c[i], c[j] = c[j], c[i] }
func (c *virtualClock) Push(x any)   { *c = append(*c, x.(entry)) }
func (c *virtualClock) Pop() any {
	old := *c
	e := old[len(old)-1]
	*c = old[:len(old)-1]
	return e
}

// Example_embedding shows a node runtime's own deterministic simulation
// driving one sender machine: the runtime owns virtual time (here a
// min-heap on container/heap), calls Step, carries out the effects itself, and
// schedules every ArmTimer deadline on its clock. Its network refuses the
// first two dials, then accepts. Nothing here reads the wall clock or
// starts a goroutine, so the output is the same on every run.
func Example_embedding() {
	start := time.Date(2025, time.January, 1, 0, 0, 0, 0, time.UTC)
	cfg := fsm.DefaultConfig()
	cfg.Seed = 7 // the backoff jitter is seeded: same seed, same delays
	m, err := fsm.New(cfg)
	if err != nil {
		panic(err)
	}

	clock := &virtualClock{}
	pushed := 0
	push := func(e entry) {
		e.seq = pushed
		pushed++
		heap.Push(clock, e)
	}
	var deadlines [fsm.NumTimers]time.Time
	refusals, beats := 2, 0
	at := func(now time.Time) string { return "+" + now.Sub(start).String() }

	step := func(now time.Time, ev fsm.Event) {
		effects, err := m.Step(now, ev)
		if err != nil {
			panic(err) // a rejected event is a bug in this runtime
		}
		// The slice is the machine's until the next Step: use it now.
		for _, e := range effects {
			switch e.Kind {
			case fsm.ArmTimer:
				deadlines[e.Timer] = e.At
				push(entry{at: e.At, ev: fsm.Event{Kind: e.Timer.Event()}, timer: e.Timer, armed: e.At})
			case fsm.CancelTimer:
				deadlines[e.Timer] = time.Time{}
			case fsm.Dial:
				if refusals > 0 { // nobody listens yet: refused after a 40ms round trip
					refusals--
					push(entry{at: now.Add(40 * time.Millisecond), ev: fsm.Event{Kind: fsm.DialFailed, Attempt: e.Attempt, Err: errors.New("connection refused")}})
				} else { // a handshake of two round trips
					push(entry{at: now.Add(80 * time.Millisecond), ev: fsm.Event{Kind: fsm.DialSucceeded, Attempt: e.Attempt}})
				}
			case fsm.Send: // the write fits in the send window: done at once
				beats++
				push(entry{at: now, ev: fsm.Event{Kind: fsm.WriteSucceeded, Attempt: e.Attempt}})
			case fsm.Log:
				fmt.Println(at(now), e.Log)
			case fsm.Transitioned:
				fmt.Println(at(now), e.From, "->", e.To)
			}
		}
	}

	step(start, fsm.Event{Kind: fsm.Start})
	for clock.Len() > 0 {
		en := heap.Pop(clock).(entry)
		now := en.at
		if now.Sub(start) > 45*time.Second {
			break
		}
		if !en.armed.IsZero() {
			if !deadlines[en.timer].Equal(en.armed) {
				continue // re-armed or cancelled since
			}
			deadlines[en.timer] = time.Time{} // it fires: the machine clears it
		}
		step(now, en.ev)
	}
	fmt.Println("heartbeats sent:", beats)

	// Output:
	// +0s Disconnected -> Connecting
	// +40ms WARN "Heartbeat service failed to connect" attempt=1 outage=0s failures=1 error="connection refused"
	// +40ms Connecting -> Backoff
	// +8.166776627s Backoff -> Connecting
	// +8.206776627s DEBUG "Heartbeat service failed to connect" attempt=2 outage=8.167s failures=2 error="connection refused"
	// +8.206776627s Connecting -> Backoff
	// +20.078428924s Backoff -> Connecting
	// +20.158428924s Connecting -> Beating
	// +23.158428924s INFO "Heartbeat service connected to aggregator" attempt=3 outage=20.118s failures=2
	// heartbeats sent: 9
}
