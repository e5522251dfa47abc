package tracker

import (
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// State is what the aggregator believes about a node.
type State uint8

// The node states. The zero value, Joining, is a node whose stream is open
// but whose first heartbeat has not arrived yet; it is also the From of the
// first Change of every node.
const (
	// Joining: a stream is open (StreamOpened) but no heartbeat arrived yet.
	// A Joining node holds a MaxNodes slot but is in no consensus count, and
	// it is forgotten when its last stream ends without a heartbeat.
	Joining State = iota
	// Up: beating; silent for at most its Suspect threshold (SuspectAfter
	// scaled to the node's own period, or its reconnect allowance).
	Up
	// Suspect: silent for strictly longer than its Suspect threshold.
	Suspect
	// Down: silent for strictly longer than its Down threshold (DownAfter
	// scaled to the node's own period), and the tracker is not disrupted.
	Down
	// Left: its last stream ended with a graceful EOF: it left on purpose,
	// which is not an alert.
	Left

	numStates
)

var stateNames = [numStates]string{"joining", "up", "suspect", "down", "left"}

// String returns the lower-case name used in the HTTP API and in metric
// labels: "joining", "up", "suspect", "down", "left".
func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// States lists every State in declaration order (Joining first), for callers
// that export one value per state and must not miss one.
func States() []State {
	return []State{Joining, Up, Suspect, Down, Left}
}

// StreamState is the state of a node's heartbeat stream(s) as the stream
// handler reported them through StreamOpened and StreamEnded.
type StreamState uint8

// The stream states.
const (
	// StreamNone: no stream was ever reported for this node (the simulation
	// may call Beat without StreamOpened).
	StreamNone StreamState = iota
	// StreamOpen: at least one stream is open.
	StreamOpen
	// StreamClosed: the last stream ended with a graceful EOF.
	StreamClosed
	// StreamReset: the last stream ended any other way (reset, error,
	// idle timeout, superseded...).
	StreamReset

	numStreamStates
)

var streamNames = [numStreamStates]string{"none", "open", "closed", "reset"}

// String returns "none", "open", "closed" or "reset".
func (s StreamState) String() string {
	if s < numStreamStates {
		return streamNames[s]
	}
	return fmt.Sprintf("stream(%d)", uint8(s))
}

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
	// until a first interval is measured. Its Suspect and Down thresholds
	// are SuspectAfter and DownAfter scaled by Period/ExpectedPeriod.
	Period time.Duration
	// DuplicateIdentity is true while the node's streams keep superseding
	// each other (more than Config.DuplicateThreshold within
	// Config.DuplicateWindow): two senders share its key. It clears after a
	// whole DuplicateWindow without a supersede.
	DuplicateIdentity bool
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
