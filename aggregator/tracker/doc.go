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
// A Tracker is safe for concurrent use: one mutex guards one map of nodes,
// as in the 2018 aggregator. Sharding it over 64 mutexes saved under 5% of
// the aggregator's CPU per heartbeat end to end over libp2p, so it was
// deleted (docs/benchmarks.md). Sweep, Nodes and Summary see every node
// once, all at one instant. A Beat for a known peer whose strings did not
// change does not allocate.
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
//	Up       beating: silent for at most its Suspect threshold
//	Suspect  silent for strictly longer than its Suspect threshold
//	Down     silent for strictly longer than its Down threshold, not while disrupted
//	Left     its last stream ended with a graceful EOF: left on purpose, no alert
//	Unknown  known before the aggregator restarted (Restore), not seen since;
//	         Down after the startup grace unless it beats
//
// The transitions are data: Table lists every (state, event) row, the
// runtime looks each change up in it, and docs/node-states.md is generated
// from it (`go generate ./...`; a test fails when they disagree).
//
// # Thresholds: each node's own period
//
// Each node's period is learned from its own heartbeats: the upper median
// of its last 8 intervals between two heartbeats on the same stream (a gap
// across a reconnect is no sample), each clamped to [MinPeriod, MaxPeriod]
// (default 1s to 30s for ExpectedPeriod 3s). Until two intervals are
// measured the node is judged with MaxPeriod, so that a 10s sender is not
// Suspect before its third beat, and so that the first interval of a stream,
// short whenever the stream's first beat was read late (a reconnect storm
// delays a new stream's setup by seconds), never sets the period alone. Its Suspect and Down thresholds are
// SuspectAfter and DownAfter scaled by period/ExpectedPeriod: by default 2x
// and 5x its own period, so 3s and 10s senders share one tracker without
// flapping. This is a fixed-factor detector on a robust period estimate,
// not phi accrual (docs/aggregator.md says why).
//
// The thresholds are strict: with a 6s Suspect threshold, a node last seen
// at T is still Up in a Sweep at T+6s and Suspect in a Sweep at T+6s+1ns;
// the same holds for Down. Silence detection happens only in Sweep, which
// the caller runs periodically; one Sweep that finds an Up node past its
// Down threshold reports a single Up -> Down change. No node turns Suspect
// or Down before start+StartupGrace (at exactly start+StartupGrace it
// may): after a restart the aggregator cannot tell a silent node from one
// that has not reconnected yet. Any heartbeat makes a node Up, whatever
// its state.
//
// # Re-admission after a restart
//
// A node known before a restart (Unknown) turns Down in the first Sweep
// past start+StartupGrace, unless the re-admission still goes on: while a
// restored node came Up within the last ReconnectAllowance, the others are
// held Unknown. After a restart every sender reconnects at once, and the
// aggregator admits them at its own pace (handshakes on its CPU, a few
// hundred a second on two cores): 5,000 nodes took 20-35 s on the project's
// machine, past the 15 s grace, and the ones still queued went Down while
// their senders were dialling (docs/benchmarks.md). A sender that failed a
// dial retries within the allowance, so a re-admission that pauses for a
// whole allowance is over, and the nodes still Unknown are Down. The hold
// ends at the latest DisruptionMaxHold after the grace.
//
// # Streams and the reconnect allowance
//
// A graceful EOF on a node's last open stream makes it Left. A reset or an
// error does not change the state: the sender reconnects after its
// ReconnectPeriod, so the node gets a reconnect allowance: it does not turn
// Suspect before the stream's end plus ReconnectAllowance (default 12s, the
// sender's 10s ReconnectPeriod +20% jitter) plus its period, and its Down
// deadline moves by as much. Its next heartbeat ends the allowance. Streams
// are counted per node, so when a newer stream supersedes an older one, the
// older one's end changes nothing. A node whose last stream ends before its
// first heartbeat is forgotten: it never was a node.
//
// # Disruption
//
// When strictly more than DisruptionFraction (default 0.55, the Kubernetes
// node lifecycle controller's unhealthy-zone threshold) of the live nodes
// (Up or Suspect, at least DisruptionMinNodes of them) are silent past
// their Suspect threshold in one Sweep, the fault is most likely the
// aggregator's own (its network cut, a stall), not theirs: the tracker
// enters disrupted mode, in which nodes still turn Suspect but none turns
// Down. Nodes that went Down less than their own Down threshold ago count
// as silent too, so that a fleet cut off over tens of seconds is one event.
// It leaves when strictly more than the fraction beats again (the nodes
// still silent then get the reconnect allowance from that moment), or
// after DisruptionMaxHold (default 10 minutes: nodes still silent go Down
// at once, and no new episode starts until the silence has cleared).
// Disrupted and Summary report the mode.
//
// # Local health
//
// The caller measures its own lag (the aggregator: late sweeps, scheduler
// latency, GC pauses) and hands the tracker a multiplier with SetHealth
// (Lifeguard's local health awareness, Dadgar et al., 2017): every node's
// Suspect and Down thresholds are scaled by it, so that lateness the
// caller's host caused is not blamed on the nodes. The tracker measures
// nothing itself; Health reports what was set.
//
// # Duplicate identity
//
// Two senders with one key supersede each other's streams for ever. The
// caller reports each supersede with Superseded; strictly more than
// DuplicateThreshold (default 3) within a DuplicateWindow (default one
// minute) flag the node DuplicateIdentity, and Superseded returns true once
// per window for the caller to count and log. The flag clears after a whole
// window without a supersede.
//
// # Limit and eviction
//
// At most Config.MaxNodes nodes (every state, Joining included) are tracked.
// When a peer the tracker does not know arrives (Beat or StreamOpened) and
// the tracker is full, a node with no open stream is evicted to make room:
// first the Left node that left first (it said goodbye, so dropping it
// loses only history), else the node Down the longest once it has been
// Down strictly longer than DownRetention (default 24 hours), so that dead
// identities cannot lock newcomers out for ever; ties go to the smallest
// peer id. If there is none, the newcomer gets ErrFull; known peers are
// never refused. Suspect nodes, and Down nodes within the retention, are
// never evicted, because they are what alerts watch and a flood of fresh
// identities must not make an outage disappear; the defence against such
// floods is an allowlist. An operator drops a retired node with Forget.
// Eviction scans all nodes (O(n)), but only when the tracker is full and
// holds at least one Left or Down node.
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
