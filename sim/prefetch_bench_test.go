//go:build unix

package sim

import (
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"
)

// processCPU is this process's user plus system CPU time: on a machine
// shared with other work it is steadier than wall time.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPrefetch10k measures what the loop's prefetching buys at 10,000
// nodes (10 virtual minutes, steady): each op runs the loop once with it and
// once without, in alternating order, and takes the process's CPU time of
// the loop alone (setup excluded). It reports the median of each and the
// median of the per-op ratios, which, the two runs being side by side, is
// the steadier figure. Run with -cpu 1 -benchtime Nx.
func BenchmarkPrefetch10k(b *testing.B) {
	p := Params{Nodes: 10_000, Duration: 10 * time.Minute, Seed: 1}
	defer func() { prefetchOn = true }()
	var on, off, ratio []float64
	round := 0
	for b.Loop() {
		var cpu [2]float64 // [off, on]
		for j := range 2 {
			k := (j + round) % 2
			prefetchOn = k == 1
			c, err := p.resolve()
			if err != nil {
				b.Fatal(err)
			}
			s, err := newSim(c)
			if err != nil {
				b.Fatal(err)
			}
			runtime.GC() // the other run's garbage is not this one's
			before := processCPU(b)
			s.loop()
			cpu[k] = (processCPU(b) - before).Seconds()
		}
		off, on = append(off, cpu[0]), append(on, cpu[1])
		ratio = append(ratio, cpu[1]/cpu[0])
		round++
	}
	b.ReportMetric(median(off), "off-cpu-s")
	b.ReportMetric(median(on), "on-cpu-s")
	b.ReportMetric(median(ratio), "on/off")
}

// median returns the median of xs, leaving xs as it is.
func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}
