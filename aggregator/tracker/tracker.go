package tracker

import (
	"cmp"
	"errors"
	"fmt"
	"math"
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
	// DefaultMinPeriodDivisor and DefaultMaxPeriodFactor bound a node's
	// learned period: from ExpectedPeriod/3 (1 s) to 10x ExpectedPeriod
	// (30 s, the aggregator's default idle timeout, past which a stream is
	// cut anyway).
	DefaultMinPeriodDivisor = 3
	DefaultMaxPeriodFactor  = 10
	// DefaultReconnectAllowance is the sender's default ReconnectPeriod
	// (10 s) plus its +20% jitter: after a lost stream a sender that waits
	// one full reconnect delay is back within it.
	DefaultReconnectAllowance = 12 * time.Second
	// DefaultDisruptionFraction is the share of live nodes that must fall
	// silent together for the tracker to call it a disruption of its own
	// view rather than node failures: the Kubernetes node lifecycle
	// controller's --unhealthy-zone-threshold.
	DefaultDisruptionFraction = 0.55
	// DefaultDisruptionMinNodes is the fewest live nodes for which a
	// disruption is declared: with one or two nodes, their failure is
	// reported as such.
	DefaultDisruptionMinNodes = 3
	// DefaultDisruptionMaxHold bounds a disrupted mode; after it, nodes
	// still silent go Down as usual.
	DefaultDisruptionMaxHold = 10 * time.Minute
	// DefaultDuplicateWindow and DefaultDuplicateThreshold: more than 3
	// supersedes of one peer's streams within a minute flag a duplicate
	// identity (an honest sender supersedes at most once per reconnect).
	DefaultDuplicateWindow    = time.Minute
	DefaultDuplicateThreshold = 3
	// DefaultDownRetention is how long a Down node keeps its slot against
	// a newcomer when the tracker is full.
	DefaultDownRetention = 24 * time.Hour
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
	// ExpectedPeriod is the senders' usual BeatPeriod; default 3s. It
	// scales the defaults below; SuspectAfter/ExpectedPeriod and
	// DownAfter/ExpectedPeriod are the factors applied to each node's own
	// learned period.
	ExpectedPeriod time.Duration
	// SuspectAfter: a node beating every ExpectedPeriod that is silent for
	// strictly longer turns Suspect; default 2*ExpectedPeriod. Must be at
	// least ExpectedPeriod, or a node beating on time would flap.
	SuspectAfter time.Duration
	// DownAfter: as SuspectAfter, for Down; default 5*ExpectedPeriod. Must
	// be greater than SuspectAfter.
	DownAfter time.Duration
	// StartupGrace: no node turns Suspect or Down before start+StartupGrace;
	// default DownAfter. A negative value means no grace at all. A restored
	// (Unknown) node's Down is also held while restored nodes still come
	// back (the re-admission hold, see the package documentation).
	StartupGrace time.Duration
	// MaxNodes bounds the tracked nodes (every state); default 10000.
	MaxNodes int
	// MinPeriod and MaxPeriod clamp each node's learned period; defaults
	// ExpectedPeriod/3 and 10*ExpectedPeriod. A node with no measured
	// interval yet is judged with MaxPeriod, so a slow sender does not flap
	// before the tracker has seen it beat twice. MinPeriod = MaxPeriod =
	// ExpectedPeriod turns learning off.
	MinPeriod, MaxPeriod time.Duration
	// ReconnectAllowance: after a node's last stream ends by reset or error
	// (not a clean EOF), it does not turn Suspect before the end plus
	// ReconnectAllowance plus its period; default 12 s (the sender's
	// ReconnectPeriod +20%). Negative: no allowance.
	ReconnectAllowance time.Duration
	// DisruptionFraction: when strictly more than this fraction of the live
	// (Up or Suspect) nodes is silent past its Suspect threshold, the
	// tracker enters disrupted mode and no node turns Down; it leaves when
	// strictly more than the fraction beats again. Default 0.55; in (0, 1],
	// and 1 turns the guard off.
	DisruptionFraction float64
	// DisruptionMinNodes is the fewest live nodes for which a disruption
	// is declared; default 3.
	DisruptionMinNodes int
	// DisruptionMaxHold ends a disrupted mode that lasted that long: nodes
	// still silent then go Down as usual; default 10 minutes.
	DisruptionMaxHold time.Duration
	// DuplicateWindow and DuplicateThreshold: a peer whose streams are
	// superseded strictly more than DuplicateThreshold times within one
	// DuplicateWindow is flagged DuplicateIdentity; defaults one minute and 3.
	DuplicateWindow    time.Duration
	DuplicateThreshold int
	// DownRetention: when the tracker is full, a newcomer may take the slot
	// of the node Down the longest once it has been Down strictly longer
	// than this; default 24 hours.
	DownRetention time.Duration
}

// ConfigError is an invalid Config: Field names the field at fault by its
// Go name ("DownAfter"), Reason says why, naming by their Go names the
// fields it was checked against. A field left to its default is never at
// fault: when a default derived from another field breaks a rule, the
// error names the field it was derived from.
type ConfigError struct {
	Field, Reason string
}

func (e *ConfigError) Error() string { return "tracker: Config." + e.Field + " " + e.Reason }

