package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/p2pbeat/heartbeat/aggregator/pacing"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
)

// The simulated aggregator: the stream handler's contract around the real
// tracker (StreamOpened on a new stream, Beat per line read, StreamEnded on
// its end, Sweep every SweepEvery), with the read deadline, superseding of
// an older stream, and window updates that let the senders' writes go on.

// aggStart starts (or restarts) the aggregator process with an empty
// tracker: a crash loses every record.
func (s *sim) aggStart() {
	ag := &s.agg
	tr, err := tracker.New(s.c.trackerIn, s.nowT)
	if err != nil { // validated in resolve: cannot happen
		s.violate(nil, RuleRejected, "tracker.New: %v", err)
		return
	}
	ag.up, ag.tr, ag.started = true, tr, s.now
	s.up = 0
	if s.c.anyV2() {
		pc, err := pacing.New(s.c.pacing.AcceptRate, s.c.pacing.PacingWindow, s.paceRng)
		if err != nil { // validated in resolve: cannot happen
			s.violate(nil, RuleRejected, "pacing.New: %v", err)
			return
		}
		ag.pace = pc
		s.pace = append(s.pace, paceRec{start: s.now, upInWindow: -1})
		s.q.push(int64(s.c.pacing.PacingWindow), event{kind: evWindow, gen: ag.inc})
	}
}

// onWindow records, one pacing window after the aggregator (re)started,
// the share of the running nodes Up at it.
func (s *sim) onWindow(ev event) {
	if !s.agg.up || ev.gen != s.agg.inc || len(s.pace) == 0 {
		return
	}
	live := len(s.nodes) - s.crashedN
	if live > 0 {
		s.pace[len(s.pace)-1].upInWindow = float64(s.up) / float64(live)
	}
}

// countAccept counts a stream the aggregator admitted (v2: past the
// pacer), per second since its start.
func (s *sim) countAccept(v2 bool) {
	if len(s.pace) == 0 {
		return
	}
	p := &s.pace[len(s.pace)-1]
	sec := int((s.now - p.start) / int64(time.Second))
	for len(p.v2) <= sec {
		p.v2, p.v1 = append(p.v2, 0), append(p.v1, 0)
	}
	if v2 {
		p.v2[sec]++
	} else {
		p.v1[sec]++
	}
}

// goAway answers n's v2 stream sgen with GoAway (retry after the given
// delay, whole µs) and closes it in order, so that the sender reads the
// frame before the EOF.
func (s *sim) goAway(n *node, sgen uint32, reason uint8, retryAfter time.Duration) {
	after := uint32(retryAfter / time.Microsecond)
	s.downSendCode(n, msgGoAway, reason, sgen, after)
	s.downSend(n, msgClose, sgen, 0)
	s.tr.begin(s.now, "agg").str(" goaway ").str(string(n.id)).str(" stream=").int(int64(sgen)).
		str(" retry-after=").dur(time.Duration(after) * time.Microsecond).str(" reason=").str(goAwayReasons[reason]).end()
}

// aggStop takes the aggregator down. A crash resets every connection; an
// orderly shutdown first closes every stream, then the connections.
func (s *sim) aggStop(orderly bool) {
	ag := &s.agg
	ag.up = false
	ag.tr = nil
	ag.inc++
	s.up = 0
	for i := range s.nodes {
		n := &s.nodes[i]
		a := &ag.st[i]
		if orderly && a.open && a.v2 && !a.imp {
			s.goAway(n, a.sgen, goAwayShutdown, ag.pace.SpreadWithin(pacing.ShutdownSpread(s.c.tracker.StartupGrace))) // GoAway, then the close
		} else if orderly && a.open {
			s.downSend(n, msgClose, a.sgen, 0)
		}
		if n.conn.alive {
			n.conn.alive = false
			s.downSend(n, msgConnDead, n.conn.gen, 0)
		}
		*a = astream{id: a.id, sgen: a.sgen, dead: n.sgen}
	}
}

