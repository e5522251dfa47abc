package sim

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/fsm"
)

// The simulated senders: each node's process around its real fsm.Machine,
// its timers (one queue entry at the earliest deadline), the Step that
// carries out the effects, and crashes and restarts.

// sstream is the sender's side of a stream.
type sstream struct {
	attempt  uint32 // the machine's attempt (a run never makes 2^32 of them)
	sgen     uint32 // unique per node, across restarts
	conn     uint32 // the connection it runs on
	inflight int32  // bytes written and not yet acknowledged by a window update
	// v2: the first and the last Beat seq written on it, and the last
	// acknowledged (what an Ack may acknowledge: seq0 <= seq <= last, and
	// above acked).
	seq0, last, acked uint32
	open              bool
	blocked           bool // a write waits for room in the send window
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
	v2           bool  // the node speaks protocol v2 (Params.Protocol)
	upLast       int64 // keeps the path to the aggregator in order
	lat          int64 // base one-way latency plus this node's latency spikes
	// 128 bytes: the v2 ack timer made dl 72 bytes with line 1's header,
	// and the v2 seqs grew st; together they still fill two lines exactly
	// (TestNodeIsTwoCacheLines).
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
	failN           uint64 // the backoff's n for that failure; 0: the rejoin after a lost proven stream
	proven          bool   // the stream survived its first beat (the fsm's documented rule)
	pausedSinceFail bool
	beatingSince    int64
	active          uint16 // faults on this node's path right now
	quiet           int64  // when the last one's effects ended

	logs [4]uint64 // lines per fsm.Level-1

	// v2. seq is the last Beat seq the process wrote (the checker's
	// account: 1, 2, 3… per incarnation); aggSeq the last the aggregator
	// read of incarnation aggInc. goAway is set while the retry armed is a
	// GoAway's, which asked for goAsked; goneAway once a GoAway was logged
	// in the current outage. stallWatch: Beating when a stall began, its
	// detection not yet measured.
	seq, aggSeq, aggInc uint32
	firstSgen           uint32 // the first stream of the current incarnation
	goAsked             time.Duration
	goAway, goneAway    bool
	stallWatch          bool

	crashAt int64 // when the process last crashed; 0 once detected or restarted

	// A second sender with this node's key (Impostor).
	impostors           uint16
	impGen, impStream   uint32
	impSince, flaggedAt int64 // when it began; when the tracker flagged the duplicate
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
	cfg := s.c.senderFor(n.idx)
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

// protocol is what n's streams negotiate: the aggregator serves both, so
// a v2 sender (offering v2, then v1) gets v2.
func (n *node) protocol() fsm.Protocol {
	if n.v2 {
		return fsm.V2
	}
	return fsm.V1
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
	notable, sent := false, false
	for i := range effs {
		e := &effs[i]
		switch e.Kind {
		case fsm.Send:
			sent = true
			s.send(n, e.Attempt, e.Seq)
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
	if !notable && !n.proven && ((!n.v2 && sent && ev.Kind == fsm.BeatDue) ||
		(n.v2 && ev.Kind == fsm.AckReceived && ev.Attempt == n.m.Attempt() && n.m.State() == fsm.Beating)) {
		// A quiet proof (no outage to report): the checker's view follows.
		n.proven = true
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
	n.crashAt = 0
	if s.agg.up {
		if nd, ok := s.agg.tr.Node(n.id); ok && (nd.State == tracker.Up || nd.State == tracker.Suspect) {
			n.crashAt = s.now // a crash the tracker should detect
			s.crashes++
		}
	}
	s.tr.begin(s.now, string(n.id)).str(" crash").end()
}

// restart starts a fresh process on n, with a fresh machine and log policy.
func (s *sim) restart(n *node) {
	n.crashed--
	if n.crashed > 0 {
		return
	}
	s.crashedN--
	n.crashAt = 0
	n.inc++
	n.inOutage, n.outFailures, n.loudAt, n.lastError = false, 0, 0, 0
	n.connFailures, n.failAt, n.failN, n.pausedSinceFail = 0, 0, 0, false
	n.seq, n.goAway, n.goneAway, n.stallWatch = 0, false, false, false
	n.firstSgen = n.sgen + 1
	s.tr.begin(s.now, string(n.id)).str(" restart inc=").int(int64(n.inc)).end()
	if s.paused(n, event{node: n.idx, kind: evStart, gen: n.inc}) {
		return
	}
	s.startNode(n)
	s.rewake(n)
}
