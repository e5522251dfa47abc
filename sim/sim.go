package sim

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
	"unsafe"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/wire"
)

// evKind says what a scheduled event is.
type evKind uint8

const (
	evEnd       evKind = iota
	evStart            // a node's process starts
	evTimer            // a node's earliest machine deadline (see node.wake)
	evDialDone         // a dial's outcome reaches the node (sub: dialRefused...)
	evDown             // a message from the aggregator reaches a node (sub: msg...)
	evStale            // a late result for the node's machine (sub: the fsm.EventKind)
	evUp               // a message from a node reaches the aggregator (sub: msg...)
	evKeepalive        // a keepalive verdict on a node's connection
	evIdle             // the aggregator's read deadline on a stream
	evFault            // a scripted fault begins (sub 0) or heals (sub 1); arg: action index
	evSweep            // the aggregator's silence detection
	evSample           // record the counts over time
	evLiveness         // the liveness check after the last fault healed
)

// Messages on a connection (event.sub of evUp and evDown).
const (
	msgData     uint8 = iota // up: arg lines of heartbeats on stream gen
	msgReset                 // a stream reset (gen: the stream)
	msgClose                 // an orderly end of a stream (gen: the stream)
	msgConnDead              // a connection reset; down: gen is the connection, up: arg is the last stream on it
	msgCredit                // down: a window update of arg bytes on stream gen
)

// How a dial ends (event.sub of evDialDone).
const (
	dialRefused   uint8 = iota // nobody listens: refused after a round trip
	dialHandshake              // a new connection: two round trips
	dialStream                 // a stream on the existing connection: at once
)

// event is one entry of the virtual clock (queue): 16 bytes, no pointers,
// so the queue holds nothing for the garbage collector to scan. gen
// identifies what the event is about (a timer arming, a dial, a stream, a
// connection); a gen that no longer matches makes the event stale.
type event struct {
	node int32
	kind evKind
	sub  uint8
	_    [2]byte
	gen  uint32
	arg  uint32
}

// sstream is the sender's side of a stream.
type sstream struct {
	attempt  uint32 // the machine's attempt (a run never makes 2^32 of them)
	sgen     uint32 // unique per node, across restarts
	conn     uint32 // the connection it runs on
	inflight int32  // bytes written and not yet acknowledged by a window update
	open     bool
	blocked  bool // a write waits for room in the send window
}

// dialState is a node's dial in flight.
type dialState struct {
	attempt uint64
	doneAt  int64
	gen     uint32
	aggInc  uint32 // the aggregator incarnation it talks to
	pending bool
	hung    bool // its packets are dropped: it ends only when cancelled
}

type held struct {
	ev event
	up bool
}

// node is one simulated sender. Its hot part, what every beat touches, is
// exactly two cache lines: at 10,000 nodes the run is bound by memory
// latency, so a beat must not drag in the rest. The cold part (dials,
// connections, faults, the invariant checker's view) sits behind a pointer.
type node struct {
	// Line 1: the timer path.
	tgen uint32 // generation of the heap entry that stands at wake
	idx  int32
	m    *fsm.Machine // nil while the process is crashed
	*nodeCold
	// wake is the time of the one heap entry (generation tgen) that stands
	// for the earliest of dl, which mirrors the machine's armed deadlines
	// (Unix ns, 0 = disarmed) from its ArmTimer/CancelTimer effects.
	wake int64
	dl   [fsm.NumTimers]int64

	// Line 2: the write path.
	st sstream // the live stream; a stale one the machine resets goes in st2
	// pendingWrite is the attempt of a write that completed at once and
	// whose WriteSucceeded is stepped after the current Step's effects.
	pendingWrite uint32
	partitioned  uint16
	paused       bool
	_            byte
	upLast       int64 // keeps the path to the aggregator in order
	lat          int64 // base one-way latency plus this node's latency spikes
	_            [16]byte
}

