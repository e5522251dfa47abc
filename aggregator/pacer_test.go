package aggregator

import (
	"container/heap"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

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

// The pacing goal of issue 10 at the aggregator: after a restart, 10,000
// v2 senders that all come back at once and obey GoAway's retry-after.
// In virtual time, with the default rate (200/s, burst 200) and window
// (1 min): no second admits more than the burst plus the rate (the first)
// or the rate (every later one, with the bucket refilled by at most one
// second), and 99% of the senders are admitted within the window. The
// pacer is the real one (golang.org/x/time/rate on the times given).
func TestPacingAfterRestart(t *testing.T) {
	const senders = 10_000
	cfg, err := Config{}.withDefaults()
	require.NoError(t, err)
	p := newPacer(cfg.AcceptRate, cfg.AcceptBurst, cfg.PacingWindow)
	p.rng = rand.New(rand.NewPCG(1, 2)) // a reproducible run
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	q := make(arrivals, senders)
	for i := range q {
		q[i] = start
	}
	heap.Init(&q)
	perSecond := map[int64]int{}
	var within int
	for q.Len() > 0 {
		now := heap.Pop(&q).(time.Time)
		if !p.admit(now) {
			heap.Push(&q, now.Add(p.retryAfter()))
			continue
		}
		sec := int64(now.Sub(start) / time.Second)
		perSecond[sec]++
		if now.Sub(start) < cfg.PacingWindow {
			within++
		}
	}
	var peak, last int64
	for sec, n := range perSecond {
		limit := int(cfg.AcceptRate) + 1
		if sec == 0 {
			limit += cfg.AcceptBurst
		} else {
			peak = max(peak, int64(n))
		}
		require.LessOrEqual(t, n, limit, "second %d", sec)
		last = max(last, sec)
	}
	t.Logf("first second %d accepted (burst), then at most %d/s; %.1f%% admitted within %v; last in second %d",
		perSecond[0], peak, 100*float64(within)/senders, cfg.PacingWindow, last)
	require.GreaterOrEqual(t, within, senders*99/100)
}