// onUp delivers a message from a node to the aggregator.
func (s *sim) onUp(ev event) {
	if !s.agg.up {
		return // sent to a process that has since died
	}
	n := &s.nodes[ev.node]
	a := &s.agg.st[ev.node]
	switch ev.sub {
	case msgData:
		if a.imp && ev.gen <= a.sgen {
			return // a stream the impostor's superseded
		}
		if !a.open || a.sgen != ev.gen || a.imp {
			if ev.gen <= a.sgen || ev.gen <= a.dead {
				return // a stream that already ended here
			}
			if !s.aggOpen(n, a, ev.gen) {
				return
			}
		}
		if h := s.c.hooks; h != nil && h.dropLine != nil && h.dropLine(int(ev.node), s.nowT) {
			return
		}
		if a.v2 {
			// arg is the Beat's seq; a stream delivers in order, so the
			// unread backlog is the seqs up to it.
			if s.agg.stall > 0 {
				a.unread++
				a.upto = ev.arg
				return
			}
			s.aggReadV2(n, a, ev.arg, 1)
			return
		}
		if s.agg.stall > 0 {
			a.unread += ev.arg
			return
		}
		s.aggRead(n, a, ev.arg)
	case msgReset:
		if a.open && a.sgen == ev.gen && !a.imp {
			s.aggEnd(n, a, false)
		}
	case msgClose:
		if a.open && a.sgen == ev.gen && !a.imp {
			if s.agg.stall > 0 {
				a.closing = true // read the EOF after the backlog, on resume
				return
			}
			s.aggEnd(n, a, true)
		}
	case msgConnDead:
		if a.open && a.sgen <= ev.arg && !a.imp {
			s.aggEnd(n, a, false)
		}
		a.dead = max(a.dead, ev.arg)
	}
}

// aggOpen runs the handler's start for a new stream: a newer stream from
// the same peer supersedes (resets) the older one.
func (s *sim) aggOpen(n *node, a *astream, sgen uint32) bool {
	if s.paced(n, a, sgen) {
		return false
	}
	if a.open {
		old, imp := a.sgen, a.imp
		s.aggEnd(n, a, false)
		if imp {
			s.impostorLost(n)
		} else {
			s.downSend(n, msgReset, old, 0)
		}
		s.superseded(n)
	}
	*a = astream{id: a.id, sgen: sgen, dead: a.dead, idleSeq: a.idleSeq + 1, open: true, lastRead: s.now, v2: n.v2, boot: n.inc}
	if sgen < n.firstSgen {
		// A stream of a process that has since crashed, delivered late
		// (held by a partition): its Hello carries the older boot id.
		a.boot = n.inc - 1
	}
	if err := s.agg.tr.StreamOpened(n.id, s.nowT); err != nil {
		a.open = false
		if n.v2 && errors.Is(err, tracker.ErrFull) {
			s.goAway(n, sgen, goAwayFull, s.agg.pace.Spread()) // as aggregator.serveV2
		} else {
			s.downSend(n, msgReset, sgen, 0)
		}
		s.tr.begin(s.now, "agg").str(" refuse ").str(string(n.id)).str(" error=").quote(err.Error()).end()
		return false
	}
	s.countAccept(n.v2)
	s.tr.begin(s.now, "agg").str(" open ").str(string(n.id)).str(" stream=").int(int64(sgen)).end()
	s.q.push(int64(s.idleTimeout(n)), event{node: n.idx, kind: evIdle, gen: sgen, arg: a.idleSeq})
	return true
}

// paced applies the aggregator's pacing to n's new stream sgen, before
// anything else (aggregator.handleStreamV2): a v2 stream from a node the
// tracker holds Up or Suspect is admitted unpaced; otherwise one past the
// accept rate gets GoAway with its slot as retry-after and an orderly
// close, reaches neither the tracker nor an older stream of the node, and
// is counted as paced. v1 streams are never paced.
func (s *sim) paced(n *node, a *astream, sgen uint32) bool {
	if !n.v2 || s.agg.pace == nil {
		return false
	}
	if st, ok := s.agg.tr.State(n.id); ok && (st == tracker.Up || st == tracker.Suspect) {
		s.unpacedN++
		return false
	}
	ok, after := s.agg.pace.Admit(s.nowT)
	if ok {
		return false
	}
	if !a.open {
		a.sgen = sgen // what else arrives on it is dropped
	}
	s.pacedN++
	if len(s.pace) > 0 {
		s.pace[len(s.pace)-1].paced++
	}
	s.goAway(n, sgen, goAwayBusy, after)
	return true
}

