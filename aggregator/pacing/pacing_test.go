package pacing

import (
	"container/heap"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 600_000_000, time.UTC)

func newP(t *testing.T, rate float64, window time.Duration) *Pacer {
	t.Helper()
	p, err := New(rate, window, rand.New(rand.NewPCG(1, 2)))
	require.NoError(t, err)
	return p
}

func TestNewRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		rate   float64
		window time.Duration
	}{{200, 0}, {200, -time.Second}, {nanF(), time.Minute},
		// Out of range: a ring of 1e19 admissions cannot be made (it
		// panicked), and a period of 1e12 s overflows time.Duration (it
		// went negative and admitted every stream).
		{1e19, time.Minute}, {MaxRate + 1, time.Minute}, {1e-12, time.Minute}, {MinRate / 2, time.Minute}} {
		_, err := New(tc.rate, tc.window, nil)
		require.Error(t, err, "rate %v window %v", tc.rate, tc.window)
	}
}

func TestNewTakesTheBounds(t *testing.T) {
	p := newP(t, MaxRate, time.Minute)
	require.Equal(t, int(MaxRate), p.Limit())
	p = newP(t, MinRate, time.Minute)
	require.Equal(t, 1, p.Limit())
	require.Equal(t, time.Hour, p.Period())
}

func nanF() float64 { z := 0.0; return z / z }

// Exact slots: with a rate of 10/s the first 10 arrivals at t0 are
// admitted, the next ones get slots from the moment the rate frees (t0+1s),
// spaced 1/(0.9·10) s apart.
func TestSlots(t *testing.T) {
	p := newP(t, 10, time.Minute)
	for i := range 10 {
		ok, _ := p.Admit(t0)
		require.True(t, ok, "arrival %d", i)
	}
	hr, sec := Headroom, float64(time.Second)
	spacing := time.Duration(sec / (hr * 10))
	require.Equal(t, spacing, p.Spacing())
	for i := range 5 {
		ok, after := p.Admit(t0)
		require.False(t, ok)
		require.Equal(t, time.Second+time.Duration(i)*spacing, after, "slot %d", i)
	}
	// Later arrivals get later slots, counted from their own arrival.
	ok, after := p.Admit(t0.Add(300 * time.Millisecond))
	require.False(t, ok)
	require.Equal(t, time.Second+5*spacing-300*time.Millisecond, after)
	// At t0+1s the rate frees: the slot holders are admitted.
	for i := range 10 {
		ok, _ := p.Admit(t0.Add(time.Second + time.Duration(i)*spacing))
		require.True(t, ok, "slot holder %d", i)
	}
}

// A slot past the window is not handed out: the stream is told to come
// back after the window, and the next stream still gets the free slot.
func TestSlotsCappedAtWindow(t *testing.T) {
	p := newP(t, 1, 3*time.Second)
	ok, _ := p.Admit(t0)
	require.True(t, ok)
	var got []time.Duration
	for range 6 {
		ok, after := p.Admit(t0)
		require.False(t, ok)
		got = append(got, after)
	}
	sp := p.Spacing() // 1/0.9 s
	require.Equal(t, []time.Duration{time.Second, time.Second + sp,
		3 * time.Second, 3 * time.Second, 3 * time.Second, 3 * time.Second}, got)
	// The capped ones took no slot: a later arrival gets the third.
	ok, after := p.Admit(t0.Add(time.Second / 2))
	require.False(t, ok)
	require.Equal(t, time.Second/2+2*sp, after)
}

// Rates below one a second admit one stream per 1/rate; pacing off admits
// everything.
func TestRoundingAndOff(t *testing.T) {
	p := newP(t, 250.7, time.Minute)
	require.Equal(t, 250, p.Limit())
	require.Equal(t, time.Second, p.Period())
	p = newP(t, 0.25, time.Minute)
	require.Equal(t, 1, p.Limit())
	require.Equal(t, 4*time.Second, p.Period())
	ok, _ := p.Admit(t0)
	require.True(t, ok)
	ok, after := p.Admit(t0.Add(time.Second))
	require.False(t, ok)
	require.Equal(t, 3*time.Second, after)
	ok, _ = p.Admit(t0.Add(4 * time.Second))
	require.True(t, ok)

	p = newP(t, -1, time.Minute)
	for range 1000 {
		ok, _ := p.Admit(t0)
		require.True(t, ok)
	}
}

