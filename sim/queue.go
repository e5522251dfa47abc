package sim

import (
	"cmp"
	"math/bits"
	"slices"
)

// queue is the simulator's virtual clock: a calendar queue (a timing wheel)
// that pops events in exactly the order of (time, push sequence number), so
// events at equal times pop in the order they were pushed and a seeded run
// replays exactly: the same order a binary heap keyed by (time, seq) gives
// (the test checks it against container/heap).
//
// Why not a binary heap: at 10,000 nodes the run is bound by memory
// latency, and profiling showed the heap's sift-down (15 levels over ~30,000
// pending events, most of them cache misses) as the largest cost after the
// machines and the tracker; a 4-ary heap only trimmed it. Here almost every
// push lands a few milliseconds (a message) to a few seconds (the next beat,
// a retry) ahead, so:
//   - time is cut into buckets of 2^20 ns (about 1ms); a wheel of 2^14
//     buckets covers the next 17s, and an event further ahead waits in an
//     overflow heap until the wheel reaches it;
//   - a push appends to its bucket: O(1), and the pushes made around one
//     instant land in neighbouring buckets, so they touch few cache lines;
//   - when the cursor enters a bucket, it sorts it by (time, seq) (a handful
//     of events at 10,000 nodes) and pops it front to back; a push into the
//     bucket being popped is inserted in order;
//   - the events about to pop are known in order, which lets the loop touch
//     their memory ahead of time (see sim.touch).
//
// Times are int64 Unix nanoseconds.
type queue struct {
	now int64
	seq uint64
	cur int64 // the bucket being popped (time >> wheelShift)
	pos int   // next entry of the current bucket; it is sorted from pos on
	n   int   // entries in the wheel
	b   [][]qent
	occ [wheelSize / 64]uint64 // which buckets hold entries: skip empty ones fast
	ovf []qent                 // a binary min-heap of the events beyond the wheel
}

type qent struct {
	at  int64
	seq uint64
	ev  event
}

const (
	wheelShift = 20 // 2^20 ns buckets
	wheelBits  = 14 // 2^14 buckets: a 17.2s horizon
	wheelSize  = 1 << wheelBits
	wheelMask  = wheelSize - 1
)

// newQueue returns an empty queue at now. perBucket is the expected number
// of entries per bucket: that much room in each bucket is carved out of one
// array, so that neighbouring buckets (neighbouring instants, which is how
// the loop visits them) are neighbours in memory and the CPU's prefetcher
// streams them in; a bucket that outgrows its room moves to its own array.
func newQueue(now int64, perBucket int) *queue {
	q := &queue{now: now, cur: now >> wheelShift, b: make([][]qent, wheelSize)}
	if perBucket > 0 {
		arena := make([]qent, wheelSize*perBucket)
		for i := range q.b {
			q.b[i] = arena[i*perBucket : i*perBucket : (i+1)*perBucket]
		}
	}
	return q
}

func qless(a, b *qent) bool { return a.at < b.at || (a.at == b.at && a.seq < b.seq) }

func (q *queue) len() int { return q.n + len(q.ovf) }

// push schedules v at now+d (d < 0 counts as 0: time never runs backwards).
func (q *queue) push(d int64, v event) {
	e := qent{at: q.now + max(d, 0), seq: q.seq, ev: v}
	q.seq++
	bi := e.at >> wheelShift
	switch {
	case bi >= q.cur+wheelSize:
		q.ovfPush(e)
		return
	case bi == q.cur:
		// The bucket being popped is sorted from pos on; e has the highest
		// seq, so it goes after every entry due at or before e.at.
		bk := q.b[bi&wheelMask]
		i := len(bk)
		for i > q.pos && bk[i-1].at > e.at {
			i--
		}
		bk = slices.Insert(bk, i, e)
		q.b[bi&wheelMask] = bk
	default:
		q.add(e)
		return
	}
	q.n++
}

// add appends e to its bucket, unsorted: the bucket is sorted when the
// cursor reaches it.
func (q *queue) add(e qent) {
	i := (e.at >> wheelShift) & wheelMask
	q.b[i] = append(q.b[i], e)
	q.occ[i/64] |= 1 << (i % 64)
	q.n++
}