// idleTimeout is the aggregator's read deadline on n's streams: at least
// three declared periods on v2 (aggregator.frameLoop), so that a node with
// a long period is not cut off between two beats.
func (s *sim) idleTimeout(n *node) time.Duration {
	if n.v2 {
		return max(s.c.net.IdleTimeout, 3*s.c.periodFor(n.idx))
	}
	return s.c.net.IdleTimeout
}

// aggReadV2 reads k v2 frames of a's stream, the Beats up to seq upto
// (the first one after the Hello, which is answered with Welcome), into
// the tracker, and acknowledges each Beat.
func (s *sim) aggReadV2(n *node, a *astream, upto, k uint32) {
	if !a.hello {
		a.hello = true
		var boot [16]byte
		binary.LittleEndian.PutUint64(boot[:], nodeSeed(s.c.Seed, n.idx, a.boot))
		binary.LittleEndian.PutUint32(boot[8:], a.boot+1)
		if _, err := s.agg.tr.Hello(n.id, tracker.HelloInfo{BootID: boot, Period: s.c.periodFor(n.idx)}, s.nowT); err != nil {
			s.violate(n, RuleRejected, "tracker.Hello: %v", err)
			return
		}
		s.downSend(n, msgWelcome, a.sgen, 0)
	}
	s.epochHead()
	s.hb.Nickname = string(a.id)
	for seq := upto - k + 1; seq <= upto && s.err == nil; seq++ {
		if a.lastSeq != 0 && seq != a.lastSeq+1 {
			s.violate(n, RuleSeq, "the aggregator read seq %d after seq %d on one stream, want %d", seq, a.lastSeq, a.lastSeq+1)
		} else if n.aggInc == a.boot && n.aggSeq != 0 && seq <= n.aggSeq {
			s.violate(n, RuleSeq, "the aggregator read seq %d after seq %d of the same boot", seq, n.aggSeq)
		}
		a.lastSeq = seq
		if a.boot >= n.aggInc { // not a late stream of an older boot
			n.aggSeq, n.aggInc = seq, a.boot
		}
		ch, changed, err := s.agg.tr.BeatV2(a.id, &s.hb, tracker.BeatInfo{Seq: uint64(seq)}, s.nowT)
		if err != nil {
			s.violate(n, RuleRejected, "tracker.BeatV2: %v", err)
			return
		}
		if changed {
			s.onChange(ch)
		}
		ack := seq
		if h := s.c.hooks; h != nil && h.ackSeq != nil {
			ack = h.ackSeq(int(n.idx), seq)
		}
		s.downSend(n, msgAck, a.sgen, ack)
	}
	s.received += uint64(k)
	if s.c.TraceBeats {
		s.tr.begin(s.now, "agg").str(" recv ").str(string(n.id)).str(" seq=").int(int64(upto)).end()
	}
	s.credit(n, a, k*uint32(s.c.frameSize))
}

// aggRead reads k lines of a's stream into the tracker and returns window
// credit to the sender, as yamux does, once half the window was consumed.
func (s *sim) aggRead(n *node, a *astream, k uint32) {
	// Every node reports the same chain (one head per epoch) under its own
	// nickname. One shared heartbeat, relabelled per line, keeps this
	// memory hot; the tracker keeps no reference into it.
	s.epochHead()
	s.hb.Nickname = string(a.id)
	for range k {
		ch, changed, err := s.agg.tr.Beat(a.id, &s.hb, s.nowT)
		if err != nil {
			s.violate(n, RuleRejected, "tracker.Beat: %v", err)
			return
		}
		if changed {
			s.onChange(ch)
		}
	}
	s.received += uint64(k)
	if s.c.TraceBeats {
		s.tr.begin(s.now, "agg").str(" recv ").str(string(n.id)).str(" lines=").int(int64(k)).end()
	}
	s.credit(n, a, k*uint32(s.c.lineSize))
}