// nodeCold is the rest of a node.
type nodeCold struct {
	id  peer.ID
	inc uint32 // process incarnation: restarts after a crash

	dial    dialState
	dialGen uint32
	conn    struct {
		alive bool
		gen   uint32
	}
	connGen uint32
	sgen    uint32
	st2     sstream // room for a second stream: a stale one, reset at once

	downLast    int64 // keeps the path from the aggregator in order
	blackholed  uint16
	crashed     uint16
	pauseDepth  uint16
	pausedUntil int64
	held        []held

	// The invariant checker's view (per incarnation).
	inOutage        bool   // a failure or a lost stream since the last connect
	outFailures     uint64 // connect failures in the current outage
	loudAt          int64  // last WARN/ERROR connect-failure line
	lastError       int64
	connFailures    uint64 // consecutive connect failures (the backoff's n)
	failAt          int64  // when the machine last entered Backoff
	failN           uint64 // the backoff's n for that failure
	pausedSinceFail bool
	beatingSince    int64
	active          uint16 // faults on this node's path right now
	quiet           int64  // when the last one's effects ended

	logs [4]uint64 // lines per fsm.Level-1
}

// astream is the aggregator's side of a node's stream (one per node: a
// newer stream supersedes the older one).
type astream struct {
	id       peer.ID // the node's, here so that reading a line touches one line
	sgen     uint32  // the newest stream seen
	dead     uint32  // streams up to this one died with their connection
	idleSeq  uint32
	unread   uint32 // lines arrived, not read (while stalled)
	consumed uint32 // bytes read since the last window update
	open     bool
	closing  bool // an orderly end arrived while stalled
	lastRead int64
	_        [16]byte // 64 bytes: one cache line per node
}

type aggregator struct {
	up      bool
	down    int // crash/shutdown faults in force
	stall   int // stall faults in force
	inc     uint32
	tr      *tracker.Tracker
	started int64
	st      []astream
}

// sim is one run.
type sim struct {
	c        *config
	q        *queue
	loc      *time.Location
	rng      *rand.Rand // the network's draws
	start    int64
	end      int64
	now      int64
	nowT     time.Time
	nodes    []node
	colds    []nodeCold
	hb       wire.Heartbeat // what every node reports; see aggRead
	epochEnd int64          // when hb's height changes next
	agg      aggregator
	script   []Action
	healed   int64

	// Faults in force on every path, and when the last one's effects ended.
	extraLat     int64
	globalActive int
	globalQuiet  int64

	tr      tracer
	changes []tracker.Change
	heads   []string
	err     *InvariantError
	stats
}

var (
	errRefused    = errors.New("connection refused")
	errConnReset  = errors.New("connection reset by peer")
	errStreamRst  = errors.New("stream reset")
	errCanceled   = errors.New("dial canceled")
	errWriteAbort = errors.New("write aborted: stream reset")
)

// heightBase makes the simulated chain look a few years old; heights
// advance every epoch.
const (
	heightBase = 4_000_000
	epoch      = 30 * time.Second
)

