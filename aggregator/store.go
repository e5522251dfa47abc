package aggregator

import (
	"context"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pbeat/heartbeat/aggregator/store"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
)

// storeSetup is what WithStore passes to New.
type storeSetup struct {
	b   store.Backend
	cfg store.WriterConfig
}

// WithStore makes the aggregator remember its nodes in b (package
// aggregator/store: SQLite or PostgreSQL). New first loads this
// aggregator's own records from b and restores every node that is neither
// Left nor retired into the tracker as Unknown (tracker.Restore): known
// before the restart, not seen since. Such a node turns Up when it beats
// again, and Down after the startup grace if it does not, so its alert
// fires again instead of vanishing. Meanwhile heartbeat_node_up is 0 for
// one that was Suspect or Down when stored (its alert holds across the
// restart) and has no series for one that was Up (a restart does not page
// for every node still reconnecting). Then a store.Writer (cfg; its
// Aggregator is the host's peer id) takes every node state change as a
// flip with the node's record, and pulls the tracker's snapshot once per
// SampleInterval for the records and height samples: the ingest path only
// appends to memory and never waits on the database. Store errors are
// logged by the Writer and counted (heartbeat_store_*). Close writes a
// last snapshot of every node (last seen, height, head, state: a node
// restored after a clean restart is as fresh as the shutdown) with what is
// pending, bounded by the store's WriteTimeout; the caller closes b after
// Close.
func WithStore(b store.Backend, cfg store.WriterConfig) Option {
	return func(o *options) { o.store = &storeSetup{b: b, cfg: cfg} }
}

// Store returns the store's Backend, nil without WithStore.
func (a *Aggregator) Store() store.Backend {
	if a.storeB == nil {
		return nil
	}
	return a.storeB
}

// restore loads the nodes known before a restart into the tracker as
// Unknown; it is called by New before any stream is accepted.
func (a *Aggregator) restore(ctx context.Context, b store.Backend, self peer.ID) error {
	nodes, err := b.Nodes(ctx, store.NodeFilter{Aggregator: self})
	if err != nil {
		return fmt.Errorf("aggregator: load the nodes known before the restart: %w", err)
	}
	now := a.clock.Now()
	restored, skipped := 0, 0
	for _, n := range nodes {
		if n.State == store.StateRetired || n.State == tracker.Left.String() {
			skipped++
			continue
		}
		ok, err := a.tracker.Restore(tracker.Restored{
			Peer: n.Peer, Nickname: n.Nickname, Head: n.Head, Height: n.Height,
			MinerAddress: n.Miner, Genesis: n.Genesis, FirstSeen: n.FirstSeen, LastSeen: n.LastSeen,
			WasDown: n.State == tracker.Down.String() || n.State == tracker.Suspect.String(),
		}, now)
		if errors.Is(err, tracker.ErrFull) {
			a.log.Warn("more nodes in the store than max_nodes: the rest are not restored",
				"restored", restored, "not_restored", len(nodes)-restored-skipped, "max_nodes", a.cfg.MaxNodes)
			break
		}
		if err != nil {
			return fmt.Errorf("aggregator: restore node %s: %w", n.Peer, err)
		}
		if ok {
			restored++
		}
	}
	a.log.Info("nodes restored from the store", "restored", restored, "left_or_retired", skipped,
		"startup_grace", a.tracker.Config().StartupGrace.String())
	return nil
}

// storeNode is the store's record of a tracker node.
func storeNode(n *tracker.Node) store.Node {
	return store.Node{
		Peer: n.Peer, Nickname: n.Nickname, Miner: n.MinerAddress, Genesis: n.Genesis,
		Head: n.Head, Height: n.Height, State: n.State.String(),
		FirstSeen: n.FirstSeen, LastSeen: n.LastSeen,
	}
}