// credit records that the aggregator read size bytes of a's stream now and
// returns window credit to the sender, as yamux does, once half the window
// was consumed.
func (s *sim) credit(n *node, a *astream, size uint32) {
	a.lastRead = s.now
	a.consumed += size
	if a.consumed >= uint32(s.c.net.SendWindow/2) {
		s.downSend(n, msgCredit, a.sgen, a.consumed)
		a.consumed = 0
	}
}

// epochHead moves the shared heartbeat to the current epoch's head.
func (s *sim) epochHead() {
	if s.now >= s.epochEnd {
		e := (s.now - s.start) / int64(epoch)
		s.hb.Height = uint64(e) + heightBase
		s.hb.Head = s.head(s.hb.Height)
		s.epochEnd = s.start + (e+1)*int64(epoch)
	}
}

// aggEnd runs the handler's end of a's stream: graceful on a clean EOF.
func (s *sim) aggEnd(n *node, a *astream, graceful bool) {
	a.open, a.closing, a.unread = false, false, 0
	ch, changed := s.agg.tr.StreamEnded(n.id, graceful, s.nowT)
	t := s.tr.begin(s.now, "agg").str(" end ").str(string(n.id)).str(" stream=").int(int64(a.sgen))
	if graceful {
		t.str(" eof")
	} else {
		t.str(" reset")
	}
	t.end()
	if changed {
		s.onChange(ch)
	}
}

// onIdle is the read deadline of a stream: no line for IdleTimeout resets
// it. A stalled handler is not reading, so no deadline runs; resume re-arms.
func (s *sim) onIdle(ev event) {
	a := &s.agg.st[ev.node]
	if !s.agg.up || !a.open || a.sgen != ev.gen || a.idleSeq != ev.arg || s.agg.stall > 0 {
		return
	}
	n := &s.nodes[ev.node]
	deadline := a.lastRead + int64(s.idleTimeout(n))
	if s.now < deadline {
		s.q.push(deadline-s.now, ev)
		return
	}
	s.tr.begin(s.now, "agg").str(" idle-timeout ").str(string(n.id)).end()
	sgen := a.sgen
	s.aggEnd(n, a, false)
	s.downSend(n, msgReset, sgen, 0)
}

// aggResume reads what piled up during a stall, then the pending EOFs,
// and re-arms the read deadlines.
func (s *sim) aggResume() {
	if !s.agg.up {
		return
	}
	for i := range s.agg.st {
		a := &s.agg.st[i]
		if !a.open {
			continue
		}
		n := &s.nodes[i]
		if a.unread > 0 {
			k := a.unread
			a.unread = 0
			if a.v2 {
				s.aggReadV2(n, a, a.upto, k)
			} else {
				s.aggRead(n, a, k)
			}
		}
		a.lastRead = s.now
		if a.closing {
			s.aggEnd(n, a, true)
			continue
		}
		a.idleSeq++
		s.q.push(int64(s.idleTimeout(n)), event{node: n.idx, kind: evIdle, gen: a.sgen, arg: a.idleSeq})
	}
}

// aggResetAll resets every open stream at once; connections stay up.
func (s *sim) aggResetAll() {
	if !s.agg.up {
		return
	}
	for i := range s.agg.st {
		if a := &s.agg.st[i]; a.open {
			sgen, imp := a.sgen, a.imp
			s.aggEnd(&s.nodes[i], a, false)
			if imp {
				s.impostorLost(&s.nodes[i])
			} else {
				s.downSend(&s.nodes[i], msgReset, sgen, 0)
			}
		}
	}
}

