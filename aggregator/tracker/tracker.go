package tracker

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/wire"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultExpectedPeriod = 3 * time.Second
	DefaultMaxNodes       = 10000
	// DefaultSuspectFactor and DefaultDownFactor multiply ExpectedPeriod
	// into the default SuspectAfter and DownAfter.
	DefaultSuspectFactor = 2
	DefaultDownFactor    = 5
)

// ErrFull is returned by Beat and StreamOpened when a peer the tracker does
// not know would exceed Config.MaxNodes and no Left node could be evicted to
// make room. Known peers are never refused. The caller counts it (reason
// "too_many_nodes") and ends the stream.
var ErrFull = errors.New("tracker: node limit reached (Config.MaxNodes)")

var (
	errNoPeer      = errors.New("tracker: empty peer id")
	errNoHeartbeat = errors.New("tracker: nil heartbeat")
)

// Config sets the tracker's thresholds and limits. Zero fields take defaults.
type Config struct {
	// ExpectedPeriod is the senders' BeatPeriod; default 3s. It only feeds
	// the defaults below and their validation.
	ExpectedPeriod time.Duration
	// SuspectAfter: a node silent for strictly longer turns Suspect;
	// default 2*ExpectedPeriod. Must be at least ExpectedPeriod, or a node
	// beating on time would flap.
	SuspectAfter time.Duration
	// DownAfter: a node silent for strictly longer turns Down; default
	// 5*ExpectedPeriod. Must be greater than SuspectAfter.
	DownAfter time.Duration
	// StartupGrace: no node turns Suspect or Down before start+StartupGrace;
	// default DownAfter. A negative value means no grace at all.
	StartupGrace time.Duration
	// MaxNodes bounds the tracked nodes (every state); default 10000.
	MaxNodes int
}

func (c Config) withDefaults() (Config, error) {
	if c.ExpectedPeriod < 0 {
		return c, fmt.Errorf("tracker: Config.ExpectedPeriod (%v) must not be negative", c.ExpectedPeriod)
	}
	if c.ExpectedPeriod == 0 {
		c.ExpectedPeriod = DefaultExpectedPeriod
	}
	if c.SuspectAfter < 0 {
		return c, fmt.Errorf("tracker: Config.SuspectAfter (%v) must not be negative", c.SuspectAfter)
	}
	if c.SuspectAfter == 0 {
		c.SuspectAfter = DefaultSuspectFactor * c.ExpectedPeriod
	}
	if c.SuspectAfter < c.ExpectedPeriod {
		return c, fmt.Errorf("tracker: Config.SuspectAfter (%v) must be at least ExpectedPeriod (%v)", c.SuspectAfter, c.ExpectedPeriod)
	}
	if c.DownAfter < 0 {
		return c, fmt.Errorf("tracker: Config.DownAfter (%v) must not be negative", c.DownAfter)
	}
	if c.DownAfter == 0 {
		c.DownAfter = DefaultDownFactor * c.ExpectedPeriod
	}
	if c.DownAfter <= c.SuspectAfter {
		return c, fmt.Errorf("tracker: Config.DownAfter (%v) must be greater than SuspectAfter (%v)", c.DownAfter, c.SuspectAfter)
	}
	switch {
	case c.StartupGrace == 0:
		c.StartupGrace = c.DownAfter
	case c.StartupGrace < 0:
		c.StartupGrace = 0
	}
	if c.MaxNodes < 0 {
		return c, fmt.Errorf("tracker: Config.MaxNodes (%d) must not be negative", c.MaxNodes)
	}
	if c.MaxNodes == 0 {
		c.MaxNodes = DefaultMaxNodes
	}
	return c, nil
}

// numShards is a power of two well above the core count, so that streams
// beating concurrently rarely meet on one mutex.
const (
	shardBits = 6
	numShards = 1 << shardBits
)

// evictAttempts bounds the retries when concurrent admissions race for the
// slot an eviction freed; past it the newcomer gets ErrFull.
const evictAttempts = 4

// Interned empty values, so that a node's handles are never the zero Handle
// (whose Value panics).
var (
	emptyString = unique.Make("")
	emptyCID    = unique.Make(cid.Undef)
)