func configErr(field, format string, args ...any) error {
	return &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

func (c Config) withDefaults() (Config, error) {
	if c.ExpectedPeriod < 0 {
		return c, configErr("ExpectedPeriod", "(%v) must not be negative", c.ExpectedPeriod)
	}
	if c.ExpectedPeriod == 0 {
		c.ExpectedPeriod = DefaultExpectedPeriod
	}
	if c.SuspectAfter < 0 {
		return c, configErr("SuspectAfter", "(%v) must not be negative", c.SuspectAfter)
	}
	if c.SuspectAfter == 0 {
		c.SuspectAfter = DefaultSuspectFactor * c.ExpectedPeriod
	}
	if c.SuspectAfter < c.ExpectedPeriod {
		return c, configErr("SuspectAfter", "(%v) must be at least ExpectedPeriod (%v)", c.SuspectAfter, c.ExpectedPeriod)
	}
	if c.DownAfter < 0 {
		return c, configErr("DownAfter", "(%v) must not be negative", c.DownAfter)
	}
	if c.DownAfter == 0 {
		c.DownAfter = DefaultDownFactor * c.ExpectedPeriod
	}
	if c.DownAfter <= c.SuspectAfter {
		return c, configErr("DownAfter", "(%v) must be greater than SuspectAfter (%v)", c.DownAfter, c.SuspectAfter)
	}
	switch {
	case c.StartupGrace == 0:
		c.StartupGrace = c.DownAfter
	case c.StartupGrace < 0:
		c.StartupGrace = 0
	}
	if c.MaxNodes < 0 {
		return c, configErr("MaxNodes", "(%d) must not be negative", c.MaxNodes)
	}
	if c.MaxNodes == 0 {
		c.MaxNodes = DefaultMaxNodes
	}
	if c.MinPeriod < 0 || c.MaxPeriod < 0 {
		return c, configErr("MinPeriod", "(%v) and MaxPeriod (%v) must not be negative", c.MinPeriod, c.MaxPeriod)
	}
	if c.MinPeriod == 0 {
		c.MinPeriod = c.ExpectedPeriod / DefaultMinPeriodDivisor
	}
	if c.MaxPeriod == 0 {
		c.MaxPeriod = DefaultMaxPeriodFactor * c.ExpectedPeriod
		if c.MaxPeriod > maxPeriodLimit {
			return c, configErr("ExpectedPeriod", "(%v) must be at most %v: by default a node's learned period may reach %d times it, and no period may exceed %v",
				c.ExpectedPeriod, maxPeriodLimit/DefaultMaxPeriodFactor, DefaultMaxPeriodFactor, maxPeriodLimit)
		}
	}
	if c.MinPeriod > c.MaxPeriod {
		return c, configErr("MinPeriod", "(%v) must not exceed MaxPeriod (%v)", c.MinPeriod, c.MaxPeriod)
	}
	if c.MaxPeriod > maxPeriodLimit {
		return c, configErr("MaxPeriod", "(%v) must not exceed %v", c.MaxPeriod, maxPeriodLimit)
	}
	switch {
	case c.ReconnectAllowance == 0:
		c.ReconnectAllowance = DefaultReconnectAllowance
	case c.ReconnectAllowance < 0:
		c.ReconnectAllowance = 0
	}
	if c.DisruptionFraction == 0 {
		c.DisruptionFraction = DefaultDisruptionFraction
	}
	if !(c.DisruptionFraction > 0 && c.DisruptionFraction <= 1) { // NaN too
		return c, configErr("DisruptionFraction", "(%v) must be in (0, 1]", c.DisruptionFraction)
	}
	if c.DisruptionMinNodes < 0 {
		return c, configErr("DisruptionMinNodes", "(%d) must not be negative", c.DisruptionMinNodes)
	}
	if c.DisruptionMinNodes == 0 {
		c.DisruptionMinNodes = DefaultDisruptionMinNodes
	}
	if c.DisruptionMaxHold < 0 {
		return c, configErr("DisruptionMaxHold", "(%v) must not be negative", c.DisruptionMaxHold)
	}
	if c.DisruptionMaxHold == 0 {
		c.DisruptionMaxHold = DefaultDisruptionMaxHold
	}
	if c.DuplicateWindow < 0 {
		return c, configErr("DuplicateWindow", "(%v) must not be negative", c.DuplicateWindow)
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = DefaultDuplicateWindow
	}
	if c.DuplicateThreshold < 0 || c.DuplicateThreshold > math.MaxUint16-1 {
		return c, configErr("DuplicateThreshold", "(%d) must be between 0 and %d", c.DuplicateThreshold, math.MaxUint16-1)
	}
	if c.DuplicateThreshold == 0 {
		c.DuplicateThreshold = DefaultDuplicateThreshold
	}
	if c.DownRetention < 0 {
		return c, configErr("DownRetention", "(%v) must not be negative", c.DownRetention)
	}
	if c.DownRetention == 0 {
		c.DownRetention = DefaultDownRetention
	}
	return c, nil
}

// maxPeriodLimit keeps a period in the uint32 milliseconds of a sample.
const maxPeriodLimit = 24 * time.Hour

// periodSamples is how many recent intervals a node's period is the
// median of: enough that one late beat or one burst read does not move it.
const periodSamples = 8

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
	startSec  int64 // start.Unix()
	startNsec int   // start.Nanosecond()

	// Thresholds in nanoseconds, the unit of the stored times, and the
	// factors that scale a node's period into its own thresholds.
	graceNs, allowNs, minNs, maxNs int64
	retentionNs, dupWindowNs       int64
	suspectF, downF                float64
	// Thresholds of a node with no measured interval (period MaxPeriod).
	priorSuspectNs, priorDownNs int64

	// disruptedAt is ns since start when disrupted mode was entered,
	// notDisrupted otherwise. Only Sweep writes it (under mu); Disrupted
	// reads it without the lock.
	disruptedAt atomic.Int64

	// Local health (SetHealth): the multiplier as float64 bits, and the
	// lag it came from. Read without mu.
	healthM   atomic.Uint64
	healthLag atomic.Int64

	// mu guards everything below: one mutex over one map. 64 mutex shards
	// saved under 5% of the aggregator's CPU per heartbeat end to end
	// (docs/benchmarks.md), so they were deleted.
	mu     sync.Mutex
	sweepM float64 // the health multiplier of the running Sweep
	nodes  map[peer.ID]*node
	// next is a lower bound on the earliest instant (ns since start) at
	// which a node may change state by silence. Beat keeps it a lower bound
	// cheaply (a beat only moves a deadline later, except for a node that
	// comes Up, which lowers next); Sweep skips the scan while now <= next
	// and recomputes it exactly when it scans.
	next int64
	// readmitted is when (ns since start) a restored node last beat again
	// (Unknown -> Up); math.MinInt64 before any. Unknown nodes do not turn
	// Down while one did within the reconnect allowance (unknownDownAt).
	readmitted  int64
	beats       uint64
	inState     [numStates]int64 // nodes per state: Summary-free counts for Sweep and eviction
	recent      int64            // Down nodes with node.recent set
	holdExpired bool             // left by MaxHold: no new episode before the silence clears
	cands       []downCand       // Sweep's scratch: nodes past their Down threshold
	groups      map[group]int    // Summary's scratch
}