func newSim(c *config) (*sim, error) {
	s := &sim{
		c:     c,
		start: c.start.UnixNano(),
		end:   c.start.Add(c.Duration).UnixNano(),
		nowT:  c.start,
		rng:   rand.New(rand.NewPCG(mix(c.Seed), mix(c.Seed^0x6e6574))), // "net"
		nodes: make([]node, c.Nodes),
		colds: make([]nodeCold, c.Nodes),
	}
	s.now = s.start
	// Each node queues about 2.5 events per beat period (a beat timer, its
	// line's arrival, a share of read deadlines), so a bucket of ~1ms holds
	// about 2.5*Nodes*1ms/BeatPeriod of them (9 at 10,000 nodes): carve
	// room for twice that, from a thousand nodes up.
	perBucket := 0
	if c.Nodes >= 1000 {
		perBucket = min(32, 2*int(2.5*float64(c.Nodes)*float64(1<<wheelShift)/float64(c.sender.BeatPeriod))+1)
	}
	s.q = newQueue(s.start, perBucket)
	s.loc = c.start.Location()
	s.tr.init(c.Trace, s.start)
	s.stats.init(c)

	script, healed, err := buildScript(c, rand.New(rand.NewPCG(mix(c.Seed^0x7363656e), mix(c.Seed)))) // "scen"
	if err != nil {
		return nil, err
	}
	s.script = script
	healed = max(healed, c.StartWithin)
	s.healed = s.start + int64(healed)

	width := max(5, len(fmt.Sprint(c.Nodes-1)))
	minL, spanL := int64(c.net.MinLatency), int64(c.net.MaxLatency-c.net.MinLatency)
	for i := range s.nodes {
		n := &s.nodes[i]
		n.idx = int32(i)
		n.nodeCold = &s.colds[i]
		n.id = peer.ID(fmt.Sprintf("n%0*d", width, i))
		n.lat = minL
		if spanL > 0 {
			n.lat += s.rng.Int64N(spanL)
		}
		var at time.Duration
		if c.StartWithin > 0 {
			at = time.Duration(s.rng.Int64N(int64(c.StartWithin)))
		}
		s.q.push(int64(at), event{node: n.idx, kind: evStart})
	}
	s.agg.st = make([]astream, c.Nodes)
	for i := range s.agg.st {
		s.agg.st[i].id = s.nodes[i].id
	}
	s.aggStart()

	s.tr.begin(s.start, "sim")
	s.tr.str(" start scenario=").str(scenarioName(c.Scenario)).str(" nodes=").int(int64(c.Nodes)).
		str(" duration=").str(c.Duration.String()).str(" seed=").uint(c.Seed).str(" liveness-bound=").str(c.liveness.String())
	s.tr.end()
	for i, a := range script {
		s.q.push(int64(a.At), event{kind: evFault, arg: uint32(i)})
		s.tr.begin(s.start, "sim").str(" script ").str(a.String()).end()
	}
	s.q.push(int64(c.net.SweepEvery), event{kind: evSweep})
	s.q.push(0, event{kind: evSample})
	s.q.push(s.healed-s.start+int64(c.liveness), event{kind: evLiveness})
	s.q.push(int64(c.Duration), event{kind: evEnd})
	return s, nil
}

func scenarioName(n string) string {
	if n == "" {
		return "steady"
	}
	return n
}

// mix is SplitMix64's finaliser: it turns related seeds into unrelated ones.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// nodeSeed derives a node's machine seed from the master seed, its index
// and its incarnation, so that a restarted process draws fresh jitter.
func nodeSeed(seed uint64, idx int32, inc uint32) uint64 {
	return mix(mix(seed) ^ mix(uint64(idx)<<32|uint64(inc)))
}

// loop runs the events in time order until the end or the first violation.
func (s *sim) loop() {
	for s.err == nil {
		at, ev, ok := s.q.pop()
		if !ok {
			return
		}
		if at != s.now {
			s.nowT = time.Unix(0, at).In(s.loc)
		}
		s.now = at
		s.pops++
		if nx, ok := s.q.peek(0); ok {
			s.touch(nx)
			if nx2, ok := s.q.peek(1); ok {
				s.touchNode(nx2)
			}
		}
		switch ev.kind {
		case evTimer:
			s.onTimer(&s.nodes[ev.node], ev)
		case evUp:
			s.events++
			s.onUp(ev)
		case evDown, evDialDone, evStale, evStart:
			s.onNode(&s.nodes[ev.node], ev)
		case evIdle:
			s.events++
			s.onIdle(ev)
		case evKeepalive:
			s.events++
			s.onKeepalive(&s.nodes[ev.node], ev)
		case evSweep:
			s.events++
			s.onSweep()
		case evSample:
			s.events++
			s.sample()
			if next := s.now + int64(s.c.sample); next < s.end {
				s.q.push(int64(s.c.sample), ev)
			}
		case evFault:
			s.events++
			s.onFault(ev)
		case evLiveness:
			s.events++
			s.checkLiveness("after the last fault healed")
		case evEnd:
			s.sample()
			s.checkLiveness("at the end of the run")
			return
		}
	}
}

