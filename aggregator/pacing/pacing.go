// Package pacing admits new protocol v2 streams at a bounded rate and tells
// the ones it refuses when to come back (GoAway's retry-after): the
// aggregator's reconnect pacing (issue 10), shared by package aggregator and
// the simulator (package sim), so that what the simulation measures is the
// code that runs.
//
// A Pacer is pure: the time is passed in, the random source is injected, it
// does no I/O and starts no goroutine. It is not safe for concurrent use;
// the aggregator serialises it with a mutex, the simulator is single
// threaded. Admit does not allocate.
package pacing

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Headroom is the share of the accept rate handed out as slots to refused
// streams: slots are spaced 1/(Headroom·rate) apart. A sender comes back
// at its slot plus a small upward spread (fsm.BackoffPolicy.After), and
// new arrivals compete for the same capacity; handing out 90% of it keeps
// most returning senders from finding the rate used up and being refused
// again.
const Headroom = 0.9

// MinRate and MaxRate bound a positive rate. The Pacer keeps the time of
// each of the last Limit admissions (24 bytes each): MaxRate keeps that
// ring at 2.4 MB, and is far past the TLS/noise handshakes a libp2p host
// completes in a second. MinRate is one stream an hour, the longest a
// GoAway can ask a sender to wait (wire2.MaxRetryAfter); a slower rate's
// period would soon overflow time.Duration (1e-12 made it negative, and
// every stream was admitted).
const (
	MinRate = 1.0 / 3600
	MaxRate = 100_000
)

// Pacer admits at most Limit new streams in any interval of Period (a
// sliding window over the last Limit admissions, so the bound holds for
// every interval, not only aligned ones), and gives each refused stream a
// slot: the earliest free one, spaced Period/(Headroom·Limit) apart.
type Pacer struct {
	limit   int           // admissions per period; 0: pacing off
	period  time.Duration // 1 s, or 1/rate below one a second
	spacing time.Duration // between two slots
	window  time.Duration // the cap on a retry-after
	ring    []time.Time   // the last limit admissions, oldest at head
	head    int
	next    time.Time // the earliest slot not handed out
	rng     *rand.Rand
}

// New returns a Pacer admitting rate new streams a second (rate <= 0:
// pacing off, every stream admitted; otherwise in [MinRate, MaxRate]),
// whose retry-afters are at most window (> 0). rng draws Spread's delays;
// nil seeds one at random. It returns an error for a rate or window out
// of range.
//
// Rounding: a rate of at least 1 is rounded down to a whole number of
// streams a second (250.7 admits 250 in any second); a rate below 1
// admits one stream in any 1/rate (0.25: one in any 4 s).
func New(rate float64, window time.Duration, rng *rand.Rand) (*Pacer, error) {
	if math.IsNaN(rate) || math.IsInf(rate, 0) {
		return nil, fmt.Errorf("pacing: rate must be finite, got %v", rate)
	}
	if rate > 0 && (rate < MinRate || rate > MaxRate) {
		return nil, fmt.Errorf("pacing: rate must be in [%g, %g] a second (or <= 0: off), got %v", float64(MinRate), float64(MaxRate), rate)
	}
	if window <= 0 {
		return nil, fmt.Errorf("pacing: window must be positive, got %v", window)
	}
	if rng == nil {
		rng = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	p := &Pacer{window: window, rng: rng}
	if rate <= 0 {
		return p, nil
	}
	p.limit, p.period = int(rate), time.Second
	if rate < 1 {
		p.limit, p.period = 1, time.Duration(float64(time.Second)/rate)
	}
	p.spacing = time.Duration(float64(p.period) / (Headroom * float64(p.limit)))
	p.ring = make([]time.Time, p.limit)
	return p, nil
}

// Limit and Period are the bound Admit keeps: at most Limit admissions in
// any interval of length Period. Limit is 0 with pacing off. Spacing is
// the time between two slots.
func (p *Pacer) Limit() int             { return p.limit }
func (p *Pacer) Period() time.Duration  { return p.period }
func (p *Pacer) Spacing() time.Duration { return p.spacing }

// Admit decides on a new stream arriving at now (now must not go
// backwards between calls): ok, or refused with the retry-after to send in
// GoAway. The retry-after is the stream's slot minus now: the earliest
// slot not yet handed out and no earlier than the time the rate frees
// again; a slot further than the window is not handed out, the stream is
// told to come back after the window.
func (p *Pacer) Admit(now time.Time) (ok bool, retryAfter time.Duration) {
	if p.limit == 0 {
		return true, 0
	}
	oldest := p.ring[p.head]
	free := oldest.Add(p.period)
	if oldest.IsZero() || !free.After(now) {
		p.ring[p.head] = now
		p.head++
		if p.head == len(p.ring) {
			p.head = 0
		}
		return true, 0
	}
	slot := free
	if p.next.After(slot) {
		slot = p.next
	}
	retryAfter = slot.Sub(now)
	if retryAfter > p.window {
		return false, p.window
	}
	p.next = slot.Add(p.spacing)
	return false, retryAfter
}

// Spread is a delay drawn uniformly from [0, window): the retry-after of a
// GoAway that is not about the rate (a full tracker), where no slot is
// kept (the capacity is not the rate).
func (p *Pacer) Spread() time.Duration { return p.SpreadWithin(p.window) }

// SpreadWithin is a delay drawn uniformly from [0, min(window, d)), 0 when
// that is empty: the retry-after of a shutdown's GoAway, d being
// ShutdownSpread's bound.
func (p *Pacer) SpreadWithin(d time.Duration) time.Duration {
	d = min(d, p.window)
	if d <= 0 {
		return 0
	}
	return time.Duration(p.rng.Int64N(int64(d)))
}

// ShutdownSpread bounds the retry-after an aggregator that shuts down in
// order gives its v2 senders: half its tracker's StartupGrace. A restarted
// aggregator turns the nodes it restored from its store Down once that
// grace has passed without a beat, so the senders must be told to come
// back well within it: spread over the whole pacing window (a minute by
// default), most of them would come back after it and page as Down on
// every planned restart. Spreading the first returns over the grace still
// breaks up the herd; the restarted aggregator's own pacing (slots) does
// the rest.
func ShutdownSpread(startupGrace time.Duration) time.Duration { return startupGrace / 2 }
