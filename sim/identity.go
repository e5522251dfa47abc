package sim

import (
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/fsm"
)

// Identity faults: a second sender with a node's key (Impostor) and a flood
// of throwaway identities (SybilFill). Both act on the aggregator's side of
// the model; the honest nodes are the real machines as everywhere else.

// The impostor's steps (event.sub of evImpostor).
const (
	impOpen uint8 = iota // open a stream (superseding the node's own)
	impBeat              // write a heartbeat on the impostor's stream (arg: its stream)
)

// impostorBegin starts (on the first of overlapping faults) n's impostor.
func (s *sim) impostorBegin(n *node) {
	n.impostors++
	if n.impostors > 1 {
		return
	}
	n.impGen++
	n.impSince, n.flaggedAt = s.now, 0
	s.dupWatch = append(s.dupWatch, n.idx)
	s.q.push(s.lat(n), event{node: n.idx, kind: evImpostor, sub: impOpen, gen: n.impGen})
}

// impostorEnd kills n's impostor: its stream, if it holds one, is reset.
func (s *sim) impostorEnd(n *node) {
	n.impostors--
	if n.impostors > 0 {
		return
	}
	n.impGen++
	if a := &s.agg.st[n.idx]; s.agg.up && a.open && a.imp {
		s.aggEnd(n, a, false)
	}
}

// impostorLost: the aggregator reset the impostor's stream (superseded, or
// reset with every stream). It opens another within one BeatPeriod, as a
// sender does after losing a proven stream.
func (s *sim) impostorLost(n *node) {
	if n.impostors == 0 {
		return
	}
	period := int64(s.c.periodFor(n.idx))
	s.q.push(2*s.lat(n)+s.rng.Int64N(period), event{node: n.idx, kind: evImpostor, sub: impOpen, gen: n.impGen})
}

func (s *sim) onImpostor(ev event) {
	n := &s.nodes[ev.node]
	if n.impostors == 0 || ev.gen != n.impGen {
		return // killed since
	}
	a := &s.agg.st[n.idx]
	period := int64(s.c.periodFor(n.idx))
	switch ev.sub {
	case impOpen:
		if !s.agg.up {
			s.q.push(int64(s.c.sender.Backoff.Base), ev) // refused: try again later
			return
		}
		if a.open && a.imp {
			return
		}
		if a.open {
			old := a.sgen
			s.aggEnd(n, a, false)
			s.downSend(n, msgReset, old, 0)
			s.superseded(n)
		}
		if err := s.agg.tr.StreamOpened(n.id, s.nowT); err != nil {
			s.tr.begin(s.now, "agg").str(" refuse ").str(string(n.id)).str(" impostor error=").quote(err.Error()).end()
			s.q.push(int64(s.c.sender.Backoff.Base), ev)
			return
		}
		// Stale reads and deadlines of the node's own streams find a
		// stream that is not theirs: same sgen (older ones are dropped),
		// another idleSeq, imp set.
		a.open, a.imp, a.closing, a.unread, a.consumed = true, true, false, 0, 0
		a.idleSeq++
		a.lastRead = s.now
		n.impStream++
		s.tr.begin(s.now, "agg").str(" open ").str(string(n.id)).str(" impostor").end()
		s.q.push(0, event{node: n.idx, kind: evImpostor, sub: impBeat, gen: n.impGen, arg: n.impStream})
	case impBeat:
		if !a.open || !a.imp || ev.arg != n.impStream || !s.agg.up {
			return // superseded: impostorLost reopens
		}
		if s.agg.stall == 0 {
			s.hb.Nickname = string(n.id)
			ch, changed, err := s.agg.tr.Beat(n.id, &s.hb, s.nowT)
			if err != nil {
				s.violate(n, RuleRejected, "tracker.Beat (impostor): %v", err)
				return
			}
			if changed {
				s.onChange(ch)
			}
			a.lastRead = s.now
		}
		s.q.push(period, ev)
	}
}

// superseded tells the tracker that a newer stream of n replaced an open
// one, as the aggregator's handler does, and notes when the tracker first
// flags the duplicate identity.
func (s *sim) superseded(n *node) {
	if !s.agg.tr.Superseded(n.id, s.nowT) {
		return
	}
	s.tr.begin(s.now, "agg").str(" duplicate-identity ").str(string(n.id)).end()
	if n.flaggedAt == 0 {
		n.flaggedAt = s.now
	}
}

// throwawayPrefix starts the peer ids of SybilFill's identities; node ids
// start with "n".
const throwawayPrefix = 'x'

func isThrowaway(id peer.ID) bool { return len(id) > 0 && id[0] == throwawayPrefix }

// sybilFill opens streams under fresh identities until the tracker refuses
// one: each beats once and is reset.
func (s *sim) sybilFill() {
	if !s.agg.up {
		return
	}
	k := 0
	for {
		id := peer.ID(fmt.Sprintf("%c%05d", throwawayPrefix, s.throwaways))
		if err := s.agg.tr.StreamOpened(id, s.nowT); err != nil {
			break
		}
		s.throwaways++
		k++
		s.hb.Nickname = string(id)
		if ch, changed, err := s.agg.tr.Beat(id, &s.hb, s.nowT); err != nil {
			s.violate(nil, RuleRejected, "tracker.Beat (throwaway): %v", err)
			return
		} else if changed {
			s.onChange(ch)
		}
		if ch, changed := s.agg.tr.StreamEnded(id, false, s.nowT); changed {
			s.onChange(ch)
		}
	}
	s.fillAt = s.now
	s.tr.begin(s.now, "agg").str(" sybil-fill identities=").int(int64(k)).end()
}

// sybilBound is how long after a fill an honest newcomer must be Up: the
// throwaways' Down (judged with MaxPeriod, having beaten once), the
// retention, the newcomer's next retry, a handshake and a sweep.
func (c *config) sybilBound() time.Duration {
	maxLat := c.net.MaxLatency + c.net.Jitter
	retry := c.sender.Backoff.Delay(1, 1)
	if c.v2(int32(c.Nodes - 1)) {
		// A full aggregator answers a v2 newcomer with GoAway, whose
		// retry-after is drawn from the pacing window.
		retry = max(retry, c.sender.Backoff.After(c.pacing.PacingWindow, c.sender.BeatPeriod, fsm.MaxRetryAfter, 1))
	}
	return c.detectionBound(c.tracker.MaxPeriod) + c.tracker.DownRetention +
		retry + 6*maxLat + c.net.SweepEvery + max(c.sender.BeatPeriod, c.slowPeriod)
}
