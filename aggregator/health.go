package aggregator

import (
	"math"
	"runtime/metrics"
	"time"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
)

// Local health awareness, after Lifeguard (Dadgar et al., 2017,
// "Lifeguard: Local Health Awareness for More Accurate Failure Detection")
// and hashicorp/memberlist's awareness.go: a detector whose own host is
// slow (a reconnect storm saturating the CPU, a noisy neighbour, a GC
// pause, a stopped process) sees every node's beats late and must not
// blame the nodes. The aggregator measures its own lag at each sweep and
// the tracker scales every Suspect and Down threshold by a multiplier
// derived from it (tracker.SetHealth).
//
// The lag of one sweep is the largest of:
//   - sweep: how late the sweep's timer fired after its scheduled time (a
//     stopped or starved process);
//   - scheduler: the p99 time goroutines, the streams' read loops among
//     them, waited to run since the last sweep (runtime/metrics
//     /sched/latencies:seconds): how far the read loops fall behind;
//   - gc: the longest stop-the-world GC pause since the last sweep
//     (/gc/pauses:seconds).
//
// Lags under healthLagFloor count as none (a busy process always has a
// few milliseconds). The multiplier is 1 + healthSafety × L / S, capped at
// maxHealthMultiplier, where L is the largest per-sweep lag of the last
// DownAfter of sweeps and S the smallest Suspect threshold a node can have
// (SuspectAfter × MinPeriod / ExpectedPeriod, 2 s at the defaults): the
// slack it adds to any node's Suspect threshold is at least twice the lag
// seen, and it is held for as long as a node's silence can still contain
// the lag (a Down threshold), then falls back.
const (
	healthLagFloor      = 250 * time.Millisecond
	healthSafety        = 2
	maxHealthMultiplier = 8 // memberlist's default AwarenessMaxMultiplier
)

// Health bands, for the log: a line when the multiplier changes band.
const (
	bandHealthy  = "healthy"  // 1
	bandDegraded = "degraded" // (1, 2)
	bandSlow     = "slow"     // [2, 4)
	bandStalled  = "stalled"  // [4, max]
)

func healthBand(m float64) string {
	switch {
	case m <= 1:
		return bandHealthy
	case m < 2:
		return bandDegraded
	case m < 4:
		return bandSlow
	default:
		return bandStalled
	}
}

// bandRank orders the bands, healthy first.
func bandRank(b string) int {
	switch b {
	case bandDegraded:
		return 1
	case bandSlow:
		return 2
	case bandStalled:
		return 3
	}
	return 0
}

// runtimeLag is the scheduler p99 latency and the longest GC pause since
// the previous call. The real one reads runtime/metrics; tests replace it
// with a fixed one, for determinism.
type runtimeLag func() (sched, gc time.Duration)

// healthMonitor turns per-sweep lag measurements into the multiplier. It
// is owned by the sweeper goroutine.
type healthMonitor struct {
	ref     time.Duration   // the smallest Suspect threshold a node can have
	window  []time.Duration // per-sweep lags, a ring
	i       int
	runtime runtimeLag
}

func newHealthMonitor(cfg Config, rt runtimeLag) *healthMonitor {
	// Hold a lag for one Down threshold's worth of sweeps.
	n := max(int(cfg.DownAfter/cfg.SweepInterval), 1)
	if rt == nil {
		rt = newRuntimeLag()
	}
	// The reference is the smallest Suspect threshold a node can have (a
	// node learned at MinPeriod), so that every node gets at least twice the
	// lag as slack; slower nodes get proportionally more.
	ref := cfg.SuspectAfter
	if cfg.MinPeriod > 0 && cfg.ExpectedPeriod > 0 && cfg.MinPeriod < cfg.ExpectedPeriod {
		ref = time.Duration(float64(cfg.SuspectAfter) * float64(cfg.MinPeriod) / float64(cfg.ExpectedPeriod))
	}
	return &healthMonitor{ref: ref, window: make([]time.Duration, n), runtime: rt}
}

// lags is one sweep's measurement, by source.
type lags struct{ sweep, sched, gc time.Duration }

func (l lags) max() time.Duration { return max(l.sweep, l.sched, l.gc) }

// observe records one sweep that fired late by late and returns the
// measurement and the health to hand to the tracker.
func (h *healthMonitor) observe(late time.Duration) (lags, tracker.Health) {
	sched, gc := h.runtime()
	l := lags{sweep: max(late, 0), sched: sched, gc: gc}
	lag := l.max()
	if lag < healthLagFloor {
		lag = 0
	}
	h.window[h.i] = lag
	h.i = (h.i + 1) % len(h.window)
	var peak time.Duration
	for _, x := range h.window {
		peak = max(peak, x)
	}
	m := 1.0
	if peak > 0 && h.ref > 0 {
		m = min(1+healthSafety*float64(peak)/float64(h.ref), maxHealthMultiplier)
	}
	return l, tracker.Health{Multiplier: m, Lag: peak}
}

// newRuntimeLag reads the scheduler latency and GC pause histograms of
// runtime/metrics and reports, at each call, the p99 and the maximum of
// what was added since the previous call.
func newRuntimeLag() runtimeLag {
	samples := []metrics.Sample{{Name: "/sched/latencies:seconds"}, {Name: "/gc/pauses:seconds"}}
	var prevSched, prevGC []uint64
	return func() (time.Duration, time.Duration) {
		metrics.Read(samples)
		var sched, gc time.Duration
		if samples[0].Value.Kind() == metrics.KindFloat64Histogram {
			sched, prevSched = histDelta(samples[0].Value.Float64Histogram(), prevSched, 0.99)
		}
		if samples[1].Value.Kind() == metrics.KindFloat64Histogram {
			gc, prevGC = histDelta(samples[1].Value.Float64Histogram(), prevGC, 1)
		}
		return sched, gc
	}
}

// histDelta returns quantile q (the upper edge of its bucket; the lower
// edge for the open last bucket) of the counts added to h since prev, and
// h's counts to pass as prev next time. The first call has no prev and
// reports nothing.
func histDelta(h *metrics.Float64Histogram, prev []uint64, q float64) (time.Duration, []uint64) {
	cur := prev
	if len(cur) != len(h.Counts) {
		return 0, append([]uint64(nil), h.Counts...)
	}
	var total uint64
	for i, c := range h.Counts {
		total += c - prev[i]
	}
	var d time.Duration
	if total > 0 {
		rank := uint64(math.Ceil(q * float64(total)))
		var seen uint64
		for i, c := range h.Counts {
			seen += c - prev[i]
			if seen >= max(rank, 1) {
				edge := h.Buckets[i+1]
				if math.IsInf(edge, 1) {
					edge = h.Buckets[i]
				}
				d = time.Duration(edge * float64(time.Second))
				break
			}
		}
	}
	copy(cur, h.Counts)
	return d, cur
}
