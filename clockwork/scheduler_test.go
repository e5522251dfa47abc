package clockwork

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestSchedulerBasics(t *testing.T) {
	s := NewScheduler[string](t0, 0)
	require.True(t, s.Now().Equal(t0))
	require.Equal(t, 0, s.Len())
	_, ok := s.Peek()
	require.False(t, ok)
	at, v, ok := s.Pop()
	require.False(t, ok)
	require.Empty(t, v)
	require.True(t, at.Equal(t0))

	s.Push(t0.Add(2*time.Second), "b1")
	s.Push(t0.Add(time.Second), "a")
	s.Push(t0.Add(2*time.Second), "b2")
	s.PushAfter(2*time.Second, "b3")
	s.Push(t0.Add(-time.Hour), "past") // clamped to Now, after nothing earlier
	s.PushAfter(-time.Second, "neg")   // likewise
	require.Equal(t, 6, s.Len())
	p, ok := s.Peek()
	require.True(t, ok)
	require.True(t, p.Equal(t0))

	var got []string
	for {
		at, v, ok := s.Pop()
		if !ok {
			break
		}
		require.True(t, s.Now().Equal(at), "Pop advances Now")
		got = append(got, v)
	}
	require.Equal(t, []string{"past", "neg", "a", "b1", "b2", "b3"}, got)
	require.True(t, s.Now().Equal(t0.Add(2*time.Second)))

	// After time has moved, a push into the past lands at the new Now.
	s.Push(t0, "late")
	at, v, _ = s.Pop()
	require.Equal(t, "late", v)
	require.True(t, at.Equal(t0.Add(2*time.Second)))
}

// TestSchedulerStripsMonotonic: a start taken from time.Now carries a
// monotonic reading; times built from it and from its wall value agree.
func TestSchedulerStripsMonotonic(t *testing.T) {
	start := time.Now()
	s := NewScheduler[int](start, 4)
	s.Push(start.Add(time.Second), 1)
	s.Push(start.Round(0).Add(time.Second), 2)
	a1, v1, _ := s.Pop()
	a2, v2, _ := s.Pop()
	require.Equal(t, []int{1, 2}, []int{v1, v2})
	require.True(t, a1.Equal(a2))
	require.True(t, a1.Equal(start.Add(time.Second)))
}

type schedRef struct {
	at  time.Duration // since t0, after clamping
	seq int
}

// TestSchedulerPopOrderProperty: for random pushes (many equal times, some in
// the past), popping everything yields exactly the pushes sorted by
// (clamped time, push order).
func TestSchedulerPopOrderProperty(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		r := rand.New(rand.NewPCG(seed, 0x5eed))
		n := 1 + r.IntN(3000)
		s := NewScheduler[int](t0, r.IntN(64)) // small capacity: growth too

		want := make([]schedRef, 0, n)
		for i := range n {
			// A small range of times forces many ties; negatives test clamping.
			d := time.Duration(r.IntN(200)-20) * time.Millisecond
			s.Push(t0.Add(d), i)
			want = append(want, schedRef{at: max(d, 0), seq: i})
		}
		slices.SortFunc(want, func(a, b schedRef) int {
			return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.seq, b.seq))
		})

		got := make([]schedRef, 0, n)
		for s.Len() > 0 {
			at, v, ok := s.Pop()
			require.True(t, ok)
			got = append(got, schedRef{at: at.Sub(t0), seq: v})
		}
		require.Equal(t, want, got, "seed %d", seed)
	}
}

// TestSchedulerInterleavedMatchesModel mixes pushes and pops (so clamping is
// against a moving Now) and checks each step against a linear-scan model.
func TestSchedulerInterleavedMatchesModel(t *testing.T) {
	for seed := uint64(1); seed <= 12; seed++ {
		r := rand.New(rand.NewPCG(seed, 0xfeed))
		s := NewScheduler[int](t0, 16)
		var model []schedRef
		var now time.Duration
		seq := 0
		for step := 0; step < 4000; step++ {
			if r.IntN(20) < 11 || len(model) == 0 { // push 55%: the queue grows slowly
				d := now + time.Duration(r.IntN(100)-10)*time.Microsecond
				if r.IntN(2) == 0 {
					s.Push(t0.Add(d), seq)
				} else {
					s.PushAfter(d-now, seq)
				}
				model = append(model, schedRef{at: max(d, now), seq: seq})
				seq++
			} else {
				i := 0
				for j, e := range model {
					if e.at < model[i].at || (e.at == model[i].at && e.seq < model[i].seq) {
						i = j
					}
				}
				want := model[i]
				model = slices.Delete(model, i, i+1)
				// Plain comparisons first: require's reflection on every
				// step would dominate the run time under -race.
				p, pok := s.Peek()
				at, v, ok := s.Pop()
				now = want.at
				if got := (schedRef{at: at.Sub(t0), seq: v}); !pok || !ok || got != want ||
					p.Sub(t0) != want.at || s.Now().Sub(t0) != now {
					require.FailNowf(t, "mismatch", "seed %d step %d: popped %+v (ok %v), peeked %v (ok %v), now %v; want %+v",
						seed, step, got, ok, p.Sub(t0), pok, s.Now().Sub(t0), want)
				}
			}
			if s.Len() != len(model) {
				require.FailNowf(t, "mismatch", "seed %d step %d: Len %d, want %d", seed, step, s.Len(), len(model))
			}
		}
	}
}

func TestSchedulerPopReleasesValues(t *testing.T) {
	s := NewScheduler[*int](t0, 4)
	x, y := new(int), new(int)
	s.Push(t0, x)
	s.Push(t0, y)
	s.Pop()
	s.Pop()
	// The spare capacity must not keep popped values reachable.
	for _, v := range s.vals[:cap(s.vals)] {
		require.Nil(t, v)
	}
}

func TestSchedulerSteadyStateDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's bookkeeping can show up in AllocsPerRun")
	}
	s, deltas := benchScheduler(1000)
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		at, v, _ := s.Pop()
		s.Push(at.Add(deltas[i&(len(deltas)-1)]), v)
		i++
	})
	require.Zero(t, allocs)
}

// benchScheduler returns a Scheduler holding n pending events spread over
// 10 ms, and a power-of-two table of random delays for re-pushing, so that
// the benchmark loop spends nothing on random numbers.
func benchScheduler(n int) (*Scheduler[int], []time.Duration) {
	r := rand.New(rand.NewPCG(1, 2))
	s := NewScheduler[int](t0, n)
	for i := range n {
		s.PushAfter(time.Duration(r.IntN(int(10*time.Millisecond))), i)
	}
	deltas := make([]time.Duration, 1024)
	for i := range deltas {
		deltas[i] = time.Duration(r.IntN(int(10 * time.Millisecond)))
	}
	return s, deltas
}

// BenchmarkSchedulerPushPop measures one Pop plus one Push with 10,000 events
// pending, the steady state of a large simulation.
func BenchmarkSchedulerPushPop(b *testing.B) {
	b.Run("Push", func(b *testing.B) {
		s, deltas := benchScheduler(10_000)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			at, v, _ := s.Pop()
			s.Push(at.Add(deltas[i&(len(deltas)-1)]), v)
		}
	})
	b.Run("PushAfter", func(b *testing.B) {
		s, deltas := benchScheduler(10_000)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			_, v, _ := s.Pop()
			s.PushAfter(deltas[i&(len(deltas)-1)], v)
		}
	})
}
