package tracker

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// The names first, then the page drawn with them (go generate runs a
// file's lines in order).
//go:generate go tool stringer -linecomment -type=State,StreamState,Event
//go:generate go run ../../internal/gendocs -nodes ../../docs/node-states.md

// State is what the aggregator believes about a node. Its String (the
// lower-case name used in the HTTP API and in metric labels) is generated
// by stringer from the line comments.
type State uint8

// The node states. The zero value, Joining, is a node whose stream is open
// but whose first heartbeat has not arrived yet; it is also the From of the
// first Change of every node.
const (
	// Joining: a stream is open (StreamOpened) but no heartbeat arrived yet.
	// A Joining node holds a MaxNodes slot but is in no consensus count, and
	// it is forgotten when its last stream ends without a heartbeat.
	Joining State = iota // joining
	// Up: beating; silent for at most its Suspect threshold (SuspectAfter
	// scaled to the node's own period, or its reconnect allowance).
	Up // up
	// Suspect: silent for strictly longer than its Suspect threshold.
	Suspect // suspect
	// Down: silent for strictly longer than its Down threshold (DownAfter
	// scaled to the node's own period), and the tracker is not disrupted.
	Down // down
	// Left: its last stream ended with a graceful EOF: it left on purpose,
	// which is not an alert.
	Left // left
	// Unknown: known before the aggregator restarted (Restore, from the
	// store), not seen since. It holds a MaxNodes slot, is in no consensus
	// count, and turns Down once the startup grace has passed without a
	// heartbeat, so that a node that died while the aggregator was away
	// alerts again instead of vanishing.
	Unknown // unknown
)

// numStates counts the states. It is an int, not a State, so that stringer
// does not name it.
const numStates = int(Unknown) + 1

// States lists every State in declaration order (Joining first), for callers
// that export one value per state and must not miss one.
func States() []State {
	return []State{Joining, Up, Suspect, Down, Left, Unknown}
}

// StreamState is the state of a node's heartbeat stream(s) as the stream
// handler reported them through StreamOpened and StreamEnded. Its String
// is "none", "open", "closed" or "reset".
type StreamState uint8

// The stream states.
const (
	// StreamNone: no stream was ever reported for this node (the simulation
	// may call Beat without StreamOpened).
	StreamNone StreamState = iota // none
	// StreamOpen: at least one stream is open.
	StreamOpen // open
	// StreamClosed: the last stream ended with a graceful EOF.
	StreamClosed // closed
	// StreamReset: the last stream ended any other way (reset, error,
	// idle timeout, superseded...).
	StreamReset // reset
)

// Change is one node's state transition, as returned by Beat, StreamEnded
// and Sweep. The caller logs it (one line per change) and alerts on it.
type Change struct {
	// Peer is the node's authenticated peer id.
	Peer peer.ID
	// Nickname is the node's label at the time of the change, for logs
	// only; it is never an identity.
	Nickname string
	// From is the previous state; Joining (0) for a node's first change.
	From State
	// To is the new state.
	To State
	// At is the time the tracker observed the change: the now passed to the
	// call that caused it (for Sweep, the sweep's time, not the instant the
	// threshold was crossed).
	At time.Time
}

// Node is a snapshot of one tracked node.
type Node struct {
	// Peer is the authenticated libp2p peer id: the node's identity.
	Peer peer.ID
	// Nickname is the label from the last heartbeat; never an identity.
	Nickname string
	// Head is the last reported head, as opaque text.
	Head string
	// Height is the height of Head as reported.
	Height uint64
	// MinerAddress is the last reported miner address as received: "",
	// "empty" and "<empty>" all mean no address (wire.MinerAddressOf).
	MinerAddress string
	// Genesis is the last reported genesis CID as text, as received (it
	// may not parse as a CID: it is only a label); "" when unknown.
	Genesis string
	// FirstSeen is when the tracker first heard of the node (first stream
	// or first heartbeat), on the caller's clock.
	FirstSeen time.Time
	// LastSeen is the time of the last heartbeat; the zero time if none
	// arrived yet (State Joining).
	LastSeen time.Time
	// Since is when the node entered its current State.
	Since time.Time
	// Beats counts the heartbeats received from this node.
	Beats uint64
	// Streams counts the streams this node opened (StreamOpened calls);
	// Streams-1 is the number of reconnects the aggregator saw.
	Streams uint64
	// State is the node's state as of the last Beat, StreamEnded or Sweep.
	State State
	// Stream is the state of the node's stream(s).
	Stream StreamState
	// Period is the node's beat period as the tracker estimates it: the
	// upper median of its last intervals between heartbeats on one stream,
	// clamped to [Config.MinPeriod, Config.MaxPeriod]; Config.MaxPeriod
	// until two intervals are measured. Its Suspect and Down thresholds
	// are SuspectAfter and DownAfter scaled by Period/ExpectedPeriod.
	Period time.Duration
	// DuplicateIdentity is true while the node's streams keep superseding
	// each other (more than Config.DuplicateThreshold within
	// Config.DuplicateWindow): two senders share its key. It clears after a
	// whole DuplicateWindow without a supersede.
	DuplicateIdentity bool

	// Protocol is the heartbeat protocol version of the node's last
	// heartbeat: 1 or 2 (0 before the first).
	Protocol uint8
	// DeclaredPeriod is true when Period is the one the node declared in
	// its v2 Hello (used as is) rather than learned.
	DeclaredPeriod bool
	// The rest is known for v2 nodes only. BootID is the node's current
	// boot id (zero for v1); BootTime is when the tracker first saw it.
	BootID   [16]byte
	BootTime time.Time
	// Restarts counts Hellos with a boot id other than the previous one.
	Restarts uint64
	// LostBeats counts the beats missing from gaps in Seq within a boot.
	LostBeats uint64
	// RTT is the round trip the node reported in its last Beat (0: none);
	// Skew is the node's clock minus the aggregator's, estimated from that
	// Beat (see BeatInfo).
	RTT, Skew time.Duration
}

// Summary is the aggregate view computed in one O(n) pass over all nodes.
type Summary struct {
	// Nodes is the number of tracked nodes (every state, Joining included).
	Nodes int
	// ByState counts the nodes in each State, indexed by State.
	ByState [numStates]int
	// Connected is the number of nodes with at least one open stream.
	Connected int
	// Beats is the number of heartbeats the tracker accepted since it was
	// created (Forget and eviction do not decrease it): a counter.
	Beats uint64
	// ConsensusHead is the head of the consensus group; "" when no node is
	// Up.
	ConsensusHead string
	// ConsensusHeight is the height of the consensus group; 0 when no node
	// is Up.
	ConsensusHeight uint64
	// InConsensus is the size of the consensus group (Up nodes only).
	InConsensus int
	// InDispute is the number of Up nodes not in the consensus group.
	InDispute int
	// Disrupted is true while the tracker is in disrupted mode (see the
	// package documentation): no node turns Down. DisruptedSince is when
	// the mode began; the zero time when not disrupted.
	Disrupted      bool
	DisruptedSince time.Time
	// DuplicateIdentity is the number of nodes flagged DuplicateIdentity.
	DuplicateIdentity int
}
