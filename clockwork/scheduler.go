package clockwork

import "time"

// Scheduler is a discrete-event queue in virtual time for the many-node
// simulation: one goroutine pushes events at absolute times and pops them in
// time order, and popping advances the scheduler's Now. Events at equal times
// pop in the order they were pushed, so a seeded simulation replays exactly.
//
// It is a binary min-heap keyed by (time, sequence number) with hand-written
// sift functions over a slice of concrete entries: no container/heap, whose
// interface{} Push/Pop would box every event and allocate. Push and Pop are
// O(log n) and allocate nothing once the slice has grown to the peak number
// of pending events (NewScheduler's capacity pre-grows it). Times are stored
// as int64 nanoseconds since the start time, which makes comparisons single
// integer compares and ignores any monotonic clock reading.
//
// A Scheduler is not safe for concurrent use; the simulation is
// single-threaded by design, which is what makes it deterministic.
type Scheduler[T any] struct {
	base time.Time // start, with any monotonic reading stripped
	now  int64     // nanoseconds since base
	seq  uint64    // next sequence number
	heap []schedEntry[T]
}

// schedEntry is one pending event.
type schedEntry[T any] struct {
	at  int64  // nanoseconds since base
	seq uint64 // push order, breaks ties between equal times
	v   T
}

// NewScheduler returns an empty Scheduler whose Now is start, with room for
// capacity pending events before its slice has to grow.
func NewScheduler[T any](start time.Time, capacity int) *Scheduler[T] {
	if capacity < 0 {
		capacity = 0
	}
	return &Scheduler[T]{
		// Round(0) strips the monotonic reading so that offsets are wall
		// differences, the same for every time built from start.
		base: start.Round(0),
		heap: make([]schedEntry[T], 0, capacity),
	}
}

// Now returns the scheduler's virtual time: start, then the time of the last
// popped event.
func (s *Scheduler[T]) Now() time.Time {
	return s.base.Add(time.Duration(s.now))
}

// Len returns the number of pending events.
func (s *Scheduler[T]) Len() int { return len(s.heap) }

// Push schedules v at the absolute time at. A time before Now is clamped to
// Now: virtual time never runs backwards, and "as soon as possible" is the
// only sensible reading of a deadline already missed. Times further than
// about 292 years from the start saturate.
func (s *Scheduler[T]) Push(at time.Time, v T) {
	s.push(int64(at.Sub(s.base)), v)
}

// PushAfter schedules v at Now()+d (d < 0 is treated as 0). It is the cheap
// path for the common "in d from now" event: no time.Time arithmetic.
func (s *Scheduler[T]) PushAfter(d time.Duration, v T) {
	at := s.now + int64(d)
	if d > 0 && at < s.now { // overflow
		at = 1<<63 - 1
	}
	s.push(at, v)
}

// Peek returns the time of the next event without removing it, and false if
// none is pending.
func (s *Scheduler[T]) Peek() (time.Time, bool) {
	if len(s.heap) == 0 {
		return time.Time{}, false
	}
	return s.base.Add(time.Duration(s.heap[0].at)), true
}

// Pop removes the earliest event (the first pushed among equal times),
// advances Now to its time and returns it; ok is false if none is pending.
func (s *Scheduler[T]) Pop() (at time.Time, v T, ok bool) {
	n := len(s.heap)
	if n == 0 {
		return s.Now(), v, false
	}
	top := s.heap[0]
	last := n - 1
	s.heap[0] = s.heap[last]
	// Clear the vacated slot so a popped event's value (often a pointer)
	// is not kept alive by the slice's spare capacity.
	s.heap[last] = schedEntry[T]{}
	s.heap = s.heap[:last]
	if last > 1 {
		s.siftDown(0)
	}
	s.now = top.at
	return s.base.Add(time.Duration(top.at)), top.v, true
}

func (s *Scheduler[T]) push(at int64, v T) {
	if at < s.now {
		at = s.now
	}
	s.heap = append(s.heap, schedEntry[T]{at: at, seq: s.seq, v: v})
	s.seq++
	s.siftUp(len(s.heap) - 1)
}

// before orders entries by time, then push order.
func before[T any](a, b *schedEntry[T]) bool {
	return a.at < b.at || (a.at == b.at && a.seq < b.seq)
}

// siftUp moves the entry at i towards the root until its parent is not
// later. It moves a hole instead of swapping, so each level costs one copy.
func (s *Scheduler[T]) siftUp(i int) {
	h := s.heap
	e := h[i]
	for i > 0 {
		p := (i - 1) / 2
		if !before(&e, &h[p]) {
			break
		}
		h[i] = h[p]
		i = p
	}
	h[i] = e
}

// siftDown moves the entry at i towards the leaves until no child is
// earlier, again moving a hole rather than swapping.
func (s *Scheduler[T]) siftDown(i int) {
	h := s.heap
	n := len(h)
	e := h[i]
	for {
		c := 2*i + 1
		if c >= n || c < 0 { // c < 0: int overflow
			break
		}
		if r := c + 1; r < n && before(&h[r], &h[c]) {
			c = r
		}
		if !before(&h[c], &e) {
			break
		}
		h[i] = h[c]
		i = c
	}
	h[i] = e
}
