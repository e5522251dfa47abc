package fsm

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBackoffDefaultStaysAtReconnectPeriod(t *testing.T) {
	p := BackoffPolicy{Base: 10 * time.Second}
	for _, n := range []uint64{0, 1, 2, 100, 1 << 40} {
		require.Equal(t, 10*time.Second, p.Delay(n, 0.99))
	}
}

func TestBackoffGrowthAndCap(t *testing.T) {
	p := BackoffPolicy{Base: time.Second, Growth: 2, Max: time.Minute}
	require.Equal(t, time.Second, p.Delay(1, 0))
	require.Equal(t, 2*time.Second, p.Delay(2, 0))
	require.Equal(t, 32*time.Second, p.Delay(6, 0))
	require.Equal(t, time.Minute, p.Delay(7, 0))
	require.Equal(t, time.Minute, p.Delay(1e6, 0))
}

// TestBackoffNeverOverflows is the property: for every attempt count up to
// 10^6, any growth and jitter, the delay is in [0, maxDelay], within the
// jitter bounds of the capped delay, and monotone in n without jitter.
func TestBackoffNeverOverflows(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	policies := []BackoffPolicy{
		{Base: 10 * time.Second},
		{Base: 10 * time.Second, Jitter: 0.2},
		{Base: time.Nanosecond, Growth: 1.5, Jitter: 0.99},
		{Base: time.Hour, Growth: 1e300},
		{Base: maxDelay, Growth: 10, Jitter: 0.5},
		{Base: time.Millisecond, Growth: 2, Max: 5 * time.Minute, Jitter: 0.2},
	}
	for _, p := range policies {
		require.NoError(t, p.Validate())
		var prev time.Duration
		for n := uint64(1); n <= 1_000_000; n++ {
			// Plain ifs, not require: this loop runs six million times.
			d := p.Delay(n, rng.Float64())
			plain := BackoffPolicy{Base: p.Base, Growth: p.Growth, Max: p.Max}.Delay(n, 0)
			lo, hi := float64(plain)*(1-p.Jitter), float64(plain)*(1+p.Jitter)
			switch {
			case d < 0 || d > maxDelay:
				t.Fatalf("n=%d %+v: delay %d out of [0, maxDelay]", n, p, d)
			case plain < prev:
				t.Fatalf("n=%d %+v: delay shrank from %s to %s", n, p, prev, plain)
			case float64(d) < lo-1 || (float64(d) > hi+1 && d != maxDelay):
				t.Fatalf("n=%d %+v: delay %s outside the jitter bounds of %s", n, p, d, plain)
			}
			prev = plain
		}
	}
}

func BenchmarkBackoffDelay(b *testing.B) {
	p := BackoffPolicy{Base: time.Second, Growth: 2, Max: time.Hour, Jitter: 0.2}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = p.Delay(uint64(i%64), 0.5)
	}
}

func TestBackoffRejoin(t *testing.T) {
	p := BackoffPolicy{Base: 10 * time.Second, Jitter: 0.2}
	w := 3 * time.Second
	require.Equal(t, time.Duration(0), p.Rejoin(w, 0))
	require.Equal(t, 1500*time.Millisecond, p.Rejoin(w, 0.5))
	require.Equal(t, w-1, p.Rejoin(w, 1)) // never the whole window, even for u = 1
	require.Equal(t, time.Duration(0), p.Rejoin(w, -1))
	require.Equal(t, time.Duration(0), p.Rejoin(0, 0.5))
	// Without jitter: the window's mean, as Delay is Base's.
	require.Equal(t, 1500*time.Millisecond, BackoffPolicy{Base: time.Second}.Rejoin(w, 0.99))
}
