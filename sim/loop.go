package sim

import (
	"fmt"
	"math/rand/v2"
	"time"
	"unsafe"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/aggregator/pacing"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/wire"
	"github.com/p2pbeat/heartbeat/wire2"
)

// The run: its state, setup from the Params, and the loop that pops the
// virtual clock's events in order and dispatches them.

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
	evImpostor         // an impostor's step (sub: impOpen or impBeat; gen: its generation)
	evWindow           // the end of the pacing window after an aggregator start (gen: its incarnation)
)

// event is one entry of the virtual clock (queue): 16 bytes, no pointers,
// so the queue holds nothing for the garbage collector to scan. gen
// identifies what the event is about (a timer arming, a dial, a stream, a
// connection); a gen that no longer matches makes the event stale.
type event struct {
	node int32
	kind evKind
	sub  uint8
	code uint8 // a GoAway's reason (goAway...)
	_    byte
	gen  uint32
	arg  uint32
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
	closing  bool   // an orderly end arrived while stalled
	imp      bool   // the open stream is an impostor's (see Impostor)
	v2       bool   // the open stream speaks protocol v2
	hello    bool   // its Hello was read (and answered with Welcome)
	lastSeq  uint32 // v2: the last Beat seq read on it
	lastRead int64
	upto     uint32 // v2: the last Beat seq arrived (unread while stalled)
	boot     uint32 // v2: the incarnation of the process that opened it
}

type aggregator struct {
	up      bool
	down    int // crash/shutdown faults in force
	stall   int // stall faults in force
	inc     uint32
	tr      *tracker.Tracker
	started int64
	st      []astream
	// pace paces new v2 streams (package pacing, the aggregator's own); a
	// restart starts a fresh one (a process keeps no slots across a crash).
	pace *pacing.Pacer
}

// sim is one run.
type sim struct {
	c        *config
	q        *queue
	loc      *time.Location
	rng      *rand.Rand // the network's draws
	paceRng  *rand.Rand // the aggregator's uniform retry-after draws (v2: shutdown, full)
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
		// A stream of its own, so that v1 runs draw what they always drew.
		paceRng: rand.New(rand.NewPCG(mix(c.Seed^0x70616365), mix(c.Seed))), // "pace"
		nodes:   make([]node, c.Nodes),
		colds:   make([]nodeCold, c.Nodes),
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
		if c.newcomer && i == len(s.nodes)-1 {
			at = warmUp + newcomerAfter
		}
		s.q.push(int64(at), event{node: n.idx, kind: evStart})
	}
	s.agg.st = make([]astream, c.Nodes)
	for i := range s.agg.st {
		s.agg.st[i].id = s.nodes[i].id
		s.nodes[i].v2 = c.v2(int32(i))
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
		if prefetchOn {
			if nx, ok := s.q.peek(0); ok {
				s.touch(nx)
				if nx2, ok := s.q.peek(1); ok {
					s.touchNode(nx2)
				}
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
		case evImpostor:
			s.events++
			s.onImpostor(ev)
		case evWindow:
			s.events++
			s.onWindow(ev)
		case evLiveness:
			s.events++
			s.checkLiveness("after the last fault healed")
		case evEnd:
			s.sample()
			s.checkLiveness("at the end of the run")
			if sc, ok := findScenario(s.c.Scenario); ok && sc.check != nil && s.err == nil {
				if msg := sc.check(s); msg != "" {
					s.violate(nil, RuleScenario, "%s", msg)
				}
			}
			return
		}
	}
}

// prefetchOn is always true but in BenchmarkPrefetch10k, which switches it
// off and on in turn to measure what prefetching buys (docs/benchmarks.md).
var prefetchOn = true

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
			// A beat's Step touches much of the machine: prefetch all of
			// it. Its size is the compiler's, so this assumes nothing about
			// fsm.Machine's layout, and a prefetch is only a hint: a change
			// there can cost speed, never correctness.
			prefetchSpan(unsafe.Pointer(m), unsafe.Sizeof(*m))
		}
	case evUp:
		prefetch(unsafe.Pointer(&s.agg.st[ev.node]), 1)
	}
}

// prefetchSpan prefetches every cache line of the size bytes at p.
func prefetchSpan(p unsafe.Pointer, size uintptr) {
	prefetch(p, int((uintptr(p)&63+size+63)/64))
}

// touchNode prefetches the hot lines of the node an event two places ahead
// is for, so that touch finds the pointers it follows in cache.
func (s *sim) touchNode(ev event) {
	if ev.kind == evTimer {
		prefetch(unsafe.Pointer(&s.nodes[ev.node]), 2)
	}
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

// defaultFrameSize is the encoded size of a simulated v2 Beat frame.
func defaultFrameSize() int {
	b, err := new(wire2.Encoder).Append(nil, &wire2.Beat{Seq: 1 << 20, Time: DefaultStart.UnixNano(),
		Head: fmt.Sprintf("bafy2bzacea%051d", heightBase), Height: heightBase, RTT: 100 * time.Millisecond})
	if err != nil {
		return 96
	}
	return len(b)
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
