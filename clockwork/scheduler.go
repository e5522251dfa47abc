package clockwork

import (
	"math"
	"math/bits"
	"time"
)

// Scheduler is a discrete-event queue in virtual time for the many-node
// simulation: one goroutine pushes events at absolute times and pops them in
// time order, and popping advances the scheduler's Now. Events at equal times
// pop in the order they were pushed, so a seeded simulation replays exactly.
//
// It is a binary min-heap keyed by (time, sequence number) with hand-written
// sift functions over concrete slices: no container/heap, whose interface{}
// Push/Pop would box every event and allocate. Push and Pop are O(log n) and
// allocate nothing once the slices have grown to the peak number of pending
// events (NewScheduler's capacity pre-grows them).
//
// The layout is chosen for the sift loops, whose cost is a chain of dependent
// loads, one level at a time: keys live apart from values, in 16-byte
// entries, one-based, so the two children of a node always share one 64-byte
// cache line, and values move in a parallel slice off that chain. Picking
// the earlier child is done without a branch (it is a coin flip on random
// times). Times are int64 Unix nanoseconds, so keys compare as integers and
// no time.Time arithmetic runs per event; that covers the years 1678 to
// 2262, and times outside saturate to the ends of the range.
//
// A Scheduler is not safe for concurrent use; the simulation is
// single-threaded by design, which is what makes it deterministic.
type Scheduler[T any] struct {
	loc *time.Location // start's, so returned times print like start
	now int64          // Unix nanoseconds
	seq uint64         // next sequence number
	// keys[1:] is the heap and vals[i] is the value of keys[i]; index 0 is
	// unused, which makes children 2i and 2i+1 and aligns each pair.
	keys []schedKey
	vals []T
}

// schedKey orders events: by time, then by push order.
type schedKey struct {
	at  int64  // Unix nanoseconds
	seq uint64 // push order, breaks ties between equal times
}

// NewScheduler returns an empty Scheduler whose Now is start, with room for
// capacity pending events before its slices have to grow.
func NewScheduler[T any](start time.Time, capacity int) *Scheduler[T] {
	capacity = max(capacity, 0) + 1
	return &Scheduler[T]{
		loc:  start.Location(),
		now:  unixNanos(start),
		keys: make([]schedKey, 1, capacity),
		vals: make([]T, 1, capacity),
	}
}

// unixNanos is t.UnixNano, saturated outside the int64 range instead of
// wrapping (within a second of either end, which no simulation reaches).
func unixNanos(t time.Time) int64 {
	const maxSec = math.MaxInt64 / int64(time.Second)
	switch sec := t.Unix(); {
	case sec >= maxSec:
		return math.MaxInt64
	case sec <= -maxSec:
		return math.MinInt64
	}
	return t.UnixNano()
}

// timeOf turns Unix nanoseconds back into a time in the start's location.
func (s *Scheduler[T]) timeOf(ns int64) time.Time {
	return time.Unix(0, ns).In(s.loc)
}

// Now returns the scheduler's virtual time: start, then the time of the last
// popped event.
func (s *Scheduler[T]) Now() time.Time {
	return s.timeOf(s.now)
}

// Len returns the number of pending events.
func (s *Scheduler[T]) Len() int { return len(s.keys) - 1 }

// Push schedules v at the absolute time at. A time before Now is clamped to
// Now: virtual time never runs backwards, and "as soon as possible" is the
// only sensible reading of a deadline already missed.
func (s *Scheduler[T]) Push(at time.Time, v T) {
	s.push(unixNanos(at), v)
}

// PushAfter schedules v at Now()+d (d < 0 is treated as 0). It is the cheap
// path for the common "in d from now" event: no time.Time arithmetic.
func (s *Scheduler[T]) PushAfter(d time.Duration, v T) {
	at := s.now + int64(d)
	if d > 0 && at < s.now { // overflow
		at = math.MaxInt64
	}
	s.push(at, v)
}

// Peek returns the time of the next event without removing it, and false if
// none is pending.
func (s *Scheduler[T]) Peek() (time.Time, bool) {
	if len(s.keys) < 2 {
		return time.Time{}, false
	}
	return s.timeOf(s.keys[1].at), true
}

// Pop removes the earliest event (the first pushed among equal times),
// advances Now to its time and returns it; ok is false if none is pending.
func (s *Scheduler[T]) Pop() (at time.Time, v T, ok bool) {
	last := len(s.keys) - 1
	if last < 1 {
		return s.Now(), v, false
	}
	top, v := s.keys[1], s.vals[1]
	k, x := s.keys[last], s.vals[last]
	// Clear the vacated value slot so a popped event's value (often a
	// pointer) is not kept alive by the slice's spare capacity.
	var zero T
	s.vals[last] = zero
	s.keys = s.keys[:last]
	s.vals = s.vals[:last]
	if last > 1 {
		s.siftDown(k, x)
	}
	s.now = top.at
	return s.timeOf(top.at), v, true
}

func (s *Scheduler[T]) push(at int64, v T) {
	if at < s.now {
		at = s.now
	}
	s.keys = append(s.keys, schedKey{at: at, seq: s.seq})
	s.vals = append(s.vals, v)
	s.seq++
	s.siftUp(len(s.keys) - 1)
}

// before orders keys by time, then push order.
func before(a, b *schedKey) bool {
	return a.at < b.at || (a.at == b.at && a.seq < b.seq)
}

// earlier is before as 0 or 1, computed without branches: the 128-bit
// subtraction (a.at, a.seq) - (b.at, b.seq) borrows exactly when a sorts
// first (the sign bit of at is flipped so signed times compare as
// unsigned). It compiles to SUB, SBB, SBB; choosing the earlier child is
// a coin flip on random times, and a conditional jump there would be
// mispredicted half the time on the sift loop's critical path.
func earlier(a, b *schedKey) int {
	const sign = 1 << 63
	_, borrow := bits.Sub64(a.seq, b.seq, 0)
	_, borrow = bits.Sub64(uint64(a.at)^sign, uint64(b.at)^sign, borrow)
	return int(borrow)
}

// siftUp moves the entry at i towards the root until its parent is not
// later. It moves a hole instead of swapping, so each level costs one copy.
func (s *Scheduler[T]) siftUp(i int) {
	keys, vals := s.keys, s.vals
	k, x := keys[i], vals[i]
	for i > 1 {
		p := i / 2
		if !before(&k, &keys[p]) {
			break
		}
		keys[i], vals[i] = keys[p], vals[p]
		i = p
	}
	keys[i], vals[i] = k, x
}

// siftDown places (k, x) starting from the hole at the root, moving the hole
// towards the leaves while a child is earlier than k.
func (s *Scheduler[T]) siftDown(k schedKey, x T) {
	keys, vals := s.keys, s.vals
	n := len(keys)
	i := 1
	for {
		c := 2 * i
		if c >= n || c < 0 { // c < 0: int overflow
			break
		}
		if c+1 < n {
			c += earlier(&keys[c+1], &keys[c])
		}
		if !before(&keys[c], &k) {
			break
		}
		keys[i], vals[i] = keys[c], vals[c]
		i = c
	}
	keys[i], vals[i] = k, x
}
