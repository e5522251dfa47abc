package fsm

import (
	"testing"
	"time"
)

// BenchmarkStep is one steady-state beat: the beat timer fires (Send, arm
// the write deadline and the next beat) and the write succeeds. It must not
// allocate; docs/benchmarks.md records the figure.
func BenchmarkStep(b *testing.B) {
	m, err := New(DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	now := t0
	mustStep := func(ev Event) {
		if _, err := m.Step(now, ev); err != nil {
			b.Fatal(err)
		}
	}
	mustStep(Event{Kind: Start})
	mustStep(Event{Kind: DialSucceeded, Attempt: 1})
	mustStep(Event{Kind: WriteSucceeded, Attempt: 1})
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		now = now.Add(3 * time.Second)
		mustStep(Event{Kind: BeatDue})
		mustStep(Event{Kind: WriteSucceeded, Attempt: 1})
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(2*b.N), "ns/step")
}

// BenchmarkStepOutage is the other hot path: a failed attempt and its retry.
func BenchmarkStepOutage(b *testing.B) {
	m, err := New(DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	now := t0
	if _, err := m.Step(now, Event{Kind: Start}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Step(now, Event{Kind: DialFailed, Attempt: m.Attempt(), Err: ErrDialTimeout}); err != nil {
			b.Fatal(err)
		}
		at, _ := m.Deadline(RetryTimer)
		now = at
		if _, err := m.Step(now, Event{Kind: RetryDue}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStepV2 is one steady-state v2 beat: the beat timer fires (Send
// with seq and RTT, the write deadline, the next beat, the ack deadline),
// the write succeeds and the Ack comes back (RTT, skew, the deadline
// disarmed). It must not allocate.
func BenchmarkStepV2(b *testing.B) {
	m, err := New(DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	now := t0
	mustStep := func(ev Event) {
		if _, err := m.Step(now, ev); err != nil {
			b.Fatal(err)
		}
	}
	mustStep(Event{Kind: Start})
	mustStep(Event{Kind: DialSucceeded, Attempt: 1, Protocol: V2})
	mustStep(Event{Kind: WriteSucceeded, Attempt: 1})
	mustStep(Event{Kind: AckReceived, Attempt: 1, Seq: 1, RemoteTime: now})
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		now = now.Add(3 * time.Second)
		mustStep(Event{Kind: BeatDue})
		mustStep(Event{Kind: WriteSucceeded, Attempt: 1})
		mustStep(Event{Kind: AckReceived, Attempt: 1, Seq: m.Seq(), RemoteTime: now})
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(3*b.N), "ns/step")
}
