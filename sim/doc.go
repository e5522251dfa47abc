// Package sim is a deterministic, single-goroutine, discrete-event simulation
// of many heartbeat senders and one aggregator, with faults and invariants.
//
// Every sender is the real pure state machine (package fsm) with its real log
// and backoff policies; the aggregator is the real node tracker (package
// aggregator/tracker), shared, not copied. Between them runs a network model
// (see Network) faithful enough not to mislead: ordered reliable streams,
// per-stream send windows, connection reuse, refused and hanging dials,
// keepalive, an idle read timeout, latency with jitter, and the difference
// between a reset, an orderly close and silence.
//
// The senders speak protocol v1 (the default), v2, or both (Params.Protocol):
// a v2 sender drives its machine with Welcome, Ack, Ack overdue and GoAway,
// and the aggregator answers as aggregator/v2.go does, acknowledging every
// Beat it reads and pacing new v2 streams (Params.Pacing).
//
// # Determinism
//
// Virtual time is a calendar queue (see queue.go) that pops events in the
// order of (time, sequence number), exactly as a binary heap keyed by them
// would; one goroutine pops events in order and hands them to the machines,
// the network and the tracker. One seed (Params.Seed) drives
// every random choice: the network's latencies, each node's machine seed,
// the scenario's choices. Nothing is iterated from a map for output and no
// goroutine is started, so the same Params give a byte-identical trace and
// report whatever GOMAXPROCS is, with or without -race. The trace hash
// (Report.TraceHash, FNV-64a over the trace lines) is computed whether or not
// the trace is written, so two runs can be compared by one number.
//
// # Faults and invariants
//
// A scenario is a list of timed fault Actions; Scenarios lists the built-in
// ones, Params.Script adds more. After every step the simulator checks the
// invariants listed in docs/simulation.md; the first violation ends the run
// with an *InvariantError that names the rule, the node, the virtual time,
// and the command that replays the run.
//
// # Embedding
//
// The package also shows (Example_embedding) how a node runtime's own
// deterministic simulation drives a single fsm.Machine: call Step, carry out
// the effects, and schedule the ArmTimer deadlines in virtual time.
package sim