// The bound holds for every interval of one Period, not only aligned ones:
// random arrivals, and the admissions of every sliding second counted.
func TestNeverMoreThanLimitInAnySecond(t *testing.T) {
	p := newP(t, 37, time.Minute)
	rng := rand.New(rand.NewPCG(3, 4))
	now := t0
	var admitted []time.Time
	for range 100_000 {
		now = now.Add(time.Duration(rng.Int64N(int64(5 * time.Millisecond))))
		if ok, _ := p.Admit(now); ok {
			admitted = append(admitted, now)
		}
	}
	for i := range admitted {
		j := i
		for j < len(admitted) && admitted[j].Sub(admitted[i]) < time.Second {
			j++
		}
		require.LessOrEqual(t, j-i, 37, "second from %v", admitted[i].Sub(t0))
	}
	require.Greater(t, len(admitted), 37*int(now.Sub(t0)/time.Second)*95/100, "the rate is used")
}

func TestSpreadIsUniformOverTheWindow(t *testing.T) {
	p := newP(t, 200, time.Minute)
	var lo, hi int
	for range 10_000 {
		d := p.Spread()
		require.GreaterOrEqual(t, d, time.Duration(0))
		require.Less(t, d, time.Minute)
		if d < 30*time.Second {
			lo++
		} else {
			hi++
		}
	}
	require.InDelta(t, 5000, lo, 300)
}

// A shutdown's retry-after stays within half the startup grace, however
// long the pacing window; an empty bound (no grace) is 0, not a panic.
func TestSpreadWithinTheShutdownBound(t *testing.T) {
	p := newP(t, 200, time.Hour)
	bound := ShutdownSpread(15 * time.Second)
	require.Equal(t, 7500*time.Millisecond, bound)
	var hi int
	for range 10_000 {
		d := p.SpreadWithin(bound)
		require.GreaterOrEqual(t, d, time.Duration(0))
		require.Less(t, d, bound)
		if d >= bound/2 {
			hi++
		}
	}
	require.InDelta(t, 5000, hi, 300, "uniform over the bound")
	require.Zero(t, p.SpreadWithin(ShutdownSpread(0)))
	require.Less(t, newP(t, 200, time.Second).SpreadWithin(bound), time.Second, "and never past the window")
}

// The pacing goal of issue 10 on the pacer alone: 10,000 senders arrive
// within one second of a restart and come back exactly at their slot plus
// an upward spread of up to 2% of the retry-after, capped at 3 s (the
// sender's rule, fsm.BackoffPolicy.After, with the default 3 s beat
// period). No second admits more than the rate (200/s) and 99% are
// admitted within the window (1 min).
func TestRestartStorm(t *testing.T) {
	const senders, rate = 10_000, 200
	p := newP(t, rate, time.Minute)
	rng := rand.New(rand.NewPCG(5, 6))
	q := &arrivals{}
	for range senders {
		heap.Push(q, t0.Add(time.Duration(rng.Int64N(int64(time.Second)))))
	}
	var admitted []time.Time
	for q.Len() > 0 {
		now := heap.Pop(q).(time.Time)
		ok, after := p.Admit(now)
		if ok {
			admitted = append(admitted, now)
			continue
		}
		extra := time.Duration(rng.Float64() * float64(min(3*time.Second, after/50)))
		heap.Push(q, now.Add(after+extra))
	}
	perSecond := map[int64]int{}
	within := 0
	for _, at := range admitted {
		perSecond[int64(at.Sub(t0)/time.Second)]++
		if at.Sub(t0) < time.Minute {
			within++
		}
	}
	peak := 0
	for _, n := range perSecond {
		peak = max(peak, n)
	}
	t.Logf("peak %d/s, %.2f%% admitted within 1m, last at %v", peak, 100*float64(within)/senders, admitted[len(admitted)-1].Sub(t0))
	require.LessOrEqual(t, peak, rate)
	require.GreaterOrEqual(t, within, senders*99/100)
}

// arrivals is a min-heap of virtual arrival times.
type arrivals []time.Time

func (a arrivals) Len() int           { return len(a) }
func (a arrivals) Less(i, j int) bool { return a[i].Before(a[j]) }
func (a arrivals) Swap(i, j int)      { a[i], a[j] = a[j], a[i] }
func (a *arrivals) Push(x any)        { *a = append(*a, x.(time.Time)) }
func (a *arrivals) Pop() any {
	old := *a
	x := old[len(old)-1]
	*a = old[:len(old)-1]
	return x
}

// Admit is on the simulator's hot path and under the aggregator's lock:
// it must not allocate, admitting or refusing.
func TestAdmitDoesNotAllocate(t *testing.T) {
	p := newP(t, 10, time.Minute)
	now := t0
	allocs := testing.AllocsPerRun(1000, func() {
		now = now.Add(time.Millisecond)
		p.Admit(now)
	})
	require.Zero(t, allocs)
}

func BenchmarkAdmit(b *testing.B) {
	p, err := New(200, time.Minute, rand.New(rand.NewPCG(1, 2)))
	require.NoError(b, err)
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Millisecond)
		p.Admit(now)
	}
}