// touch prefetches the memory the next event will need, so that its cache
// misses overlap with the work on this event instead of stalling the next
// one: at 10,000 nodes the run is bound by memory latency (each beat
// touches a node, its machine and its tracker record, spread over tens of
// megabytes). The node's own line was prefetched one event earlier
// (touchNode), so reading the pointers in it here seldom waits.
func (s *sim) touch(ev event) {
	switch ev.kind {
	case evTimer:
		n := &s.nodes[ev.node]
		if m := n.m; m != nil {
			// A beat's Step reads and writes the machine's first 768 bytes
			// (its state, timers, counters and the head of its effect
			// buffer) and its last line (the slice it returns): the layout
			// of fsm.Machine today. A stale guess costs speed, never
			// correctness: a prefetch is only a hint.
			p := unsafe.Pointer(m)
			prefetch(p, 12)
			prefetch(unsafe.Add(p, unsafe.Sizeof(*m)-1), 1)
		}
	case evUp:
		prefetch(unsafe.Pointer(&s.agg.st[ev.node]), 1)
	}
}

// touchNode prefetches the hot lines of the node an event two places ahead
// is for, so that touch finds the pointers it follows in cache.
func (s *sim) touchNode(ev event) {
	if ev.kind == evTimer {
		prefetch(unsafe.Pointer(&s.nodes[ev.node]), 2)
	}
}

// paused reports whether n's process is frozen now; if so, it moves ev to
// the moment the process resumes, in the order the events arrived.
func (s *sim) paused(n *node, ev event) bool {
	if !n.paused {
		return false
	}
	s.q.push(n.pausedUntil-s.now, ev)
	return true
}

// onNode handles an event addressed to a node's process.
func (s *sim) onNode(n *node, ev event) {
	if n.crashed > 0 || s.paused(n, ev) {
		return
	}
	switch ev.kind {
	case evStart:
		if ev.gen != n.inc || n.m != nil {
			return // superseded by a restart
		}
		s.startNode(n)
	case evDialDone:
		s.onDialDone(n, ev)
	case evDown:
		s.onDown(n, ev)
	case evStale:
		if ev.gen != n.inc || n.m == nil {
			return
		}
		k := fsm.EventKind(ev.sub)
		err := errWriteAbort
		if k == fsm.DialFailed {
			err = errCanceled
		}
		s.step(n, fsm.Event{Kind: k, Attempt: uint64(ev.arg), Err: err})
	}
	s.rewake(n)
}

func (s *sim) startNode(n *node) {
	cfg := s.c.sender
	cfg.Seed = nodeSeed(s.c.Seed, n.idx, n.inc)
	m, err := fsm.New(cfg)
	if err != nil { // validated in resolve: cannot happen
		s.violate(n, RuleRejected, "fsm.New: %v", err)
		return
	}
	n.m = m
	s.states[fsm.Disconnected]++
	s.step(n, fsm.Event{Kind: fsm.Start})
}

// onTimer fires every machine timer of n that is due, earliest first.
func (s *sim) onTimer(n *node, ev event) {
	if ev.gen != n.tgen || n.m == nil {
		return // superseded by an earlier deadline, or the process died
	}
	if s.paused(n, ev) {
		n.wake = n.pausedUntil
		return
	}
	n.wake = 0
	for s.err == nil && n.m != nil {
		t, ok := n.due(s.now)
		if !ok {
			break
		}
		n.dl[t] = 0 // the machine clears a fired timer itself, without an effect
		s.step(n, fsm.Event{Kind: t.Event()})
	}
	s.rewake(n)
}