// Tracker holds every known node, keyed by authenticated peer id. It is pure
// (no I/O, goroutines, clock reads or logging) and safe for concurrent use.
// See the package documentation for the rules.
type Tracker struct {
	cfg       Config
	start     time.Time
	startSec  int64  // start.Unix()
	startNsec int    // start.Nanosecond()
	mix       uint64 // random per tracker: see shardFor

	// Thresholds in nanoseconds, the unit of the stored times.
	suspectNs, downNs, graceNs int64

	count atomic.Int64 // tracked nodes, bounded by cfg.MaxNodes
	left  atomic.Int64 // nodes in state Left: eviction has candidates only if > 0

	sumMu  sync.Mutex // serialises Summary, which reuses groups
	groups map[group]int

	shards [numShards]shard
}

type shard struct {
	mu    sync.Mutex
	nodes map[peer.ID]*node
	// next is a lower bound on the earliest instant (ns since start) at
	// which a node of this shard may change state by silence. Beat keeps it
	// a lower bound cheaply (a beat only moves a deadline later, except for
	// a node that comes Up, which lowers next); Sweep skips the shard while
	// now <= next and recomputes it exactly when it scans.
	next  int64
	beats uint64
	// 128 bytes a shard: wherever the array starts, the hot fields of two
	// shards never share a cache line, so cores beating into different
	// shards do not steal each other's lines.
	_ [96]byte
}

// node is one record (128 bytes). Times are nanoseconds since the tracker's
// start (see rel: a monotonic reading in now is honoured), 8 bytes each
// instead of a time.Time's 24.
type node struct {
	// What Beat reads and writes comes first, to share cache lines.
	nickname   string
	miner      string
	head       unique.Handle[string]  // interned: most nodes share a head
	genesis    unique.Handle[string]  // the text, as in Node.Genesis
	genesisCID unique.Handle[cid.Cid] // binary form when set from GenesisCID alone
	height     uint64
	beats      uint64
	lastSeen   int64
	state      State
	stream     StreamState
	open       uint32 // streams open now
	streams    uint32 // streams opened, ever
	firstSeen  int64
	since      int64
	peer       peer.ID
}

// group is a consensus candidate: nodes agree when both fields are equal.
type group struct {
	head   unique.Handle[string]
	height uint64
}

// New returns an empty tracker whose startup grace starts at start. It
// applies the defaults to cfg and returns an error naming the field when
// cfg is invalid.
func New(cfg Config, start time.Time) (*Tracker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	t := &Tracker{
		cfg:       cfg,
		start:     start,
		startSec:  start.Unix(),
		startNsec: start.Nanosecond(),
		mix:       rand.Uint64(),
		suspectNs: int64(cfg.SuspectAfter),
		downNs:    int64(cfg.DownAfter),
		graceNs:   int64(cfg.StartupGrace),
		groups:    make(map[group]int),
	}
	for i := range t.shards {
		t.shards[i].nodes = make(map[peer.ID]*node)
		t.shards[i].next = math.MaxInt64
	}
	return t, nil
}

// Config returns the configuration in force, defaults applied (a negative
// StartupGrace reads as 0).
func (t *Tracker) Config() Config { return t.cfg }

// Len returns the number of tracked nodes.
func (t *Tracker) Len() int { return int(t.count.Load()) }

// rel converts now to nanoseconds since start. With monotonic readings on
// both (a real clock), time.Time.Sub uses them and is cheap. Without (virtual
// time, tests), Sub verifies overflow with an Add and an Equal, which costs
// more than the rest of a Beat; the wall arithmetic below gives the same
// result for any now within ±292 years of start.
func (t *Tracker) rel(now time.Time) int64 {
	if now != now.Round(0) { // now has a monotonic reading
		return int64(now.Sub(t.start))
	}
	return (now.Unix()-t.startSec)*int64(time.Second) + int64(now.Nanosecond()-t.startNsec)
}

func (t *Tracker) abs(ns int64) time.Time { return t.start.Add(time.Duration(ns)) }

// shardFor picks id's shard from its last 8 bytes, mixed with the tracker's
// random seed: a peer id ends in a public key or a digest, so those bytes
// are already uniform, and this costs a few loads instead of a hash of the
// whole id. The seed keeps a peer that grinds keys from aiming at one
// shard (which would only cost contention, never correctness).
func (t *Tracker) shardFor(id peer.ID) *shard {
	var x uint64
	if len(id) >= 8 {
		b := id[len(id)-8:] // one 8-byte load: the compiler merges these
		x = uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
	} else {
		for i := range len(id) {
			x = x<<8 | uint64(id[i])
		}
	}
	x ^= t.mix
	x *= 0x9e3779b97f4a7c15 // Fibonacci hashing: the top bits mix all of x
	return &t.shards[x>>(64-shardBits)]
}

