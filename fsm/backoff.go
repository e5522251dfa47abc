package fsm

import (
	"fmt"
	"math"
	"time"
)

// maxDelay bounds every backoff delay: about 146 years, far beyond any sane
// cap, and small enough that float64 arithmetic and the conversion back to a
// time.Duration can never overflow, even with +100% jitter.
const maxDelay = time.Duration(1 << 62)

// BackoffPolicy is how long to wait before the next connection attempt.
//
// The n-th consecutive failure waits Base * Growth^(n-1), capped at Max, then
// scaled by a uniform factor in [1-Jitter, 1+Jitter). With Growth 1 and no
// jitter it waits exactly Base every time, as the legacy ReconnectPeriod did.
type BackoffPolicy struct {
	// Base is the first delay: the config's ReconnectPeriod.
	Base time.Duration
	// Growth multiplies the delay after each further failure; 1 (or 0) is none.
	Growth float64
	// Max caps the delay before jitter; 0 means no cap but maxDelay.
	Max time.Duration
	// Jitter is the relative spread, in [0, 1): 0.2 spreads ±20%.
	Jitter float64
}

// Validate reports the first field that makes p unusable.
func (p BackoffPolicy) Validate() error {
	switch {
	case p.Base <= 0:
		return fmt.Errorf("Backoff.Base (the ReconnectPeriod) must be positive, got %s", p.Base)
	case math.IsNaN(p.Growth) || p.Growth < 0 || (p.Growth > 0 && p.Growth < 1) || math.IsInf(p.Growth, 0):
		return fmt.Errorf("Backoff.Growth must be 0, or a finite factor >= 1, got %v", p.Growth)
	case p.Max < 0 || (p.Max > 0 && p.Max < p.Base):
		return fmt.Errorf("Backoff.Max must be 0 (no cap) or at least Base (%s), got %s", p.Base, p.Max)
	case math.IsNaN(p.Jitter) || p.Jitter < 0 || p.Jitter >= 1:
		return fmt.Errorf("Backoff.Jitter must be in [0, 1), got %v", p.Jitter)
	}
	return nil
}

// Delay is the wait after the n-th consecutive failure (n >= 1; 0 counts as
// 1) with the uniform draw u in [0, 1) (ignored without jitter). It never
// overflows, never goes negative and never exceeds maxDelay, for any n.
func (p BackoffPolicy) Delay(n uint64, u float64) time.Duration {
	if n == 0 {
		n = 1
	}
	limit := maxDelay
	if p.Max > 0 && p.Max < limit {
		limit = p.Max
	}
	d := float64(p.Base)
	if p.Growth > 1 && n > 1 {
		// Pow saturates to +Inf rather than wrapping; the cap then applies.
		d *= math.Pow(p.Growth, float64(n-1))
	}
	if d > float64(limit) || math.IsNaN(d) {
		d = float64(limit)
	}
	if p.Jitter > 0 {
		d *= 1 + p.Jitter*(2*u-1)
	}
	switch {
	case d >= float64(maxDelay):
		return maxDelay
	case d < 0:
		return 0
	}
	return time.Duration(d)
}

// Rejoin is the wait before the first attempt after losing a stream that
// had proven itself (it survived its first beat): uniform in [0, window)
// with the draw u in [0, 1) when the policy has jitter, window/2 (the same
// mean) without. The machine passes its BeatPeriod as window.
//
// Why one BeatPeriod: an aggregator suspects a node after a few missed
// beats, and a reset of every connection (a restart of a proxy, a network
// blip) must not turn a healthy fleet Suspect, which a whole
// ReconnectPeriod (10 s) would. Spreading the attempts over the window keeps
// a fleet that lost its streams at once from redialling in lockstep. Only
// this first attempt is fast: if it fails, Delay applies from the first
// failure on.
func (p BackoffPolicy) Rejoin(window time.Duration, u float64) time.Duration {
	if window <= 0 {
		return 0
	}
	if p.Jitter <= 0 {
		return window / 2
	}
	d := time.Duration(u * float64(window))
	switch {
	case d >= window:
		return window - 1
	case d < 0:
		return 0
	}
	return d
}

// GoAwaySpread is the largest extra wait After adds to a GoAway's
// retry-after, as a share of it (and never more than the floor, one
// BeatPeriod). Small on purpose: the aggregator's retry-afters are slots
// spaced 1/(0.9·rate) apart, and a wider spread moves senders into each
// other's slots (in the simulation's restart at 1,000 nodes and 20/s,
// 10% left 98.4% Up at the window's end, 2% 100%).
const GoAwaySpread = 0.02

// After is the wait a GoAway asks for: retryAfter raised to floor (the
// machine passes its BeatPeriod, so that an aggregator answering "retry
// after 0" cannot make the sender redial in a tight loop) and lowered to
// ceiling (the machine passes MaxRetryAfter, the protocol's bound), plus,
// when the policy has jitter, an extra wait of u (in [0, 1)) times
// min(floor, GoAwaySpread of it), never taking it past ceiling.
//
// The spread is upward only: the protocol's rule (docs/protocol.md) is
// that a sender does not come back before the retry-after, which the
// aggregator uses as the sender's slot in its accept rate (package
// aggregator/pacing). The small spread keeps senders told the same delay
// (a shutdown's uniform draw can repeat) from returning in lockstep.
func (p BackoffPolicy) After(retryAfter, floor, ceiling time.Duration, u float64) time.Duration {
	d := min(max(retryAfter, floor), ceiling)
	if p.Jitter > 0 {
		extra := float64(min(floor, time.Duration(GoAwaySpread*float64(d)))) * u
		d = min(d+time.Duration(extra), ceiling)
	}
	return max(d, 0)
}