// node is one record (304 bytes, 176 of them for silence detection,
// duplicate identity and protocol v2). Times are nanoseconds since the
// tracker's start (see rel: a monotonic reading in now is honoured), 8
// bytes each instead of a time.Time's 24.
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

	// Silence detection: the node's own thresholds (from its period), the
	// stream count at its last beat (an interval across a reconnect is not
	// a sample), the floor of its Suspect deadline after a lost stream.
	suspectNs, downNs int64
	period            int64
	allowUntil        int64 // notDisrupted (MinInt64) when no allowance runs
	beatStreams       uint32
	nSamples, iSample uint8
	samples           [periodSamples]uint32 // intervals in ms, a ring

	// Protocol v2: the declared period replaces learning; boot, seq, RTT
	// and skew as the node reported them.
	protocol  uint8
	declared  bool
	boot      [16]byte
	bootAt    int64
	restarts  uint32
	lastSeq   uint64
	lost      uint64
	rtt, skew int64

	// Duplicate identity: supersedes counted in a fixed window.
	dupCount uint16
	dup      bool
	// restored: lastSeen came from Restore (the node has not beaten since).
	restored bool
	// wasDown: Restored.WasDown; it only matters while the node is Unknown.
	wasDown bool
	// recent: the node went Down less than its own Down threshold ago
	// (until recentUntil); it still counts as fallen silent for the
	// disruption guard, so that a fleet that fails over tens of seconds is
	// seen as one event.
	recent      bool
	recentUntil int64
	dupWinStart int64
	dupUntil    int64 // flag clears after this (last supersede + window)
}

// notDisrupted is disruptedAt's value outside disrupted mode.
const notDisrupted = math.MinInt64

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
		cfg:         cfg,
		start:       start,
		startSec:    start.Unix(),
		startNsec:   start.Nanosecond(),
		graceNs:     int64(cfg.StartupGrace),
		allowNs:     int64(cfg.ReconnectAllowance),
		minNs:       int64(cfg.MinPeriod),
		maxNs:       int64(cfg.MaxPeriod),
		retentionNs: int64(cfg.DownRetention),
		dupWindowNs: int64(cfg.DuplicateWindow),
		suspectF:    float64(cfg.SuspectAfter) / float64(cfg.ExpectedPeriod),
		downF:       float64(cfg.DownAfter) / float64(cfg.ExpectedPeriod),
		nodes:       make(map[peer.ID]*node),
		next:        math.MaxInt64,
		readmitted:  math.MinInt64,
		groups:      make(map[group]int),
	}
	t.priorSuspectNs, t.priorDownNs = t.thresholds(t.maxNs)
	t.disruptedAt.Store(notDisrupted)
	return t, nil
}

// Config returns the configuration in force, defaults applied (a negative
// StartupGrace reads as 0).
func (t *Tracker) Config() Config { return t.cfg }

// Len returns the number of tracked nodes.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.nodes)
}

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

// thresholds scales a period into Suspect and Down thresholds. Down stays
// strictly after Suspect whatever the rounding.
func (t *Tracker) thresholds(period int64) (suspect, down int64) {
	suspect = int64(float64(period) * t.suspectF)
	down = max(int64(float64(period)*t.downF), suspect+1)
	return suspect, down
}

// acquireLocked returns id's node, admitting a new node when there is
// room (evicting a Left node, or one Down past the retention, if needed).
// t.mu must be held.
func (t *Tracker) acquireLocked(id peer.ID, at int64) (*node, error) {
	if n := t.nodes[id]; n != nil {
		return n, nil
	}
	if len(t.nodes) >= t.cfg.MaxNodes && !t.evictLocked(at) {
		return nil, ErrFull
	}
	n := t.newNode(id, at)
	t.nodes[id] = n
	t.inState[Joining]++
	return n, nil
}

// newNode is a node first known at at, in the state its zero value gives
// (Joining), with nothing learned yet: the prior period and thresholds.
func (t *Tracker) newNode(id peer.ID, at int64) *node {
	return &node{
		peer:       id,
		head:       emptyString,
		genesis:    emptyString,
		genesisCID: emptyCID,
		firstSeen:  at,
		since:      at,
		period:     t.maxNs,
		suspectNs:  t.priorSuspectNs,
		downNs:     t.priorDownNs,
		allowUntil: math.MinInt64,
	}
}