// acquire returns id's shard, locked, and its node, admitting a new node
// when there is room (evicting the oldest Left node if needed). On error
// no lock is held.
func (t *Tracker) acquire(id peer.ID, at int64) (*shard, *node, error) {
	s := t.shardFor(id)
	for attempt := 0; ; attempt++ {
		s.mu.Lock()
		if n := s.nodes[id]; n != nil {
			return s, n, nil
		}
		if t.reserve() {
			n := &node{
				peer:       id,
				head:       emptyString,
				genesis:    emptyString,
				genesisCID: emptyCID,
				firstSeen:  at,
				since:      at,
			}
			s.nodes[id] = n
			return s, n, nil
		}
		// Evicting locks other shards: never with s held.
		s.mu.Unlock()
		if attempt == evictAttempts || !t.evictOldestLeft() {
			return nil, nil, ErrFull
		}
	}
}

// reserve takes a slot for a new node if one is free. A compare-and-swap
// loop rather than add-then-undo, so the count never exceeds MaxNodes even
// for an instant (Len reads it).
func (t *Tracker) reserve() bool {
	for {
		c := t.count.Load()
		if c >= int64(t.cfg.MaxNodes) {
			return false
		}
		if t.count.CompareAndSwap(c, c+1) {
			return true
		}
	}
}

// evictOldestLeft forgets the Left node (with no open stream) that entered
// Left first, ties broken by the smallest peer id so the choice does not
// depend on shard layout or map order. It reports whether it freed a slot.
func (t *Tracker) evictOldestLeft() bool {
	for range evictAttempts {
		if t.left.Load() == 0 {
			return false
		}
		var (
			best  peer.ID
			since int64
			found bool
		)
		for i := range t.shards {
			s := &t.shards[i]
			s.mu.Lock()
			for id, n := range s.nodes {
				if !evictable(n) {
					continue
				}
				if !found || n.since < since || (n.since == since && id < best) {
					best, since, found = id, n.since, true
				}
			}
			s.mu.Unlock()
		}
		if !found {
			return false
		}
		// The candidate may have beaten or left again since the scan.
		s := t.shardFor(best)
		s.mu.Lock()
		n := s.nodes[best]
		ok := n != nil && evictable(n) && n.since == since
		if ok {
			t.removeLocked(s, n)
		}
		s.mu.Unlock()
		if ok {
			return true
		}
	}
	return false
}

func evictable(n *node) bool { return n.state == Left && n.open == 0 }

func (t *Tracker) removeLocked(s *shard, n *node) {
	delete(s.nodes, n.peer)
	t.count.Add(-1)
	if n.state == Left {
		t.left.Add(-1)
	}
}

// transitionLocked moves n to state to at time at and returns the Change.
func (t *Tracker) transitionLocked(n *node, to State, at int64) Change {
	from := n.state
	if from == Left {
		t.left.Add(-1)
	}
	if to == Left {
		t.left.Add(1)
	}
	n.state = to
	n.since = at
	return Change{Peer: n.peer, Nickname: n.nickname, From: from, To: to, At: t.abs(at)}
}

// Beat records one heartbeat from the authenticated peer id; the body's
// nickname and miner address are labels only and never select a record.
// It returns the state change it caused (a node's first heartbeat: Joining
// -> Up; Suspect/Down/Left -> Up), if any. A new peer past MaxNodes gets
// ErrFull.
//
// Beat keeps no reference to hb itself, so the caller may reuse it. It
// keeps hb's Nickname and MinerAddress strings as they are (Go strings are
// immutable): a caller that builds strings over a reused buffer with unsafe
// must copy them first, and one that slices them out of a larger string
// keeps that string alive. Head and genesis are interned (copied once per
// distinct value). A steady node costs no allocation.
func (t *Tracker) Beat(id peer.ID, hb *wire.Heartbeat, now time.Time) (Change, bool, error) {
	if id == "" {
		return Change{}, false, errNoPeer
	}
	if hb == nil {
		return Change{}, false, errNoHeartbeat
	}
	at := t.rel(now)
	s, n, err := t.acquire(id, at)
	if err != nil {
		return Change{}, false, err
	}
	// Keeping the caller's own strings (not copies) makes the next compare
	// a pointer compare when the caller reuses them, as wire.DecodeLine does
	// for an unchanged field: no stored byte is read for a steady node.
	if n.nickname != hb.Nickname {
		n.nickname = hb.Nickname
	}
	if n.miner != hb.MinerAddress {
		n.miner = hb.MinerAddress
	}
	if n.head.Value() != hb.Head {
		n.head = unique.Make(hb.Head) // copies the string when it is new
	}
	t.setGenesis(n, hb)
	n.height = hb.Height
	// Concurrent streams may present their nows out of order: last seen
	// never moves back, which also keeps shard.next a valid lower bound.
	n.lastSeen = max(n.lastSeen, at)
	n.beats++
	s.beats++
	var (
		ch      Change
		changed bool
	)
	if n.state != Up {
		ch, changed = t.transitionLocked(n, Up, at), true
		s.next = min(s.next, n.lastSeen+t.suspectNs)
	}
	s.mu.Unlock()
	return ch, changed, nil
}