// due returns n's earliest deadline that has come, if any.
func (n *node) due(now int64) (fsm.Timer, bool) {
	best, at := -1, int64(0)
	for t, d := range n.dl {
		if d != 0 && d <= now && (best < 0 || d < at) {
			best, at = t, d
		}
	}
	return fsm.Timer(best), best >= 0
}

// rewake makes sure one heap entry stands at n's earliest deadline. Later
// or cancelled deadlines leave the existing entry in place: it pops early,
// finds nothing due and re-arms, which is cheaper than removing it.
func (s *sim) rewake(n *node) {
	if n.m == nil {
		return
	}
	next := int64(0)
	for _, d := range n.dl {
		if d != 0 && (next == 0 || d < next) {
			next = d
		}
	}
	if next == 0 || (n.wake != 0 && n.wake <= next) {
		return
	}
	n.tgen++
	n.wake = next
	s.q.push(next-s.now, event{node: n.idx, kind: evTimer, gen: n.tgen})
}

// step hands ev to n's machine, carries out the effects in order, checks the
// invariants, traces, and then steps a write that completed at once.
func (s *sim) step(n *node, ev fsm.Event) {
	from := n.m.State()
	effs, err := n.m.Step(s.nowT, ev)
	s.steps++
	s.events++
	if err != nil {
		s.violate(n, RuleRejected, "%s in %s: %v", ev.Kind, from, err)
		return
	}
	if h := s.c.hooks; h != nil && h.afterStep != nil {
		effs = h.afterStep(int(n.idx), s.nowT, effs)
	}
	notable := false
	for i := range effs {
		e := &effs[i]
		switch e.Kind {
		case fsm.Send:
			s.send(n, e.Attempt)
		case fsm.ArmTimer:
			n.dl[e.Timer] = e.At.UnixNano()
		case fsm.CancelTimer:
			n.dl[e.Timer] = 0
		case fsm.Dial:
			notable = true
			s.dial(n, e.Attempt)
		case fsm.CancelDial:
			notable = true
			s.cancelDial(n, e.Attempt)
		case fsm.ResetStream:
			notable = true
			s.endStream(n, e.Attempt, msgReset)
		case fsm.CloseStream:
			notable = true
			s.endStream(n, e.Attempt, msgClose)
		default:
			notable = true
		}
	}
	if notable {
		s.checkStep(n, ev, from, effs)
		s.traceStep(n, ev, effs)
	} else if s.c.TraceBeats {
		s.traceStep(n, ev, effs)
	}
	if a := n.pendingWrite; a != 0 && s.err == nil {
		n.pendingWrite = 0
		s.step(n, fsm.Event{Kind: fsm.WriteSucceeded, Attempt: uint64(a)})
	}
}

// lat draws one message's one-way latency on n's path.
func (s *sim) lat(n *node) int64 {
	l := n.lat + s.extraLat
	if j := int64(s.c.net.Jitter); j > 0 {
		l += s.rng.Int64N(j)
	}
	return l
}

// upSend sends a message from n to the aggregator, in order after the
// previous one; a partition holds it until it heals.
func (s *sim) upSend(n *node, sub uint8, gen, arg uint32) {
	ev := event{node: n.idx, kind: evUp, sub: sub, gen: gen, arg: arg}
	if n.partitioned > 0 {
		n.held = append(n.held, held{ev: ev, up: true})
		return
	}
	t := max(s.now+s.lat(n), n.upLast)
	n.upLast = t
	s.q.push(t-s.now, ev)
}

// downSend sends a message from the aggregator to n, as upSend.
func (s *sim) downSend(n *node, sub uint8, gen, arg uint32) {
	ev := event{node: n.idx, kind: evDown, sub: sub, gen: gen, arg: arg}
	if n.partitioned > 0 {
		n.held = append(n.held, held{ev: ev})
		return
	}
	t := max(s.now+s.lat(n), n.downLast)
	n.downLast = t
	s.q.push(t-s.now, ev)
}

