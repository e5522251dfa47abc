package sim

import (
	"errors"
	"time"

	"github.com/p2pbeat/heartbeat/fsm"
)

// The network model between the nodes and the aggregator: latency and
// in-order paths, dials, streams and their send windows, resets and closes,
// keepalive, and what a partition holds back.

// Messages on a connection (event.sub of evUp and evDown).
const (
	msgData     uint8 = iota // up: arg lines of heartbeats on stream gen
	msgReset                 // a stream reset (gen: the stream)
	msgClose                 // an orderly end of a stream (gen: the stream)
	msgConnDead              // a connection reset; down: gen is the connection, up: arg is the last stream on it
	msgCredit                // down: a window update of arg bytes on stream gen
	msgWelcome               // down (v2): the Welcome answering stream gen's Hello
	msgAck                   // down (v2): the Ack of Beat seq arg on stream gen
	msgGoAway                // down (v2): GoAway on stream gen, retry-after arg µs, reason code
)

// The reasons of a GoAway (event.code of msgGoAway), as the aggregator
// sends them.
const (
	goAwayBusy     uint8 = iota // past the accept rate
	goAwayShutdown              // an orderly stop
	goAwayFull                  // the tracker is full (too_many_nodes)
)

var goAwayReasons = [...]string{"busy", "shutdown", "too_many_nodes"}

// How a dial ends (event.sub of evDialDone).
const (
	dialRefused   uint8 = iota // nobody listens: refused after a round trip
	dialHandshake              // a new connection: two round trips
	dialStream                 // a stream on the existing connection: at once
)

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

var (
	errRefused    = errors.New("connection refused")
	errConnReset  = errors.New("connection reset by peer")
	errStreamRst  = errors.New("stream reset")
	errCanceled   = errors.New("dial canceled")
	errWriteAbort = errors.New("write aborted: stream reset")
)

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
func (s *sim) downSend(n *node, sub uint8, gen, arg uint32) { s.downSendCode(n, sub, 0, gen, arg) }

// downSendCode is downSend with a code (a GoAway's reason).
func (s *sim) downSendCode(n *node, sub, code uint8, gen, arg uint32) {
	ev := event{node: n.idx, kind: evDown, sub: sub, code: code, gen: gen, arg: arg}
	if n.partitioned > 0 {
		n.held = append(n.held, held{ev: ev})
		return
	}
	t := max(s.now+s.lat(n), n.downLast)
	n.downLast = t
	s.q.push(t-s.now, ev)
}

// send writes one heartbeat (a v1 line, or the v2 Beat seq, preceded by
// the Hello on a stream's first write): at once while the send window has
// room, otherwise the write blocks until a window update makes room.
func (s *sim) send(n *node, attempt, seq uint64) {
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
	arg := uint32(1) // v1: one line
	if n.v2 {
		s.sentSeq(n, st, seq)
		arg = st.last
	}
	size := s.msgSize(n)
	if st.inflight+size > int32(s.c.net.SendWindow) {
		st.blocked = true
		return
	}
	st.inflight += size
	s.upSend(n, msgData, st.sgen, arg)
	n.pendingWrite = uint32(attempt)
}

// msgSize is the size of one of n's heartbeats on the wire.
func (s *sim) msgSize(n *node) int32 {
	if n.v2 {
		return int32(s.c.frameSize)
	}
	return int32(s.c.lineSize)
}

// sentSeq checks that a v2 Beat's seq is the next of the process's boot
// (1, 2, 3…, across reconnects) and notes it on the stream.
func (s *sim) sentSeq(n *node, st *sstream, seq uint64) {
	if seq != uint64(n.seq)+1 {
		s.violate(n, RuleSeq, "Beat seq %d written after seq %d of the same boot, want %d", seq, n.seq, n.seq+1)
	}
	n.seq = uint32(seq)
	if st.seq0 == 0 {
		st.seq0 = n.seq
	}
	st.last = n.seq
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
	s.step(n, fsm.Event{Kind: fsm.DialSucceeded, Attempt: attempt, Protocol: n.protocol()})
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
		size := s.msgSize(n)
		if st.blocked && st.inflight+size <= int32(s.c.net.SendWindow) {
			st.blocked = false
			st.inflight += size
			arg := uint32(1)
			if n.v2 {
				arg = st.last
			}
			s.upSend(n, msgData, st.sgen, arg)
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
	case msgWelcome:
		if st := n.streamGen(ev.gen); st != nil {
			s.step(n, fsm.Event{Kind: fsm.WelcomeReceived, Attempt: uint64(st.attempt)})
		}
	case msgAck:
		if st := n.streamGen(ev.gen); st != nil {
			s.onAck(n, st, ev.arg)
		}
	case msgGoAway:
		if st := n.streamGen(ev.gen); st != nil {
			s.step(n, fsm.Event{Kind: fsm.GoAwayReceived, Attempt: uint64(st.attempt),
				RetryAfter: time.Duration(ev.arg) * time.Microsecond, Reason: goAwayReasons[ev.code]})
		}
	}
}

// onAck hands the Ack of Beat seq to n's machine, after checking that it
// acknowledges a Beat written on that stream and not yet acknowledged:
// the simulated aggregator must never send another (the machine would
// count it as a broken aggregator).
func (s *sim) onAck(n *node, st *sstream, seq uint32) {
	if st.seq0 == 0 || seq < st.seq0 || seq > st.last || seq <= st.acked {
		s.violate(n, RuleAck, "Ack for seq %d on a stream that wrote seqs %d to %d, acknowledged up to %d", seq, st.seq0, st.last, st.acked)
		return
	}
	st.acked = seq
	s.step(n, fsm.Event{Kind: fsm.AckReceived, Attempt: uint64(st.attempt), Seq: uint64(seq)})
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
			s.downSendCode(n, m.ev.sub, m.ev.code, m.ev.gen, m.ev.arg)
		}
	}
}