// setGenesis keeps the genesis label. A decoded heartbeat carries the text
// as received in hb.Genesis (even when it does not parse as a CID); a
// heartbeat built by hand (the simulation's) may set only GenesisCID, whose
// text costs an allocation, so its binary form is kept to compare with and
// the text is made only when it changes.
func (t *Tracker) setGenesis(n *node, hb *wire.Heartbeat) {
	if hb.Genesis != "" || hb.GenesisCID == nil || !hb.GenesisCID.Defined() {
		if n.genesis.Value() != hb.Genesis {
			n.genesis, n.genesisCID = unique.Make(hb.Genesis), emptyCID
		}
		return
	}
	if c := *hb.GenesisCID; n.genesisCID.Value() != c {
		n.genesis, n.genesisCID = unique.Make(c.String()), unique.Make(c)
	}
}

// StreamOpened records that id opened a heartbeat stream. A peer the
// tracker does not know becomes a Joining node, which takes a MaxNodes
// slot: past the limit it returns ErrFull so the handler can refuse the
// stream before reading from it. The node's state does not change: only a
// heartbeat makes it Up.
func (t *Tracker) StreamOpened(id peer.ID, now time.Time) error {
	if id == "" {
		return errNoPeer
	}
	s, n, err := t.acquire(id, t.rel(now))
	if err != nil {
		return err
	}
	n.streams++
	n.open++
	n.stream = StreamOpen
	s.mu.Unlock()
	return nil
}

// StreamEnded records the end of one of id's streams; graceful means a
// clean EOF. Streams are counted, so the end of a superseded stream while a
// newer one is open changes nothing. When the last open stream ends:
//   - a node that never sent a heartbeat is forgotten (it never was one);
//   - on a graceful EOF the node turns Left (a Change, but not an alert);
//   - otherwise its state is left to silence detection (Sweep): a reset is
//     not proof of death, the sender reconnects.
//
// An unknown id (e.g. one refused with ErrFull) is ignored.
func (t *Tracker) StreamEnded(id peer.ID, graceful bool, now time.Time) (Change, bool) {
	s := t.shardFor(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[id]
	if n == nil {
		return Change{}, false
	}
	if n.open > 0 {
		n.open--
	}
	if n.open > 0 {
		return Change{}, false
	}
	if n.beats == 0 {
		t.removeLocked(s, n)
		return Change{}, false
	}
	if !graceful {
		n.stream = StreamReset
		return Change{}, false
	}
	n.stream = StreamClosed
	if n.state == Left {
		return Change{}, false
	}
	return t.transitionLocked(n, Left, t.rel(now)), true
}

// Forget drops id's record and frees its slot, whatever its state. It
// reports whether id was known. Nodes that are Down stay until forgotten
// (they are what alerts watch), so an operator who retires a node calls
// Forget. A later heartbeat or stream from id starts a new record.
func (t *Tracker) Forget(id peer.ID) bool {
	s := t.shardFor(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[id]
	if n == nil {
		return false
	}
	t.removeLocked(s, n)
	return true
}

// Sweep applies silence detection at now: an Up node silent strictly longer
// than SuspectAfter turns Suspect, and an Up or Suspect node silent strictly
// longer than DownAfter turns Down (one Change, Up -> Down, when a single
// sweep sees both thresholds crossed). Before start+StartupGrace it changes
// nothing. It appends the changes to dst sorted by peer id and returns the
// extended slice. The caller sweeps periodically (e.g. every second); the
// precision of the transitions is the sweep period.
//
// Sweep skips every shard in which no deadline has passed, so sweeping
// often is cheap.
func (t *Tracker) Sweep(now time.Time, dst []Change) []Change {
	at := t.rel(now)
	if at < t.graceNs {
		return dst
	}
	first := len(dst)
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		if at > s.next {
			dst = t.sweepLocked(s, at, dst)
		}
		s.mu.Unlock()
	}
	changes := dst[first:]
	slices.SortFunc(changes, func(a, b Change) int { return cmp.Compare(a.Peer, b.Peer) })
	return dst
}

func (t *Tracker) sweepLocked(s *shard, at int64, dst []Change) []Change {
	next := int64(math.MaxInt64)
	for _, n := range s.nodes {
		var deadline int64
		switch n.state {
		case Up:
			switch silence := at - n.lastSeen; {
			case silence > t.downNs:
				dst = append(dst, t.transitionLocked(n, Down, at))
				continue
			case silence > t.suspectNs:
				dst = append(dst, t.transitionLocked(n, Suspect, at))
				deadline = n.lastSeen + t.downNs
			default:
				deadline = n.lastSeen + t.suspectNs
			}
		case Suspect:
			if at-n.lastSeen > t.downNs {
				dst = append(dst, t.transitionLocked(n, Down, at))
				continue
			}
			deadline = n.lastSeen + t.downNs
		default:
			continue // Joining, Down and Left do not change by silence
		}
		next = min(next, deadline)
	}
	s.next = next
	return dst
}

// Node returns a snapshot of id's record.
func (t *Tracker) Node(id peer.ID) (Node, bool) {
	s := t.shardFor(id)
	s.mu.Lock()
	n := s.nodes[id]
	var out Node
	if n != nil {
		out = t.snapshot(n)
	}
	s.mu.Unlock()
	return out, n != nil
}

// Nodes appends a snapshot of every node to dst, sorted by peer id, and
// returns the extended slice. Shards are read one after the other: every
// node appears exactly once, each record is consistent, but records from
// different shards may straddle a concurrent Beat.
func (t *Tracker) Nodes(dst []Node) []Node {
	first := len(dst)
	dst = slices.Grow(dst, t.Len())
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for _, n := range s.nodes {
			dst = append(dst, t.snapshot(n))
		}
		s.mu.Unlock()
	}
	slices.SortFunc(dst[first:], func(a, b Node) int { return cmp.Compare(a.Peer, b.Peer) })
	return dst
}