// slots are the node's two stream slots, the hot one first.
func (n *node) slots() [2]*sstream { return [2]*sstream{&n.st, &n.st2} }

func (n *node) stream(attempt uint64) *sstream {
	if n.st.open && uint64(n.st.attempt) == attempt {
		return &n.st
	}
	if n.st2.open && uint64(n.st2.attempt) == attempt {
		return &n.st2
	}
	return nil
}

func (n *node) streamGen(sgen uint32) *sstream {
	for _, st := range n.slots() {
		if st.open && st.sgen == sgen {
			return st
		}
	}
	return nil
}

func (n *node) openStreams() int {
	c := 0
	for _, st := range n.slots() {
		if st.open {
			c++
		}
	}
	return c
}

// send writes one heartbeat line: at once while the send window has room,
// otherwise the write blocks until a window update makes room.
func (s *sim) send(n *node, attempt uint64) {
	s.sent++
	st := n.stream(attempt)
	if n.m.State() != fsm.Beating || st == nil {
		state := "no open stream"
		if st != nil {
			state = "an open stream"
		}
		s.violate(n, RuleBeatOutsideBeating, "Send on attempt %d in state %s, with %s", attempt, n.m.State(), state)
		return
	}
	size := int32(s.c.lineSize)
	if st.inflight+size > int32(s.c.net.SendWindow) {
		st.blocked = true
		return
	}
	st.inflight += size
	s.upSend(n, msgData, st.sgen, 1)
	n.pendingWrite = uint32(attempt)
}

// dial starts attempt: a stream on the live connection at once, or a new
// connection, which is refused fast when the aggregator is down and hangs
// when the path drops packets.
func (s *sim) dial(n *node, attempt uint64) {
	s.countDial()
	n.dialGen++
	n.dial = dialState{attempt: attempt, gen: n.dialGen, aggInc: s.agg.inc, pending: true}
	var (
		sub uint8
		d   int64
	)
	switch {
	case n.conn.alive:
		sub = dialStream
	case n.partitioned > 0 || n.blackholed > 0:
		n.dial.hung = true
		return
	case !s.agg.up:
		sub, d = dialRefused, s.lat(n)+s.lat(n)
	default:
		sub, d = dialHandshake, s.lat(n)+s.lat(n)+s.lat(n)+s.lat(n)
	}
	n.dial.doneAt = s.now + d
	s.q.push(d, event{node: n.idx, kind: evDialDone, sub: sub, gen: n.dialGen})
}

// cancelDial abandons a dial. A hung or slow dial fails at once with a
// cancellation (a stale result for the machine); one whose last handshake
// message is already on its way completes anyway, and the machine must reset
// the stream it brings back.
func (s *sim) cancelDial(n *node, attempt uint64) {
	d := &n.dial
	if !d.pending || d.attempt != attempt {
		return
	}
	if !d.hung && d.doneAt-s.now <= n.lat+s.extraLat {
		return
	}
	d.pending = false
	s.q.push(0, event{node: n.idx, kind: evStale, sub: uint8(fsm.DialFailed), gen: n.inc, arg: uint32(attempt)})
}

func (s *sim) onDialDone(n *node, ev event) {
	d := &n.dial
	if n.m == nil || ev.gen != d.gen || !d.pending {
		return // cancelled, or from before a restart
	}
	d.pending = false
	switch ev.sub {
	case dialRefused:
		s.step(n, fsm.Event{Kind: fsm.DialFailed, Attempt: d.attempt, Err: errRefused})
	case dialHandshake:
		switch {
		case n.partitioned > 0:
			d.pending, d.hung = true, true // the handshake froze half way
		case !s.agg.up || s.agg.inc != d.aggInc:
			s.step(n, fsm.Event{Kind: fsm.DialFailed, Attempt: d.attempt, Err: errConnReset})
		default:
			n.connGen++
			n.conn.alive, n.conn.gen = true, n.connGen
			if s.pathBroken(n) {
				s.scheduleKeepalive(n)
			}
			s.openStream(n, d.attempt)
		}
	case dialStream:
		if !n.conn.alive {
			s.step(n, fsm.Event{Kind: fsm.DialFailed, Attempt: d.attempt, Err: errConnReset})
			return
		}
		s.openStream(n, d.attempt)
	}
}