// evictLocked forgets one node to make room at time at: the Left node
// (with no open stream) that left first, or else the node Down the
// longest, once Down strictly longer than DownRetention (with no open
// stream). Ties go to the smallest peer id, so the choice does not depend
// on map order. It reports whether it freed a slot. t.mu must be held.
func (t *Tracker) evictLocked(at int64) bool {
	if t.inState[Left] == 0 && t.inState[Down] == 0 {
		return false
	}
	var (
		best  *node
		since int64
		rank  = 2 // 0: Left, 1: Down past retention, 2: none
	)
	for id, n := range t.nodes {
		r := t.evictRank(n, at)
		if r < rank || r == rank && r < 2 && (n.since < since || n.since == since && id < best.peer) {
			best, since, rank = n, n.since, r
		}
	}
	if rank == 2 {
		return false
	}
	if to, row := step(best.state, Evicted); !row || to != Gone {
		return false
	}
	t.removeLocked(best)
	return true
}

// evictRank orders eviction candidates: 0 a Left node, 1 a node Down
// longer than the retention, 2 not a candidate. A node with an open stream
// never is: its sender is there.
func (t *Tracker) evictRank(n *node, at int64) int {
	switch {
	case n.open > 0:
		return 2
	case n.state == Left:
		return 0
	case n.state == Down && at-n.since > t.retentionNs:
		return 1
	}
	return 2
}

func (t *Tracker) removeLocked(n *node) {
	delete(t.nodes, n.peer)
	t.inState[n.state]--
	t.clearRecentLocked(n)
}

// clearRecentLocked ends n's count as a recently Down node.
func (t *Tracker) clearRecentLocked(n *node) {
	if n.recent {
		n.recent = false
		t.recent--
	}
}

// transitionLocked applies the table's row for (n.state, on) at time at
// and returns the Change; false when the row keeps the state (or there is
// none). A row to Gone is not applied here: the caller removes the node.
func (t *Tracker) transitionLocked(n *node, on Event, at int64) (Change, bool) {
	from := n.state
	to, ok := step(from, on)
	if !ok || to == from || to == Gone {
		return Change{}, false
	}
	t.inState[from]--
	t.inState[to]++
	t.clearRecentLocked(n)
	if to == Down {
		n.recent, n.recentUntil = true, at+n.downNs
		t.recent++
	}
	n.state = to
	n.since = at
	if to == Down && from == Unknown {
		// Not a node that fell silent now: it was silent across the
		// restart, and does not count for the disruption guard.
		t.clearRecentLocked(n)
	}
	return Change{Peer: n.peer, Nickname: n.nickname, From: from, To: to, At: t.abs(at)}, true
}

// unknownDownAt is the instant after which a restored node that has not
// beaten since the restart turns Down: the end of the startup grace, or
// later while the re-admission goes on (a restored node came Up within the
// last reconnect allowance: the senders still coming back dial at least
// once per allowance, and a storm of them is admitted at the aggregator's
// pace, not theirs), but never later than DisruptionMaxHold after the
// grace. t.mu must be held.
func (t *Tracker) unknownDownAt() int64 {
	d := t.graceNs
	if t.readmitted != math.MinInt64 {
		d = max(d, min(t.readmitted+t.allowNs, t.graceNs+int64(t.cfg.DisruptionMaxHold)))
	}
	return d
}

// suspectAt is the instant after which a silent n turns Suspect: its own
// threshold after its last beat, or later while a reconnect allowance runs.
// m is the local-health multiplier (SetHealth), which scales the threshold.
func (n *node) suspectAt(m float64) int64 {
	return max(n.lastSeen+scaleNs(n.suspectNs, m), n.allowUntil)
}

// downAt is the instant after which a silent n turns Down: the allowance
// shifts it as much as it shifts suspectAt.
func (n *node) downAt(m float64) int64 {
	return max(n.lastSeen+scaleNs(n.downNs, m), n.allowUntil+scaleNs(n.downNs-n.suspectNs, m))
}

// scaleNs scales a threshold by the local-health multiplier m (>= 1).
func scaleNs(d int64, m float64) int64 {
	if m <= 1 {
		return d
	}
	return int64(float64(d) * m)
}

// minPeriodSamples is the number of intervals a node's period is first
// learned from. One is not enough: the first beat of a stream is read
// after the connection's setup, which a reconnect storm delays by seconds,
// so the interval from it to the next is short whenever that first read
// was late (measured: a sender beating every 3 s, read 2.3 s late and then
// on time, learned 1 s and was Suspect 3.2 s later). With two, the upper
// median is the larger one.
const minPeriodSamples = 2

// learnLocked adds the interval ending at at to n's samples when it is one
// (the previous beat was on the same stream, and earlier) and updates the
// period and thresholds. It reports whether they changed.
func (t *Tracker) learnLocked(n *node, at int64) bool {
	if n.declared {
		n.beatStreams = n.streams
		return false
	}
	if n.beats == 0 || n.beatStreams != n.streams || at <= n.lastSeen {
		n.beatStreams = n.streams
		return false
	}
	iv := min(max(at-n.lastSeen, t.minNs), t.maxNs)
	n.samples[n.iSample] = uint32(iv / int64(time.Millisecond))
	n.iSample = (n.iSample + 1) % periodSamples
	if n.nSamples < periodSamples {
		n.nSamples++
	}
	if n.nSamples < minPeriodSamples {
		return false // judged with MaxPeriod until then
	}
	// The upper median: one late beat among several does not move it,
	// and with two samples the larger one wins (the safe side).
	var buf [periodSamples]uint32
	xs := buf[:n.nSamples]
	copy(xs, n.samples[:n.nSamples])
	slices.Sort(xs)
	p := min(max(int64(xs[len(xs)/2])*int64(time.Millisecond), t.minNs), t.maxNs)
	if p == n.period {
		return false
	}
	n.period = p
	n.suspectNs, n.downNs = t.thresholds(p)
	return true
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
	return t.beat(id, hb, nil, now)
}

