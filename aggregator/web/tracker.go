package web

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
)

// TrackerSource adapts a *tracker.Tracker to Source: the tracker's
// disruption mode becomes Summary.Disrupted, a node flagged
// DuplicateIdentity gets the flag FlagDuplicateIdentity, and its learned
// period is Node.PeriodMs, and the RTT a v2 sender reports is Node.RTTMs
// (Unknown for v1 nodes). The tracker knows no 24 h uptime: it reads as
// Unknown, and the Dashboard fills it from its Uptimes (WithUptimes).
//
// It caches the text form of each peer id (base58 costs more than the
// rest of the conversion) and forgets the ids the tracker no longer has, so
// its memory follows the tracker's (bounded by MaxNodes).
func TrackerSource(t *tracker.Tracker) Source {
	return &trackerSource{t: t, ids: make(map[peer.ID]string)}
}

// FlagDuplicateIdentity marks a node whose streams keep superseding each
// other: two senders share its key.
const FlagDuplicateIdentity = "duplicate_identity"

// dupFlags is shared by every flagged node; nothing appends to it.
var dupFlags = []string{FlagDuplicateIdentity}

type trackerSource struct {
	t *tracker.Tracker

	mu   sync.Mutex // one refresh at a time uses buf and ids
	buf  []tracker.Node
	ids  map[peer.ID]string
	seen map[peer.ID]struct{}
}

func (s *trackerSource) Nodes(dst []Node) []Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = s.t.Nodes(s.buf[:0])
	if s.seen == nil {
		s.seen = make(map[peer.ID]struct{}, len(s.buf))
	}
	clear(s.seen)
	for i := range s.buf {
		n := &s.buf[i]
		id, ok := s.ids[n.Peer]
		if !ok {
			id = n.Peer.String()
			s.ids[n.Peer] = id
		}
		s.seen[n.Peer] = struct{}{}
		var flags []string
		if n.DuplicateIdentity {
			flags = dupFlags
		}
		rtt := float64(Unknown)
		if n.RTT > 0 { // reported by v2 senders in each Beat
			rtt = float64(n.RTT) / float64(time.Millisecond)
		}
		dst = append(dst, Node{
			Peer:       id,
			Nickname:   n.Nickname,
			State:      n.State.String(),
			SinceMs:    ms(n.Since),
			Head:       n.Head,
			Height:     n.Height,
			LastSeenMs: ms(n.LastSeen),
			Miner:      n.MinerAddress,
			PeriodMs:   n.Period.Milliseconds(),
			RTTMs:      rtt,
			Uptime24h:  Unknown,
			Flags:      flags,
		})
	}
	if len(s.ids) > len(s.seen) {
		for id := range s.ids {
			if _, ok := s.seen[id]; !ok {
				delete(s.ids, id)
			}
		}
	}
	// Drop the references to node strings until the next refresh.
	clear(s.buf)
	return dst
}

func (s *trackerSource) Summary() Summary {
	sum := s.t.Summary()
	out := Summary{
		Nodes:           sum.Nodes,
		States:          make(map[string]int, len(sum.ByState)),
		ConsensusHead:   sum.ConsensusHead,
		ConsensusHeight: sum.ConsensusHeight,
		InConsensus:     sum.InConsensus,
		InDispute:       sum.InDispute,
		Disrupted:       &sum.Disrupted,
	}
	for _, st := range tracker.States() {
		out.States[st.String()] = sum.ByState[st]
	}
	return out
}