// openStream gives n's machine a new stream for attempt. The aggregator
// learns of it with its first line (libp2p negotiates lazily).
func (s *sim) openStream(n *node, attempt uint64) {
	var slot *sstream
	for _, st := range n.slots() {
		if !st.open {
			slot = st
			break
		}
	}
	if slot == nil {
		s.violate(n, RuleOneStream, "a third stream opened while two are live")
		return
	}
	n.sgen++
	*slot = sstream{attempt: uint32(attempt), sgen: n.sgen, conn: n.conn.gen, open: true}
	s.step(n, fsm.Event{Kind: fsm.DialSucceeded, Attempt: attempt})
	// The only place a node gains a stream: the machine must have adopted
	// it in place of none, or reset it (a stale attempt's).
	if k := n.openStreams(); k > 1 && s.err == nil {
		s.violate(n, RuleOneStream, "%d live streams after DialSucceeded for attempt %d", k, attempt)
	}
}

// endStream resets (msgReset) or closes (msgClose) n's stream of attempt.
// A write blocked on it fails, which the machine sees as a stale result.
func (s *sim) endStream(n *node, attempt uint64, how uint8) {
	st := n.stream(attempt)
	if st == nil {
		return // already ended by the remote side
	}
	st.open = false
	s.upSend(n, how, st.sgen, 0)
	if st.blocked {
		st.blocked = false
		s.q.push(0, event{node: n.idx, kind: evStale, sub: uint8(fsm.WriteFailed), gen: n.inc, arg: uint32(attempt)})
	}
}

// onDown delivers a message from the aggregator to n's process.
func (s *sim) onDown(n *node, ev event) {
	if n.m == nil {
		return
	}
	switch ev.sub {
	case msgCredit:
		st := n.streamGen(ev.gen)
		if st == nil {
			return
		}
		st.inflight -= int32(ev.arg)
		size := int32(s.c.lineSize)
		if st.blocked && st.inflight+size <= int32(s.c.net.SendWindow) {
			st.blocked = false
			st.inflight += size
			s.upSend(n, msgData, st.sgen, 1)
			s.step(n, fsm.Event{Kind: fsm.WriteSucceeded, Attempt: uint64(st.attempt)})
		}
	case msgReset, msgClose:
		if st := n.streamGen(ev.gen); st != nil {
			s.remoteEnd(n, st, ev.sub == msgClose)
		}
	case msgConnDead:
		for _, st := range n.slots() {
			if st.open && st.conn == ev.gen {
				s.remoteEnd(n, st, false)
			}
		}
	}
}

// remoteEnd reports the end of st from the other side to n's machine, then
// the failure of a write that was blocked on it.
func (s *sim) remoteEnd(n *node, st *sstream, orderly bool) {
	st.open = false
	blocked := st.blocked
	st.blocked = false
	ev := fsm.Event{Kind: fsm.RemoteReset, Attempt: uint64(st.attempt), Err: errStreamRst}
	if orderly {
		ev = fsm.Event{Kind: fsm.RemoteClosed, Attempt: uint64(st.attempt)}
	}
	s.step(n, ev)
	if blocked && s.err == nil && n.m != nil {
		s.step(n, fsm.Event{Kind: fsm.WriteFailed, Attempt: uint64(st.attempt), Err: errWriteAbort})
	}
}

// pathBroken reports whether keepalive pings on n's connection go
// unanswered now.
func (s *sim) pathBroken(n *node) bool {
	rtt := 2 * (n.lat + s.extraLat)
	return n.partitioned > 0 || n.crashed > 0 || n.paused || rtt > int64(s.c.net.KeepAliveTimeout)
}