func (s *sim) onSweep() {
	if s.agg.up {
		was, _ := s.agg.tr.Disrupted()
		s.changes = s.agg.tr.Sweep(s.nowT, s.changes[:0])
		for _, ch := range s.changes {
			s.onChange(ch)
			if s.err != nil {
				return
			}
		}
		// The tracker's disruption guard, traced once at each end.
		if on, _ := s.agg.tr.Disrupted(); on != was {
			if on {
				s.disruptions++
				s.tr.begin(s.now, "agg").str(" disrupted").end()
			} else {
				s.tr.begin(s.now, "agg").str(" disruption-over").end()
			}
		}
	}
	s.q.push(int64(s.c.net.SweepEvery), event{kind: evSweep})
}

// onChange traces a tracker change, keeps the Up count, and checks that no
// node turns Suspect or Down while it beats normally.
func (s *sim) onChange(ch tracker.Change) {
	if isThrowaway(ch.Peer) {
		s.tr.begin(s.now, "agg").str(" ").str(string(ch.Peer)).str(" ").str(ch.From.String()).str(">").str(ch.To.String()).end()
		return
	}
	if ch.From == tracker.Up {
		s.up--
	}
	if ch.To == tracker.Up {
		s.up++
		s.watch()
	}
	n := &s.nodes[nodeIndex(ch.Peer)]
	s.tr.begin(s.now, "agg").str(" ").str(string(n.id)).str(" ").str(ch.From.String()).str(">").str(ch.To.String()).end()
	s.verdict(n, ch)
	if s.c.newcomer && int(n.idx) == len(s.nodes)-1 && ch.To == tracker.Up && s.newcomerUp == 0 {
		s.newcomerUp = s.now
	}
	if (ch.To == tracker.Suspect || ch.To == tracker.Down) && s.beatsNormally(n) {
		s.violate(n, RuleDownWhileBeating, "the tracker turned it %s although it has been Beating since +%s with no fault on its path",
			ch.To, time.Duration(n.beatingSince-s.start))
	}
}

// verdict counts a tracker change to Suspect or Down, as false when the
// node was healthy (see Report.FalseSuspects), and measures the detection
// of a crash: the time from the crash to the node's Down.
func (s *sim) verdict(n *node, ch tracker.Change) {
	if ch.To != tracker.Suspect && ch.To != tracker.Down {
		return
	}
	healthy := s.healthy(n)
	if ch.To == tracker.Suspect {
		s.suspects++
		if healthy {
			s.falseSuspect++
		}
		return
	}
	s.downs++
	if healthy {
		s.falseDown++
	}
	if n.m == nil && n.crashAt != 0 {
		d := time.Duration(s.now - n.crashAt)
		n.crashAt = 0
		s.detections = append(s.detections, d)
		if nd, ok := s.agg.tr.Node(n.id); ok {
			if b := s.c.detectionBound(nd.Period); d > b {
				if s.lateDetections == 0 {
					s.lateDetail = fmt.Sprintf("%s Down %s after its crash, bound %s (period %s)", n.id, d, b, nd.Period)
				}
				s.lateDetections++
			}
		}
	}
}

// healthy reports whether n is alive and reachable and has been for a
// while: its process runs and is not frozen, no fault is in force on its
// path or on the aggregator, and none ended within the liveness bound. A
// reset storm leaves every node healthy.
func (s *sim) healthy(n *node) bool {
	recent := s.now - int64(s.c.liveness)
	return n.m != nil && !n.paused && n.active == 0 && n.blackholed == 0 && n.crashed == 0 &&
		s.globalActive == 0 && n.quiet <= recent && s.silenceQuiet <= recent
}

// detectionBound is the longest the tracker may take to mark Down a node
// of the given learned period that crashed: the crash resets its stream,
// so the reconnect allowance (plus one period) shifts both thresholds;
// then Down comes DownAfter-SuspectAfter of its period later, at the next
// sweep, plus the slowest delivery of its last beat or of the reset.
func (c *config) detectionBound(period time.Duration) time.Duration {
	tc := &c.tracker
	scale := func(d time.Duration) time.Duration {
		return time.Duration(float64(d) * float64(period) / float64(tc.ExpectedPeriod))
	}
	sus, down := scale(tc.SuspectAfter), scale(tc.DownAfter)
	return c.net.MaxLatency + c.net.Jitter + max(down, tc.ReconnectAllowance+period+down-sus) + c.net.SweepEvery
}