// BeatInfo is what a protocol v2 Beat adds to a heartbeat.
type BeatInfo struct {
	// Seq is the Beat's sequence number within the node's boot: a gap
	// after the previous one counts as lost beats.
	Seq uint64
	// RTT is the round trip the sender measured last (0: none yet).
	RTT time.Duration
	// Skew is the sender's clock minus the aggregator's: sender time +
	// RTT/2 − receive time.
	Skew time.Duration
}

// BeatV2 is Beat for a protocol v2 Beat: it also records seq (counting the
// beats missing since the previous seq of the same boot as lost), RTT and
// skew. The caller checks that seq grows on a stream; a seq at or below
// the node's last one (from an older stream of the same boot) counts
// nothing. Call Hello first on each stream.
func (t *Tracker) BeatV2(id peer.ID, hb *wire.Heartbeat, info BeatInfo, now time.Time) (Change, bool, error) {
	return t.beat(id, hb, &info, now)
}

// HelloInfo is what a protocol v2 Hello tells the tracker.
type HelloInfo struct {
	// BootID identifies the sender's run; a new one is a restart.
	BootID [16]byte
	// Period is the declared beat period: the detector uses it as the
	// node's period instead of learning one (clamped to [1 ms, 24 h]).
	Period time.Duration
}

// Hello records a v2 Hello from id, which must have an open stream
// (StreamOpened). It reports whether the boot id differs from the node's
// previous one (a restart: counted, and BootTime restarts). The declared
// period replaces the learned one until the node beats on v1 again.
func (t *Tracker) Hello(id peer.ID, h HelloInfo, now time.Time) (restart bool, err error) {
	if id == "" {
		return false, errNoPeer
	}
	at := t.rel(now)
	t.mu.Lock()
	defer t.mu.Unlock()
	n, err := t.acquireLocked(id, at)
	if err != nil {
		return false, err
	}
	if n.boot != h.BootID {
		restart = n.boot != [16]byte{}
		if restart {
			n.restarts++
		}
		n.boot, n.bootAt, n.lastSeq = h.BootID, at, 0
	}
	n.protocol = 2
	n.declared = true
	p := min(max(int64(h.Period), int64(time.Millisecond)), int64(maxPeriodLimit))
	if p != n.period {
		n.period = p
		n.suspectNs, n.downNs = t.thresholds(p)
		t.next = min(t.next, n.suspectAt(t.multiplier()))
	}
	return restart, nil
}