// scheduleKeepalive arranges for n's connection to die if its path is still
// broken when the next ping times out.
func (s *sim) scheduleKeepalive(n *node) {
	if !n.conn.alive {
		return
	}
	d := s.c.net.KeepAliveTimeout + time.Duration(s.rng.Int64N(int64(s.c.net.KeepAliveInterval)))
	s.q.push(int64(d), event{node: n.idx, kind: evKeepalive, gen: n.conn.gen})
}

func (s *sim) onKeepalive(n *node, ev event) {
	if !n.conn.alive || n.conn.gen != ev.gen || !s.pathBroken(n) {
		return
	}
	// Both sides' pings fail: each ends the connection and its streams.
	n.conn.alive = false
	s.tr.begin(s.now, string(n.id)).str(" keepalive-timeout conn=").int(int64(ev.gen)).end()
	a := &s.agg.st[n.idx]
	a.dead = n.sgen
	if s.agg.up && a.open {
		s.aggEnd(n, a, false)
	}
	if n.crashed == 0 {
		s.q.push(0, event{node: n.idx, kind: evDown, sub: msgConnDead, gen: ev.gen})
	}
}

// releaseHeld delivers what a partition held, in order.
func (s *sim) releaseHeld(n *node) {
	h := n.held
	n.held = n.held[:0]
	for _, m := range h {
		if m.up {
			s.upSend(n, m.ev.sub, m.ev.gen, m.ev.arg)
		} else {
			s.downSend(n, m.ev.sub, m.ev.gen, m.ev.arg)
		}
	}
}

// crash kills n's process. Its kernel resets the connection (an RST that
// still has to cross the network).
func (s *sim) crash(n *node) {
	n.crashed++
	if n.crashed > 1 {
		return
	}
	if n.m != nil {
		s.states[n.m.State()]--
	}
	s.crashedN++
	if n.conn.alive {
		n.conn.alive = false
		s.upSend(n, msgConnDead, n.conn.gen, n.sgen)
	}
	n.m = nil
	n.st, n.st2 = sstream{}, sstream{}
	n.dial = dialState{}
	n.dl = [fsm.NumTimers]int64{}
	n.wake = 0
	n.tgen++
	n.pendingWrite = 0
	s.tr.begin(s.now, string(n.id)).str(" crash").end()
}

// restart starts a fresh process on n, with a fresh machine and log policy.
func (s *sim) restart(n *node) {
	n.crashed--
	if n.crashed > 0 {
		return
	}
	s.crashedN--
	n.inc++
	n.inOutage, n.outFailures, n.loudAt, n.lastError = false, 0, 0, 0
	n.connFailures, n.failAt, n.failN, n.pausedSinceFail = 0, 0, 0, false
	s.tr.begin(s.now, string(n.id)).str(" restart inc=").int(int64(n.inc)).end()
	if s.paused(n, event{node: n.idx, kind: evStart, gen: n.inc}) {
		return
	}
	s.startNode(n)
	s.rewake(n)
}

// nodeIndex parses a simulated peer id ("n00042") back into its index.
func nodeIndex(id peer.ID) int {
	i := 0
	for k := 1; k < len(id); k++ {
		i = i*10 + int(id[k]-'0')
	}
	return i
}

// head returns the (shared) head string of height h.
func (s *sim) head(h uint64) string {
	k := int(h - heightBase)
	for len(s.heads) <= k {
		s.heads = append(s.heads, fmt.Sprintf("bafy2bzacea%051d", heightBase+len(s.heads)))
	}
	return s.heads[k]
}

// defaultLineSize is the encoded size of a simulated heartbeat line.
func defaultLineSize() int {
	hb := wire.Heartbeat{Head: fmt.Sprintf("bafy2bzacea%051d", heightBase), Height: heightBase, Nickname: "n00000"}
	b, err := wire.AppendLine(nil, hb)
	if err != nil {
		return 128
	}
	return len(b)
}
