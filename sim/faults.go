package sim

import (
	"time"

	"github.com/p2pbeat/heartbeat/fsm"
)

// onFault begins (ev.sub 0) or heals (ev.sub 1) script action ev.arg, and
// records a sample right after, so that the counts over time show faults
// shorter than SampleEvery.
func (s *sim) onFault(ev event) {
	a := &s.script[ev.arg]
	begin := ev.sub == 0
	t := s.tr.begin(s.now, "fault")
	if begin {
		t.str(" begin ")
	} else {
		t.str(" heal ")
	}
	t.str(a.String()).end()
	if begin && a.Fault != AggregatorResetAll {
		s.q.push(int64(a.For), event{kind: evFault, sub: 1, arg: ev.arg})
	}

	switch a.Fault {
	case AggregatorCrash, AggregatorShutdown:
		if begin {
			s.globalActive++
			s.agg.down++
			if s.agg.down == 1 {
				s.aggStop(a.Fault == AggregatorShutdown)
			}
			s.sample()
			return
		}
		s.globalActive--
		s.globalQuiet = max(s.globalQuiet, s.now)
		s.silenceQuiet = max(s.silenceQuiet, s.now)
		s.agg.down--
		if s.agg.down == 0 {
			s.aggStart()
			s.healedFault(a, true)
			s.sample()
			return
		}
	case AggregatorStall:
		if begin {
			s.globalActive++
			s.agg.stall++
			if s.agg.stall == 1 && s.agg.up {
				s.watchStall()
			}
			s.sample()
			return
		}
		s.globalActive--
		s.globalQuiet = max(s.globalQuiet, s.now)
		s.silenceQuiet = max(s.silenceQuiet, s.now)
		s.agg.stall--
		if s.agg.stall == 0 {
			for i := range s.nodes {
				s.nodes[i].stallWatch = false
			}
			s.aggResume()
		}
	case AggregatorResetAll:
		s.aggResetAll()
		s.globalQuiet = max(s.globalQuiet, s.now)
	case LatencySpike:
		d := int64(a.Extra)
		if !begin {
			d = -d
		}
		if a.Nodes == nil {
			s.extraLat += d
			if begin {
				s.globalActive++
			} else {
				s.globalActive--
				s.globalQuiet = max(s.globalQuiet, s.now+int64(a.Extra))
				s.silenceQuiet = max(s.silenceQuiet, s.now+int64(a.Extra))
			}
		}
		s.forNodes(a, func(n *node) {
			if a.Nodes != nil {
				n.lat += d
				s.disturb(n, begin, a.Extra)
			}
			if begin && s.pathBroken(n) {
				s.scheduleKeepalive(n)
			}
		})
	case Partition:
		s.forNodes(a, func(n *node) {
			s.disturb(n, begin, 0)
			if begin {
				n.partitioned++
				if n.partitioned == 1 {
					s.scheduleKeepalive(n)
				}
				return
			}
			n.partitioned--
			if n.partitioned == 0 {
				s.releaseHeld(n)
			}
		})
	case NodeCrash:
		s.forNodes(a, func(n *node) {
			s.disturb(n, begin, 0)
			if begin {
				s.crash(n)
			} else {
				s.restart(n)
			}
		})
	case NodePause:
		s.forNodes(a, func(n *node) {
			s.disturb(n, begin, 0)
			if begin {
				n.pauseDepth++
				n.pausedUntil = max(n.pausedUntil, s.now+int64(a.For))
				n.pausedSinceFail = true
				n.paused = true
				if n.pauseDepth == 1 {
					s.pausedN++
					s.scheduleKeepalive(n)
				}
				return
			}
			n.pauseDepth--
			if n.pauseDepth == 0 {
				// Events that arrived meanwhile were moved to pausedUntil,
				// now; they were pushed after this heal, so they run after it.
				n.paused = false
				s.pausedN--
			}
		})
	case Impostor:
		s.forNodes(a, func(n *node) {
			s.disturb(n, begin, 0)
			if begin {
				s.impostorBegin(n)
			} else {
				s.impostorEnd(n)
			}
		})
	case SybilFill:
		if begin {
			s.sybilFill()
		}
	case DialBlackhole:
		s.forNodes(a, func(n *node) {
			if begin {
				n.blackholed++
			} else {
				n.blackholed--
			}
		})
	}
	if !begin || a.Fault == AggregatorResetAll {
		s.healedFault(a, false)
	}
	s.sample()
}

// watchStall starts measuring how long the senders Beating on a proven
// stream take to notice the stall that begins now (Report.StallV2).
func (s *sim) watchStall() {
	s.stallAt = s.now
	for i := range s.nodes {
		n := &s.nodes[i]
		if n.m == nil || n.m.State() != fsm.Beating || !n.proven {
			continue
		}
		n.stallWatch = true
		if n.v2 {
			s.watchV2++
		} else {
			s.watchV1++
		}
	}
}

// stallNoticed records that n, watched since a stall began, dropped its
// stream.
func (s *sim) stallNoticed(n *node) {
	n.stallWatch = false
	if n.v2 {
		s.stallV2 = append(s.stallV2, time.Duration(s.now-s.stallAt))
	} else {
		s.stallV1++
	}
}

// forNodes calls f for each node a selects (all when a.Nodes is nil).
func (s *sim) forNodes(a *Action, f func(*node)) {
	if a.Nodes == nil {
		for i := range s.nodes {
			f(&s.nodes[i])
		}
		return
	}
	for _, i := range a.Nodes {
		f(&s.nodes[i])
	}
}

// disturb records that a fault on n's path begins or ends; its effects
// last extra longer (the backlog of a latency spike).
func (s *sim) disturb(n *node, begin bool, extra time.Duration) {
	if begin {
		n.active++
		return
	}
	n.active--
	n.quiet = max(n.quiet, s.now+int64(extra))
}