func (t *Tracker) beat(id peer.ID, hb *wire.Heartbeat, info *BeatInfo, now time.Time) (Change, bool, error) {
	if id == "" {
		return Change{}, false, errNoPeer
	}
	if hb == nil {
		return Change{}, false, errNoHeartbeat
	}
	at := t.rel(now)
	t.mu.Lock()
	n, err := t.acquireLocked(id, at)
	if err != nil {
		t.mu.Unlock()
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
	if info != nil {
		n.protocol = 2
		if info.Seq > n.lastSeq {
			if n.lastSeq != 0 {
				n.lost += info.Seq - n.lastSeq - 1
			}
			n.lastSeq = info.Seq
		}
		n.rtt, n.skew = int64(info.RTT), int64(info.Skew)
	} else {
		n.protocol = 1
		n.declared = false // back to learning: v1 declares nothing
	}
	t.learnLocked(n, at)
	// Concurrent streams may present their nows out of order: last seen
	// never moves back.
	n.lastSeen = max(n.lastSeen, at)
	n.beats++
	t.beats++
	n.allowUntil = math.MinInt64 // it is back: the allowance is spent
	wasUnknown := n.state == Unknown
	ch, changed := t.transitionLocked(n, Heartbeat, at)
	if wasUnknown && changed {
		t.readmitted = max(t.readmitted, at)
	}
	// A node that comes Up, whose period shrank or whose allowance ended
	// may have an earlier deadline: keep t.next a lower bound.
	t.next = min(t.next, n.suspectAt(t.multiplier()))
	t.mu.Unlock()
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
	t.mu.Lock()
	defer t.mu.Unlock()
	n, err := t.acquireLocked(id, t.rel(now))
	if err != nil {
		return err
	}
	n.streams++
	n.open++
	n.stream = StreamOpen
	return nil
}

// StreamEnded records the end of one of id's streams; graceful means a
// clean EOF. Streams are counted, so the end of a superseded stream while a
// newer one is open changes nothing. When the last open stream ends:
//   - a node that never sent a heartbeat is forgotten (it never was one);
//   - on a graceful EOF the node turns Left (a Change, but not an alert);
//   - otherwise its state is left to silence detection (Sweep): a reset is
//     not proof of death, the sender reconnects; it gets the reconnect
//     allowance (Config.ReconnectAllowance plus its period) before Suspect.
//
// An unknown id (e.g. one refused with ErrFull) is ignored.
func (t *Tracker) StreamEnded(id peer.ID, graceful bool, now time.Time) (Change, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[id]
	if n == nil {
		return Change{}, false
	}
	if n.open > 0 {
		n.open--
	}
	if n.open > 0 {
		return Change{}, false
	}
	on := StreamEOF
	if !graceful {
		on = StreamLost
	}
	if to, ok := step(n.state, on); ok && to == Gone { // never beat: never a node
		t.removeLocked(n)
		return Change{}, false
	}
	at := t.rel(now)
	if !graceful {
		n.stream = StreamReset
		// The sender is expected back within its reconnect delay: no
		// Suspect before that, then silence detection as usual. Deadlines
		// only move later, so t.next stays a lower bound.
		n.allowUntil = max(n.allowUntil, at+t.allowNs+n.period)
	} else {
		n.stream = StreamClosed
	}
	return t.transitionLocked(n, on, at)
}

// Restored is a node known before the aggregator restarted, as the store
// kept it: Restore's argument.
type Restored struct {
	Peer                         peer.ID
	Nickname, Head, MinerAddress string
	Genesis                      string
	Height                       uint64
	FirstSeen, LastSeen          time.Time // zero: unknown (FirstSeen then is now)
	// WasDown: the node was not Up (Suspect or Down) when the aggregator
	// stopped. It stays Unknown all the same; AppendStates reports it, so
	// that heartbeat_node_up keeps its 0 (and its alert) across the
	// restart instead of resolving and paging again.
	WasDown bool
}

// Restore adds r as an Unknown node at now: known before a restart, not
// seen since. It turns Up on its first heartbeat, and Down in the first
// Sweep after start+StartupGrace if it has not beaten by then (see the
// Unknown rows of Table). A peer the tracker already has is left as it is
// (it beat first) and Restore returns false; past MaxNodes it returns
// ErrFull (a restored node evicts no one).
func (t *Tracker) Restore(r Restored, now time.Time) (bool, error) {
	if r.Peer == "" {
		return false, errNoPeer
	}
	at := t.rel(now)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nodes[r.Peer] != nil {
		return false, nil
	}
	if len(t.nodes) >= t.cfg.MaxNodes {
		return false, ErrFull
	}
	n := t.newNode(r.Peer, at)
	n.nickname, n.miner = r.Nickname, r.MinerAddress
	n.head, n.genesis = unique.Make(r.Head), unique.Make(r.Genesis)
	n.height, n.state, n.wasDown = r.Height, Unknown, r.WasDown
	if !r.FirstSeen.IsZero() {
		n.firstSeen = t.rel(r.FirstSeen)
	}
	if !r.LastSeen.IsZero() {
		n.lastSeen, n.restored = t.rel(r.LastSeen), true
	}
	t.nodes[r.Peer] = n
	t.inState[Unknown]++
	t.next = min(t.next, t.graceNs)
	return true, nil
}

// Forget drops id's record and frees its slot, whatever its state. It
// reports whether id was known. Nodes that are Down stay until forgotten
// (they are what alerts watch), so an operator who retires a node calls
// Forget. A later heartbeat or stream from id starts a new record.
func (t *Tracker) Forget(id peer.ID) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[id]
	if n == nil {
		return false
	}
	if to, ok := step(n.state, Forgotten); !ok || to != Gone {
		return false // every state has a Forget row: cannot happen
	}
	t.removeLocked(n)
	return true
}