// nextOccupied returns the first bucket after cur that holds entries (the
// wheel holds some).
func (q *queue) nextOccupied() int64 {
	from := (q.cur + 1) & wheelMask
	w, bit := from/64, from%64
	// The rest of from's word, then the following words, wrapping around.
	if m := q.occ[w] >> bit; m != 0 {
		return q.cur + 1 + int64(bits.TrailingZeros64(m))
	}
	for k := int64(1); k <= wheelSize/64; k++ {
		i := (w + k) % (wheelSize / 64)
		if m := q.occ[i]; m != 0 {
			idx := i*64 + int64(bits.TrailingZeros64(m))
			return q.cur + 1 + (idx-from)&wheelMask
		}
	}
	panic("sim: queue: no occupied bucket")
}

// next returns the entry that pops next, advancing the cursor over empty
// buckets, or nil if the queue is empty. It does not remove it.
func (q *queue) next() *qent {
	for {
		bk := q.b[q.cur&wheelMask]
		if q.pos < len(bk) {
			return &bk[q.pos]
		}
		i := q.cur & wheelMask
		q.b[i] = bk[:0]
		q.occ[i/64] &^= 1 << (i % 64)
		q.pos = 0
		switch {
		case q.n > 0:
			q.cur = q.nextOccupied()
		case len(q.ovf) > 0:
			q.cur = q.ovf[0].at >> wheelShift // jump over the empty wheel
		default:
			return nil
		}
		// Bring the events that entered the horizon into the wheel. They
		// were beyond the old horizon, so they all land after cur.
		for len(q.ovf) > 0 && q.ovf[0].at>>wheelShift < q.cur+wheelSize {
			q.add(q.ovfPop())
		}
		if bk := q.b[q.cur&wheelMask]; len(bk) > 1 {
			sortEntries(bk)
		}
	}
}

// sortEntries sorts a bucket by (time, seq): insertion sort for the usual
// handful, the library's sort for a crowd (every node reacting at once).
func sortEntries(bk []qent) {
	if len(bk) > 24 {
		slices.SortFunc(bk, func(a, b qent) int {
			if c := cmp.Compare(a.at, b.at); c != 0 {
				return c
			}
			return cmp.Compare(a.seq, b.seq)
		})
		return
	}
	for i := 1; i < len(bk); i++ {
		e := bk[i]
		j := i
		for j > 0 && qless(&e, &bk[j-1]) {
			bk[j] = bk[j-1]
			j--
		}
		bk[j] = e
	}
}

// pop removes the earliest event, moves now to its time and returns it.
func (q *queue) pop() (int64, event, bool) {
	e := q.next()
	if e == nil {
		return q.now, event{}, false
	}
	q.pos++
	q.n--
	q.now = e.at
	return e.at, e.ev, true
}

// peek returns the event k places after the next one (k = 0: the next one)
// if it is in the bucket being popped; the loop uses it to touch memory
// ahead.
func (q *queue) peek(k int) (event, bool) {
	bk := q.b[q.cur&wheelMask]
	if i := q.pos + k; i < len(bk) {
		return bk[i].ev, true
	}
	return event{}, false
}

func (q *queue) ovfPush(e qent) {
	h := append(q.ovf, e)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !qless(&e, &h[p]) {
			break
		}
		h[i] = h[p]
		i = p
	}
	h[i] = e
	q.ovf = h
}

func (q *queue) ovfPop() qent {
	h := q.ovf
	top := h[0]
	last := h[len(h)-1]
	h = h[:len(h)-1]
	i := 0
	for {
		c := 2*i + 1
		if c >= len(h) {
			break
		}
		if c+1 < len(h) && qless(&h[c+1], &h[c]) {
			c++
		}
		if !qless(&h[c], &last) {
			break
		}
		h[i] = h[c]
		i = c
	}
	if len(h) > 0 {
		h[i] = last
	}
	q.ovf = h
	return top
}
