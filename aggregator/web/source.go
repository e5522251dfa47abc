package web

import (
	"context"
	"errors"
	"slices"
	"time"
)

// Source is what the dashboard reads: the fleet as it is now. The
// aggregator implements it through TrackerSource; a test or another
// aggregator can implement it directly. Both methods are called from the
// dashboard's refresh goroutine only, never on the ingest path, and must be
// safe for concurrent use with the aggregator's own work.
type Source interface {
	// Nodes appends one record per known node to dst and returns the
	// extended slice, in any order. Node.Peer must be unique and non-empty.
	Nodes(dst []Node) []Node
	// Summary returns the counts the dashboard's header shows.
	Summary() Summary
}

// History is the optional per-node history the store keeps (see the store
// package): state flips and height samples in a time range. The dashboard
// shows "no history" when none is configured (WithHistory).
type History interface {
	// NodeHistory returns peer's flips and height samples with from <= At
	// < to, oldest first. It returns ErrUnknownNode (wrapped or not) when
	// the store never saw peer. The dashboard bounds what it forwards
	// (MaxHistoryPoints each), so an implementation may return more.
	NodeHistory(ctx context.Context, peer string, from, to time.Time) (NodeHistory, error)
}

// Uptimes is the optional source of the node table's uptime column: the
// store's uptime of every node (StoreUptimes). The dashboard reads it at
// most once per UptimeInterval, on a goroutine of its own, so a slow
// database never holds up a refresh.
type Uptimes interface {
	// Uptimes returns, by peer id (text), the fraction in [0, 1] of
	// [from, to) each node spent Up, by the store's definition
	// (store.Backend.Uptime). A node whose state is unknown for the whole
	// range is left out: the page shows it as Unknown, not as 0%.
	Uptimes(ctx context.Context, from, to time.Time) (map[string]float64, error)
}

// ErrUnknownNode is what a History returns for a peer it does not know;
// the dashboard answers 404.
var ErrUnknownNode = errors.New("web: unknown node")

// Node is one row of the dashboard's node table, as sent to the page (JSON
// keys in the tags). Times are Unix milliseconds on the aggregator's
// clock, 0 when unknown, so that the page computes "time in state" and
// "last seen" against the server's now (sent with every event).
type Node struct {
	// Peer is the node's libp2p peer id in text form: its identity.
	Peer string `json:"peer"`
	// Nickname is the node-supplied label; untrusted text.
	Nickname string `json:"nickname"`
	// State is the tracker's state name: "joining", "up", "suspect",
	// "down", "left" (and any state a newer tracker adds).
	State string `json:"state"`
	// SinceMs is when the node entered State.
	SinceMs int64 `json:"since_ms"`
	// Head and Height are the node's last reported chain head (untrusted
	// text) and its height.
	Head   string `json:"head"`
	Height uint64 `json:"height"`
	// LastSeenMs is the time of the last heartbeat; 0 before the first.
	LastSeenMs int64 `json:"last_seen_ms"`
	// Miner is the node-supplied miner address; untrusted text.
	Miner string `json:"miner,omitempty"`
	// PeriodMs is the node's beat period as the aggregator learned it; 0
	// when unknown.
	PeriodMs int64 `json:"period_ms,omitempty"`
	// RTTMs is the round-trip time in milliseconds; negative when unknown
	// (the v1 protocol does not measure it).
	RTTMs float64 `json:"rtt_ms"`
	// Uptime24h is the fraction of the UptimeWindow (24 h) before the last
	// read of the Uptimes the node was Up, in [0, 1], rounded to 0.001;
	// negative (Unknown) without Uptimes, before the first read, or for a
	// node with no known state in the window. A Source may set it itself:
	// the dashboard fills only the nodes the Source leaves Unknown.
	Uptime24h float64 `json:"uptime_24h"`
	// Flags are fixed, aggregator-made markers such as
	// "duplicate_identity"; never node-supplied text.
	Flags []string `json:"flags,omitempty"`
}

// Unknown is the value of Node.RTTMs and Node.Uptime24h when the source
// does not know them.
const Unknown = -1

// equal reports whether a and b would render the same, ignoring
// LastSeenMs (see Dashboard's resolution rule).
func (a *Node) equalButLastSeen(b *Node) bool {
	return a.Peer == b.Peer && a.Nickname == b.Nickname && a.State == b.State &&
		a.SinceMs == b.SinceMs && a.Head == b.Head && a.Height == b.Height &&
		a.Miner == b.Miner && a.PeriodMs == b.PeriodMs && a.RTTMs == b.RTTMs && a.Uptime24h == b.Uptime24h &&
		slices.Equal(a.Flags, b.Flags)
}

// Summary is the dashboard's header.
type Summary struct {
	// Nodes is the number of tracked nodes, every state included.
	Nodes int `json:"nodes"`
	// States counts the nodes by state name.
	States map[string]int `json:"states"`
	// ConsensusHead and ConsensusHeight name the largest group of Up nodes
	// sharing a head and height; "" and 0 when no node is Up.
	ConsensusHead   string `json:"consensus_head"`
	ConsensusHeight uint64 `json:"consensus_height"`
	// InConsensus and InDispute split the Up nodes.
	InConsensus int `json:"in_consensus"`
	InDispute   int `json:"in_dispute"`
	// Disrupted is the aggregator's disruption mode (the tracker holds
	// Down transitions because most of the fleet fell silent at once); nil
	// when the aggregator has no such mode.
	Disrupted *bool `json:"disrupted,omitempty"`
}

// NodeHistory is one node's history in a range, oldest first.
type NodeHistory struct {
	Flips   []Flip         `json:"flips"`
	Heights []HeightSample `json:"heights"`
	// Truncated is set by the dashboard when it cut either list to
	// MaxHistoryPoints.
	Truncated bool `json:"truncated,omitempty"`
}

// Flip is one state transition.
type Flip struct {
	AtMs int64  `json:"at_ms"`
	From string `json:"from"`
	To   string `json:"to"`
	// Reason is a fixed, aggregator-made word ("silence", "eof", "beat"...);
	// "" when unknown.
	Reason string `json:"reason,omitempty"`
}

// HeightSample is one (downsampled) height observation.
type HeightSample struct {
	AtMs   int64  `json:"at_ms"`
	Height uint64 `json:"height"`
}

// ms converts t to Unix milliseconds; the zero time is 0.
func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}