// Sweep applies silence detection at now. Each node is judged by its own
// thresholds (SuspectAfter and DownAfter scaled to its learned period, and
// its reconnect allowance): an Up node silent strictly longer than its
// Suspect threshold turns Suspect, and an Up or Suspect node silent
// strictly longer than its Down threshold turns Down (one Change, Up ->
// Down, when a single sweep sees both thresholds crossed) unless the
// tracker is disrupted. Before start+StartupGrace it changes nothing. It
// appends the changes to dst sorted by peer id and returns the extended
// slice. The caller sweeps periodically (e.g. every second); the precision
// of the transitions is the sweep period.
//
// Sweep also decides the disrupted mode (see the package documentation);
// Disrupted reports it. Sweep skips the scan while no deadline has
// passed, so sweeping often is cheap.
func (t *Tracker) Sweep(now time.Time, dst []Change) []Change {
	at := t.rel(now)
	if at < t.graceNs {
		return dst
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweepM = t.multiplier() // one multiplier for the whole sweep
	// One pass over the nodes applies Suspect and collects the nodes past
	// their Down threshold; whether they go Down depends on the disruption
	// guard, which needs the count of all of them first.
	first := len(dst)
	t.cands = t.cands[:0]
	if at > t.next {
		dst = t.sweepLocked(at, dst)
	}
	var upPastDown int64
	for _, c := range t.cands {
		if c.up {
			upPastDown++
		}
	}
	noDown, recovered := t.decideDisruption(at, upPastDown)
	if recovered {
		t.allowRecoveryLocked(at)
	}
	for _, c := range t.cands {
		dst = t.downLocked(c, at, noDown, dst)
	}
	changes := dst[first:]
	slices.SortFunc(changes, func(a, b Change) int { return cmp.Compare(a.Peer, b.Peer) })
	return dst
}

// decideDisruption enters or leaves disrupted mode at time at, given the
// Up nodes found past their Down threshold in this sweep (still Up, the
// others have turned Suspect), and reports whether Down is held. Silent
// nodes are the Suspect ones, those, and those that went Down less than
// their own Down threshold ago (a fleet cut off over tens of seconds is
// one event); live ones are those plus the Up ones. Entry needs strictly more than the fraction silent (and at
// least DisruptionMinNodes live); exit needs strictly more than the
// fraction beating, or DisruptionMaxHold elapsed. After an exit by
// MaxHold, no new episode starts until the silent share has dropped to the
// fraction or below: the nodes still silent go Down instead.
//
// recovered reports an exit because most nodes beat again: the nodes still
// silent then get the reconnect allowance from now (allowRecoveryLocked).
func (t *Tracker) decideDisruption(at, upPastDown int64) (noDown, recovered bool) {
	recent := t.recent
	live := t.inState[Up] + t.inState[Suspect] + recent
	silent := min(t.inState[Suspect]+upPastDown+recent, live)
	f := t.cfg.DisruptionFraction
	tooMany := live >= int64(t.cfg.DisruptionMinNodes) && float64(silent) > f*float64(live)
	if !tooMany {
		t.holdExpired = false
	}
	since := t.disruptedAt.Load()
	if since == notDisrupted {
		if tooMany && !t.holdExpired {
			t.disruptedAt.Store(at)
			return true, false
		}
		return false, false
	}
	if float64(live-silent) > f*float64(live) {
		t.disruptedAt.Store(notDisrupted)
		return false, true
	}
	if at-since > int64(t.cfg.DisruptionMaxHold) {
		t.disruptedAt.Store(notDisrupted)
		t.holdExpired = true
		return false, false
	}
	return true, false
}

// allowRecoveryLocked gives every Up or Suspect node still silent at the
// end of a disruption the reconnect allowance from at: its sender lost its
// connection in the disruption and comes back after a ReconnectPeriod, as
// after a reset. Deadlines only move later: t.next stays a lower bound.
// It visits every node, once per disruption. t.mu must be held.
func (t *Tracker) allowRecoveryLocked(at int64) {
	for _, n := range t.nodes {
		if (n.state == Up || n.state == Suspect) && at > n.suspectAt(t.sweepM) {
			n.allowUntil = max(n.allowUntil, at+t.allowNs+n.period)
		}
	}
}

// Health is the aggregator's local health, measured by the aggregator and
// handed to the tracker with SetHealth (Lifeguard's "local health
// awareness": Dadgar et al., 2017; hashicorp/memberlist awareness.go).
type Health struct {
	// Multiplier scales every node's Suspect and Down thresholds (its own,
	// from its period, and the gap from a reconnect allowance to Down): 1
	// when the aggregator is healthy, more when its own host made beats
	// look late. Values below 1 (or NaN) are taken as 1.
	Multiplier float64
	// Lag is the lag the multiplier was derived from, for reporting only.
	Lag time.Duration
}

// SetHealth sets the local-health multiplier the next Sweep (and Beat's
// deadline bookkeeping) uses, and the lag to report. Lowering it makes the
// next Sweep scan every node, since deadlines may have moved earlier.
// Safe for concurrent use.
func (t *Tracker) SetHealth(h Health) {
	m := h.Multiplier
	if !(m >= 1) { // NaN too
		m = 1
	}
	old := math.Float64frombits(t.healthM.Load())
	t.healthM.Store(math.Float64bits(m))
	t.healthLag.Store(int64(h.Lag))
	if m < old {
		t.mu.Lock()
		t.next = math.MinInt64
		t.mu.Unlock()
	}
}

// Health returns what SetHealth last set (Multiplier 1 before any call).
func (t *Tracker) Health() Health {
	return Health{Multiplier: t.multiplier(), Lag: time.Duration(t.healthLag.Load())}
}

// multiplier is the health multiplier, 1 before any SetHealth.
func (t *Tracker) multiplier() float64 {
	if m := math.Float64frombits(t.healthM.Load()); m >= 1 {
		return m
	}
	return 1
}

// Disrupted reports whether the tracker is in disrupted mode, as decided by
// the last Sweep, and since when. The caller compares it before and after
// a Sweep to log the mode's start and end once each.
func (t *Tracker) Disrupted() (bool, time.Time) {
	since := t.disruptedAt.Load()
	if since == notDisrupted {
		return false, time.Time{}
	}
	return true, t.abs(since)
}

func (t *Tracker) sweepLocked(at int64, dst []Change) []Change {
	next := int64(math.MaxInt64)
	for _, n := range t.nodes {
		if n.dup {
			if at > n.dupUntil {
				n.dup = false
			} else {
				next = min(next, n.dupUntil)
			}
		}
		var deadline int64
		switch n.state {
		case Up, Suspect:
			sus, down := n.suspectAt(t.sweepM), n.downAt(t.sweepM)
			switch {
			case at > down: // decided after the pass: see downLocked
				t.cands = append(t.cands, downCand{n: n, up: n.state == Up})
				deadline = at
			case at > sus:
				if ch, ok := t.transitionLocked(n, Silence, at); ok {
					dst = append(dst, ch)
				}
				deadline = down
			default:
				deadline = sus
			}
		case Unknown:
			down := t.unknownDownAt()
			if at > down {
				if ch, ok := t.transitionLocked(n, LongSilence, at); ok {
					dst = append(dst, ch)
				}
				continue
			}
			deadline = down
		case Down:
			if n.recent {
				if at > n.recentUntil {
					t.clearRecentLocked(n)
				} else {
					next = min(next, n.recentUntil)
				}
			}
			continue
		default:
			continue // Joining and Left do not change by silence
		}
		next = min(next, deadline)
	}
	t.next = next
	return dst
}

// downCand is a node the sweep found past its Down threshold.
type downCand struct {
	n  *node
	up bool // it was Up (not yet Suspect) when found
}

// downLocked applies the Down threshold to c once the disruption guard has
// decided: Down (one Up -> Down change for a node that was Up), or, while
// Down is held, Suspect and another look at the next sweep. The node may
// have got an allowance at a recovery since the pass: it is judged again.
// t.mu must be held.
func (t *Tracker) downLocked(c downCand, at int64, noDown bool, dst []Change) []Change {
	n := c.n
	switch {
	case at > n.downAt(t.sweepM) && !noDown:
		if ch, ok := t.transitionLocked(n, LongSilence, at); ok {
			dst = append(dst, ch)
			t.next = min(t.next, n.recentUntil)
		}
	case at > n.suspectAt(t.sweepM):
		if ch, ok := t.transitionLocked(n, Silence, at); ok {
			dst = append(dst, ch)
		}
		t.next = min(t.next, max(n.downAt(t.sweepM), at)) // held: look again next sweep
	default:
		t.next = min(t.next, n.suspectAt(t.sweepM))
	}
	return dst
}

// Superseded records that a newer stream of id replaced an open one at
// now. More than Config.DuplicateThreshold supersedes within one
// Config.DuplicateWindow (counted in fixed windows from the first) flag the
// node DuplicateIdentity until a whole window passes without one. It
// returns true once per window, on the supersede that crosses the
// threshold, for the caller to count and log; an unknown id is ignored.
func (t *Tracker) Superseded(id peer.ID, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[id]
	if n == nil {
		return false
	}
	at := t.rel(now)
	if n.dupCount == 0 || at-n.dupWinStart > t.dupWindowNs {
		n.dupWinStart, n.dupCount = at, 0
	}
	if n.dupCount < math.MaxUint16 {
		n.dupCount++
	}
	if n.dup {
		n.dupUntil = max(n.dupUntil, at+t.dupWindowNs)
	}
	if int(n.dupCount) != t.cfg.DuplicateThreshold+1 {
		return false
	}
	n.dup = true
	n.dupUntil = at + t.dupWindowNs
	t.next = min(t.next, n.dupUntil)
	return true
}

// State returns id's state, without the cost of a snapshot (Node); false
// if the tracker holds no record of id.
func (t *Tracker) State(id peer.ID) (State, bool) {
	t.mu.Lock()
	n := t.nodes[id]
	var st State
	if n != nil {
		st = n.state
	}
	t.mu.Unlock()
	return st, n != nil
}

// Node returns a snapshot of id's record.
func (t *Tracker) Node(id peer.ID) (Node, bool) {
	t.mu.Lock()
	n := t.nodes[id]
	var out Node
	if n != nil {
		out = t.snapshot(n)
	}
	t.mu.Unlock()
	return out, n != nil
}

// Nodes appends a snapshot of every node to dst, sorted by peer id, and
// returns the extended slice: one consistent view of every node.
func (t *Tracker) Nodes(dst []Node) []Node {
	first := len(dst)
	t.mu.Lock()
	dst = slices.Grow(dst, len(t.nodes))
	for _, n := range t.nodes {
		dst = append(dst, t.snapshot(n))
	}
	t.mu.Unlock()
	slices.SortFunc(dst[first:], func(a, b Node) int { return cmp.Compare(a.Peer, b.Peer) })
	return dst
}

// PeerState is one node's peer id and state, as AppendStates lists them.
type PeerState struct {
	Peer  peer.ID
	State State
	// WasDown: State is Unknown and the node was restored not Up
	// (Restored.WasDown): it has not been judged since the restart, and
	// was Suspect or Down before it.
	WasDown bool
}

// AppendStates appends every node's peer id and state to dst, in no
// particular order, and returns the extended slice: the per-node series of
// a metrics collector without the cost of a full snapshot (Nodes). It
// appends at most Config.MaxNodes entries.
func (t *Tracker) AppendStates(dst []PeerState) []PeerState {
	t.mu.Lock()
	defer t.mu.Unlock()
	dst = slices.Grow(dst, len(t.nodes))
	for id, n := range t.nodes {
		dst = append(dst, PeerState{Peer: id, State: n.state, WasDown: n.state == Unknown && n.wasDown})
	}
	return dst
}

func (t *Tracker) snapshot(n *node) Node {
	out := Node{
		Peer:              n.peer,
		Nickname:          n.nickname,
		Head:              n.head.Value(),
		Height:            n.height,
		MinerAddress:      n.miner,
		FirstSeen:         t.abs(n.firstSeen),
		Since:             t.abs(n.since),
		Beats:             n.beats,
		Streams:           uint64(n.streams),
		State:             n.state,
		Stream:            n.stream,
		Period:            time.Duration(n.period),
		DuplicateIdentity: n.dup,
		Protocol:          n.protocol,
		DeclaredPeriod:    n.declared,
		BootID:            n.boot,
		Restarts:          uint64(n.restarts),
		LostBeats:         n.lost,
		RTT:               time.Duration(n.rtt),
		Skew:              time.Duration(n.skew),
	}
	if n.boot != [16]byte{} {
		out.BootTime = t.abs(n.bootAt)
	}
	if n.beats > 0 || n.restored {
		out.LastSeen = t.abs(n.lastSeen)
	}
	out.Genesis = n.genesis.Value()
	return out
}

// Summary counts the nodes by state and computes consensus in one O(n) pass
// (one map increment per Up node, no allocation once the group map has
// grown), so a Prometheus collector can call it on every scrape. Consensus
// rules: see the package documentation.
func (t *Tracker) Summary() Summary {
	t.mu.Lock()
	defer t.mu.Unlock()
	groups := t.groups
	clear(groups)
	var sum Summary
	sum.Beats = t.beats
	for _, n := range t.nodes {
		sum.ByState[n.state]++
		if n.open > 0 {
			sum.Connected++
		}
		if n.dup {
			sum.DuplicateIdentity++
		}
		if n.state == Up {
			groups[group{n.head, n.height}]++
		}
	}
	for _, c := range sum.ByState {
		sum.Nodes += c
	}
	sum.Disrupted, sum.DisruptedSince = t.Disrupted()
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