func (t *Tracker) snapshot(n *node) Node {
	out := Node{
		Peer:         n.peer,
		Nickname:     n.nickname,
		Head:         n.head.Value(),
		Height:       n.height,
		MinerAddress: n.miner,
		FirstSeen:    t.abs(n.firstSeen),
		Since:        t.abs(n.since),
		Beats:        n.beats,
		Streams:      uint64(n.streams),
		State:        n.state,
		Stream:       n.stream,
	}
	if n.beats > 0 {
		out.LastSeen = t.abs(n.lastSeen)
	}
	out.Genesis = n.genesis.Value()
	return out
}

// Summary counts the nodes by state and computes consensus in one O(n) pass
// (one map increment per Up node, no allocation once the group map has
// grown), so a Prometheus collector can call it on every scrape. Shards are
// read one after the other, as in Nodes. Consensus rules: see the package
// documentation.
func (t *Tracker) Summary() Summary {
	t.sumMu.Lock()
	defer t.sumMu.Unlock()
	groups := t.groups
	clear(groups)
	var sum Summary
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		sum.Beats += s.beats
		for _, n := range s.nodes {
			sum.ByState[n.state]++
			if n.open > 0 {
				sum.Connected++
			}
			if n.state == Up {
				groups[group{n.head, n.height}]++
			}
		}
		s.mu.Unlock()
	}
	for _, c := range sum.ByState {
		sum.Nodes += c
	}
	var (
		best  group
		bestN int
	)
	for g, c := range groups {
		if bestN == 0 || better(g, c, best, bestN) {
			best, bestN = g, c
		}
	}
	if bestN > 0 {
		sum.ConsensusHead = best.head.Value()
		sum.ConsensusHeight = best.height
		sum.InConsensus = bestN
		sum.InDispute = sum.ByState[Up] - bestN
	}
	return sum
}

// better orders consensus candidates: more nodes, then greater height, then
// the lexicographically smallest head. Distinct groups differ in head or
// height, so this is a total order and the winner does not depend on map
// iteration order.
func better(g group, n int, best group, bestN int) bool {
	if n != bestN {
		return n > bestN
	}
	if g.height != best.height {
		return g.height > best.height
	}
	return g.head.Value() < best.head.Value()
}