// snapshot is the Writer's source: the tracker's nodes, once per
// SampleInterval and at Close, on the Writer's goroutine. It leaves out
// Unknown nodes: restored and not seen since, they have nothing newer than
// their stored record, whose state (the last judged one) the next restart
// needs to tell a node that was Down from one that was Up.
func (a *Aggregator) snapshot() []store.Node {
	a.snapBuf = a.tracker.Nodes(a.snapBuf[:0])
	out := make([]store.Node, 0, len(a.snapBuf))
	for i := range a.snapBuf {
		if a.snapBuf[i].State != tracker.Unknown {
			out = append(out, storeNode(&a.snapBuf[i]))
		}
	}
	clear(a.snapBuf)
	return out
}

// storeChange queues a state change as a flip, with the node's record so
// that the new state is written with it. Memory only: it never blocks.
func (a *Aggregator) storeChange(ch tracker.Change) {
	a.storeW.Flip(store.Flip{Peer: ch.Peer, At: ch.At, From: ch.From.String(), To: ch.To.String(), Reason: flipReason(ch)})
	if n, ok := a.tracker.Node(ch.Peer); ok {
		a.storeW.Node(storeNode(&n))
	}
}

// flipReason names the cause of a change for the flips table, from the
// pair of states (the tracker's table has one event per pair).
func flipReason(ch tracker.Change) string {
	switch {
	case ch.To == tracker.Up:
		return "heartbeat"
	case ch.To == tracker.Left:
		return "stream_eof"
	case ch.From == tracker.Unknown && ch.To == tracker.Down:
		return "silent_since_restart"
	case ch.To == tracker.Suspect || ch.To == tracker.Down:
		return "silence"
	}
	return ""
}

// registerStoreMetrics exposes the Writer's counters on reg.
func registerStoreMetrics(reg *prometheus.Registry, w *store.Writer) error {
	counter := func(name, help string, f func(store.WriterStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(f(w.Stats())) })
	}
	cs := []prometheus.Collector{
		counter("heartbeat_store_flushes_total", "Store batches written.", func(s store.WriterStats) uint64 { return s.Flushes }),
		counter("heartbeat_store_flush_errors_total", "Store batches that failed to write (kept for the next flush, samples dropped).",
			func(s store.WriterStats) uint64 { return s.FlushErrors }),
		counter("heartbeat_store_samples_dropped_total", "Height samples dropped: queue full or write failed.",
			func(s store.WriterStats) uint64 { return s.SamplesDropped }),
		counter("heartbeat_store_flips_coalesced_total", "Flips merged into their node's previous pending flip because the queue was full.",
			func(s store.WriterStats) uint64 { return s.FlipsCoalesced }),
		counter("heartbeat_store_prune_errors_total", "Retention runs that failed.", func(s store.WriterStats) uint64 { return s.PruneErrors }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "heartbeat_store_pending_records", Help: "Records waiting for the next store flush."},
			func() float64 { return float64(w.Pending()) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register store metrics: %w", err)
		}
	}
	return nil
}

// Retire retires a node for good: the tracker forgets it (it no longer
// alerts; a later heartbeat from it makes a new node) and, with a store,
// its records are kept as store.StateRetired for audit, and it is not
// restored after a restart. Retiring a retired node changes nothing. It
// returns store.ErrNotFound when neither the tracker nor the store knows
// id, or the store's error (the tracker has forgotten it then all the
// same).
func (a *Aggregator) Retire(ctx context.Context, id peer.ID, reason string) error {
	forgot := a.tracker.Forget(id)
	if forgot {
		if a.dash != nil {
			a.dash.Notify()
		}
		a.log.Info("node retired", "peer_id", id.String(), "reason", reason)
	}
	if a.storeW == nil {
		if !forgot {
			return fmt.Errorf("retire %s: %w", id, store.ErrNotFound)
		}
		return nil
	}
	a.storeW.Forget(id)
	if !forgot {
		// Retired already: nothing to change (DELETE is idempotent), and
		// no second flip.
		if n, err := a.storeB.Node(ctx, id); err == nil && n.State == store.StateRetired {
			return nil
		}
	}
	if err := a.storeW.Retire(ctx, id, reason); err != nil {
		return fmt.Errorf("retire %s: %w", id, err)
	}
	return nil
}
