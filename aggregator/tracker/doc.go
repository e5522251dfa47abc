// Package tracker is the aggregator's record of every node that sends it
// heartbeats: per node its labels, head, height, times, beat count, stream
// state and liveness state, plus the consensus view over all nodes.
//
// # Purity
//
// The tracker does no I/O, starts no goroutines, reads no clock and does not
// log. Every method that depends on time takes now from the caller: the
// aggregator passes its injectable clock's time, the simulation passes
// virtual time. Times are stored as offsets from the start passed to New,
// computed with time.Time.Sub, so a monotonic reading in now is honoured.
// Changes are returned as values (Change) for the caller to log and alert on.
//
// # Concurrency
//
// A Tracker is safe for concurrent use. Nodes are spread over 64 shards by a
// seeded hash of the peer id, each shard with its own mutex, so many streams
// can call Beat in parallel (the 2018 aggregator had one mutex over one
// map). Sweep, Nodes and Summary visit the shards one after the other; each
// node is seen exactly once, in a consistent state. A Beat for a known peer
// whose strings did not change does not allocate.
//
// # Identity
//
// A node is its authenticated libp2p peer id, the id the caller got from the
// secure channel. The nickname and miner address in a heartbeat are labels:
// a node that claims another's nickname only relabels its own record.
//
// # States
//
//	Joining  a stream is open (StreamOpened) but no heartbeat arrived yet
//	Up       beating: silent for at most SuspectAfter
//	Suspect  silent for strictly longer than SuspectAfter (default 2x ExpectedPeriod)
//	Down     silent for strictly longer than DownAfter (default 5x ExpectedPeriod)
//	Left     its last stream ended with a graceful EOF: left on purpose, no alert
//
// The thresholds are strict: with SuspectAfter 6s, a node last seen at T is
// still Up in a Sweep at T+6s and Suspect in a Sweep at T+6s+1ns; the same
// holds for DownAfter. Silence detection happens only in Sweep, which the
// caller runs periodically; one Sweep that finds an Up node past DownAfter
// reports a single Up -> Down change. No node turns Suspect or Down before
// start+StartupGrace (at exactly start+StartupGrace it may): after a restart
// the aggregator cannot tell a silent node from one that has not
// reconnected yet. Any heartbeat makes a node Up, whatever its state.
//
// A graceful EOF on a node's last open stream makes it Left. A reset or an
// error does not change the state (the sender reconnects; silence detection
// decides). Streams are counted per node, so when a newer stream supersedes
// an older one, the older one's end changes nothing. A node whose last stream
// ends before its first heartbeat is forgotten: it never was a node.
//
// # Limit and eviction
//
// At most Config.MaxNodes nodes (every state, Joining included) are tracked.
// When a peer the tracker does not know arrives (Beat or StreamOpened) and
// the tracker is full, the Left node with no open stream that left first
// (ties: smallest peer id) is evicted to make room: it said goodbye, so
// dropping it loses only history. If there is none, the newcomer gets
// ErrFull; known peers are never refused. Down and Suspect nodes are never
// evicted, because they are what alerts watch and a flood of fresh
// identities must not make an outage disappear; an operator drops a retired
// node with Forget. Eviction scans all nodes (O(n)), but only when the
// tracker is full and holds at least one Left node.
//
// # Consensus
//
// The 2018 aggregator's meaning, with its bugs fixed. Up nodes are grouped by
// the pair (head, height), heads compared as opaque strings (a node that
// reports a known head with another height disagrees with it). The
// consensus group is the largest group; ties are broken by the greatest
// height, then by the lexicographically smallest head, so the result never
// depends on map order. InConsensus is its size, InDispute the number of the
// other Up nodes. Suspect, Down, Left and Joining nodes are in neither. With
// no Up node (no nodes at all, or all of them Down), ConsensusHead is "",
// ConsensusHeight 0, InConsensus 0 and InDispute 0. A single Up node is in
// consensus with itself. Summary computes all of it in one O(n) pass.
//
// # Contract
//
// The stream handler calls, per stream: StreamOpened (refuse the stream on
// ErrFull), Beat for every decoded line (a Change is logged), StreamEnded
// when the stream ends (graceful only on a clean EOF); and Sweep on a
// ticker, logging the changes it returns. Summary feeds the Prometheus
// collector; Nodes and Summary feed the HTTP API.
package tracker
