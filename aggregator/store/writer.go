package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/clockwork"
)

// Defaults applied by NewWriter to zero WriterConfig fields.
const (
	DefaultFlushInterval   = time.Second
	DefaultBatchSize       = 1000
	DefaultQueueSize       = 20000
	DefaultSampleInterval  = time.Minute
	DefaultFlipRetention   = 90 * 24 * time.Hour
	DefaultSampleRetention = 14 * 24 * time.Hour
	DefaultPruneInterval   = 10 * time.Minute
	DefaultPruneLimit      = 5000
	DefaultWriteTimeout    = 10 * time.Second
	// DefaultErrorLogInterval spaces the "store write failed" lines of one
	// outage.
	DefaultErrorLogInterval = time.Minute
)

// WriterConfig configures a Writer. Zero fields take the defaults above.
type WriterConfig struct {
	// Aggregator is the peer id of the aggregator that writes; it is
	// stamped on every record. Required.
	Aggregator peer.ID
	// FlushInterval: pending records are written at least this often;
	// default 1s. It is the most a crash can lose of samples and node
	// records (flips are coalesced, not lost, while the queue is full).
	FlushInterval time.Duration
	// BatchSize: a flush starts early once this many records are pending;
	// default 1000.
	BatchSize int
	// QueueSize bounds the pending flips and samples; default 20000. When
	// it is full a new sample is dropped (counted) and a new flip is merged
	// into its node's last pending flip (counted), so flips exceed it by at
	// most one per node. Pending node records are one per node.
	QueueSize int
	// SampleInterval: a node's record is rewritten, and a height sample
	// taken, at most once per interval of the clock (e.g. once per minute
	// from :00 to :59) unless its state or labels change; default 1
	// minute. Also the period of the pull of WithSource.
	SampleInterval time.Duration
	// FlipRetention and SampleRetention: older rows are pruned; defaults
	// 90 and 14 days.
	FlipRetention, SampleRetention time.Duration
	// PruneInterval: how often pruning runs; default 10 minutes. A run that
	// hit PruneLimit continues at the next flush tick.
	PruneInterval time.Duration
	// PruneLimit bounds one pruning run (see Backend.Prune); default 5000.
	PruneLimit int
	// WriteTimeout bounds one flush or pruning run on the wall clock;
	// default 10s.
	WriteTimeout time.Duration
}

func (c WriterConfig) withDefaults() (WriterConfig, error) {
	if c.Aggregator == "" {
		return c, errors.New("store: WriterConfig.Aggregator is required")
	}
	durs := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"FlushInterval", &c.FlushInterval, DefaultFlushInterval},
		{"SampleInterval", &c.SampleInterval, DefaultSampleInterval},
		{"FlipRetention", &c.FlipRetention, DefaultFlipRetention},
		{"SampleRetention", &c.SampleRetention, DefaultSampleRetention},
		{"PruneInterval", &c.PruneInterval, DefaultPruneInterval},
		{"WriteTimeout", &c.WriteTimeout, DefaultWriteTimeout},
	}
	for _, d := range durs {
		if *d.v < 0 {
			return c, fmt.Errorf("store: WriterConfig.%s (%v) must not be negative", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	ints := []struct {
		name string
		v    *int
		def  int
	}{
		{"BatchSize", &c.BatchSize, DefaultBatchSize},
		{"QueueSize", &c.QueueSize, DefaultQueueSize},
		{"PruneLimit", &c.PruneLimit, DefaultPruneLimit},
	}
	for _, i := range ints {
		if *i.v < 0 {
			return c, fmt.Errorf("store: WriterConfig.%s (%d) must not be negative", i.name, *i.v)
		}
		if *i.v == 0 {
			*i.v = i.def
		}
	}
	if c.BatchSize > c.QueueSize {
		return c, fmt.Errorf("store: WriterConfig.BatchSize (%d) must not exceed QueueSize (%d)", c.BatchSize, c.QueueSize)
	}
	return c, nil
}

// WriterOption configures NewWriter.
type WriterOption func(*writerOptions)

type writerOptions struct {
	clock  clockwork.Clock
	log    hclog.Logger
	source func() []Node
	// onFlush, for tests, is called by the Writer's goroutine after every
	// write attempt with the batch's size and error.
	onFlush func(n int, err error)
}

// WithClock sets the clock of the flush and prune timers, of retention and
// of the Updated stamp; default the wall clock.
func WithClock(c clockwork.Clock) WriterOption { return func(o *writerOptions) { o.clock = c } }

// WithLogger sets the logger (named "store"); default none.
func WithLogger(l hclog.Logger) WriterOption { return func(o *writerOptions) { o.log = l } }

// WithSource makes the Writer pull every node's snapshot from source once
// per SampleInterval, on its own goroutine, and queue them as Node would.
// With it the aggregator need not call Node per heartbeat at all (only
// with each Flip, so that the state change is written with it), which
// keeps the store's cost off the ingest path: a tracker snapshot per
// minute instead of a call per beat. Close pulls once more, so that a
// clean shutdown writes every node's record as of the shutdown. source
// must be safe to call from another goroutine, e.g. the tracker's Nodes.
func WithSource(source func() []Node) WriterOption {
	return func(o *writerOptions) { o.source = source }
}

// WriterStats are the Writer's counters since NewWriter.
type WriterStats struct {
	// Flushes counts the flushes that wrote a non-empty batch, and
	// FlushErrors those that failed.
	Flushes, FlushErrors uint64
	// Written counts the records of successful flushes.
	Written uint64
	// SamplesDropped counts samples dropped because the queue was full or
	// their flush failed.
	SamplesDropped uint64
	// FlipsCoalesced counts flips merged into their node's previous pending
	// flip because the queue was full.
	FlipsCoalesced uint64
	// Pruned counts rows deleted by retention, and PruneErrors failed runs.
	Pruned, PruneErrors uint64
}

// Writer batches the aggregator's writes off the ingest path: Node and Flip
// only append to memory and never block on the database; one goroutine
// writes a batch per FlushInterval (or sooner, per BatchSize) and prunes
// expired rows. A failed write is counted and logged; its flips and node
// records are kept for the next flush, so the Writer recovers by itself when
// the database does. Close it before closing the Backend.
type Writer struct {
	b       Backend
	cfg     WriterConfig
	clk     clockwork.Clock
	log     hclog.Logger
	onFlush func(n int, err error)
	source  func() []Node

	mu     sync.Mutex
	closed bool
	p      pendingBatch
	seen   map[peer.ID]*memo

	kick     chan struct{}
	flushReq chan chan error
	quit     chan struct{}
	done     chan struct{}

	flushes, flushErrors, written  atomic.Uint64
	samplesDropped, flipsCoalesced atomic.Uint64
	pruned, pruneErrors            atomic.Uint64
	failing                        bool      // loop goroutine only
	failures                       int       // loop goroutine only: failed flushes of this outage
	lastErrLog                     time.Time // loop goroutine only
}

// memo is what the Writer remembers of a node to downsample its records.
type memo struct {
	state, nickname, miner, genesis string
	written                         time.Time // Updated of the last record queued
	sampled                         time.Time // At of the last sample queued
}

// pendingBatch is the queue: flips and samples in arrival order, at most
// one node record per node.
type pendingBatch struct {
	flips    []Flip
	lastFlip map[peer.ID]int // index in flips of each node's last flip
	nodes    map[peer.ID]Node
	samples  []Sample
	retires  []Retire
	waiters  []chan error // Retire callers, answered after the flush
}

func (p *pendingBatch) len() int {
	return len(p.flips) + len(p.samples) + len(p.nodes) + len(p.retires)
}

// NewWriter starts a Writer in front of b. It validates cfg (the error names
// the field); Close stops it.
func NewWriter(b Backend, cfg WriterConfig, opts ...WriterOption) (*Writer, error) {
	if b == nil {
		return nil, errors.New("store: NewWriter with a nil Backend")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	o := writerOptions{clock: clockwork.Real(), log: hclog.NewNullLogger()}
	for _, opt := range opts {
		opt(&o)
	}
	if o.clock == nil {
		o.clock = clockwork.Real()
	}
	if o.log == nil {
		o.log = hclog.NewNullLogger()
	}
	w := &Writer{
		b: b, cfg: cfg, clk: o.clock, log: o.log.Named("store"), onFlush: o.onFlush, source: o.source,
		seen:     make(map[peer.ID]*memo),
		kick:     make(chan struct{}, 1),
		flushReq: make(chan chan error),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	w.p.reset()
	// The timers are armed before NewWriter returns, so that a test moving
	// a mock clock right after cannot miss the first tick; the loop owns
	// them from here on.
	now := w.clk.Now()
	flushT, pruneT, pullT := clockwork.NewTimer(w.clk), clockwork.NewTimer(w.clk), clockwork.NewTimer(w.clk)
	flushT.ResetAt(now.Add(cfg.FlushInterval))
	pruneT.ResetAt(now.Add(cfg.PruneInterval))
	if w.source != nil {
		pullT.ResetAt(now.Add(cfg.SampleInterval))
	}
	go w.loop(flushT, pruneT, pullT)
	return w, nil
}

func (p *pendingBatch) reset() {
	*p = pendingBatch{lastFlip: make(map[peer.ID]int), nodes: make(map[peer.ID]Node)}
}

// Node queues a snapshot of a node's record; the Writer stamps Aggregator,
// and Updated with its clock's now if zero. It never blocks on the
// database. The record is written if its state or labels changed, or if
// Updated is in a later SampleInterval (counted from the zero time, so
// whole minutes by default) than the last written record; a newer snapshot
// replaces a pending one. A height sample is taken for the first LastSeen
// in each SampleInterval.
func (w *Writer) Node(n Node) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.nodeLocked(n, false)
}

// nodeLocked queues n as Node describes; force queues the record even
// within its SampleInterval (Close's final pull).
func (w *Writer) nodeLocked(n Node, force bool) {
	n.Aggregator = w.cfg.Aggregator
	if n.Updated.IsZero() {
		n.Updated = w.clk.Now()
	}
	m := w.seen[n.Peer]
	if m == nil {
		m = &memo{}
		w.seen[n.Peer] = m
	}
	_, queued := w.p.nodes[n.Peer]
	changed := n.State != m.state || n.Nickname != m.nickname || n.Miner != m.miner || n.Genesis != m.genesis
	if force || queued || changed || w.bucket(n.Updated) != w.bucket(m.written) {
		w.p.nodes[n.Peer] = n
		m.state, m.nickname, m.miner, m.genesis = n.State, n.Nickname, n.Miner, n.Genesis
		if !queued {
			m.written = n.Updated
		}
	}
	if !n.LastSeen.IsZero() && w.bucket(n.LastSeen) != w.bucket(m.sampled) {
		m.sampled = n.LastSeen
		if len(w.p.flips)+len(w.p.samples) >= w.cfg.QueueSize {
			w.samplesDropped.Add(1)
		} else {
			w.p.samples = append(w.p.samples, Sample{Peer: n.Peer, Aggregator: w.cfg.Aggregator, At: n.LastSeen, Height: n.Height})
		}
	}
	w.kickLocked()
}

// bucket is the SampleInterval that t is in; the zero time has its own.
func (w *Writer) bucket(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.Truncate(w.cfg.SampleInterval).Add(w.cfg.SampleInterval) // never the zero time
}

// Flip queues a state transition; the Writer stamps Aggregator. It never
// blocks and a flip is never dropped: while the queue is full, it is merged
// into its node's last pending flip (From of the older, the rest of the
// newer), which FlipsCoalesced counts.
func (w *Writer) Flip(f Flip) {
	f.Aggregator = w.cfg.Aggregator
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.p.addFlip(f, len(w.p.flips)+len(w.p.samples) >= w.cfg.QueueSize, &w.flipsCoalesced)
	w.kickLocked()
}

func (p *pendingBatch) addFlip(f Flip, full bool, coalesced *atomic.Uint64) {
	if i, ok := p.lastFlip[f.Peer]; ok && full {
		f.From = p.flips[i].From
		p.flips[i] = f
		coalesced.Add(1)
		return
	}
	p.lastFlip[f.Peer] = len(p.flips)
	p.flips = append(p.flips, f)
}

func (w *Writer) kickLocked() {
	if w.p.len() >= w.cfg.BatchSize {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

// Forget drops what the Writer remembers of p for downsampling (not its
// rows): call it when the tracker forgets a node, so that memory stays
// bounded by the tracked nodes.
func (w *Writer) Forget(p peer.ID) {
	w.mu.Lock()
	delete(w.seen, p)
	w.mu.Unlock()
}

// Retire marks p retired (see Retire) at the clock's now and waits until
// that is written. It returns ErrNotFound if the store has no record of p,
// ErrClosed after Close, or the write's error (then nothing was retired).
// The caller must have stopped tracking p first: a record of p queued
// later, newer than the retire, makes it a live node again.
func (w *Writer) Retire(ctx context.Context, p peer.ID, reason string) error {
	// Write what is pending first, so that a node only queued so far is
	// found, and its queued record cannot land after the retire.
	if err := w.Flush(ctx); err != nil {
		return err
	}
	if _, err := w.b.Node(ctx, p); err != nil {
		return err
	}
	done := make(chan error, 1)
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return ErrClosed
	}
	delete(w.seen, p)
	delete(w.p.nodes, p)
	w.p.retires = append(w.p.retires, Retire{Peer: p, Aggregator: w.cfg.Aggregator, At: w.clk.Now(), Reason: reason})
	w.p.waiters = append(w.p.waiters, done)
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
	select {
	case err := <-done: // answered by the flush that took the retire
		return err
	case <-w.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Flush writes everything pending now and returns the write's error; nil if
// there was nothing to write. ErrClosed after Close.
func (w *Writer) Flush(ctx context.Context) error {
	res := make(chan error, 1)
	select {
	case w.flushReq <- res:
	case <-w.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats returns the counters.
func (w *Writer) Stats() WriterStats {
	return WriterStats{
		Flushes: w.flushes.Load(), FlushErrors: w.flushErrors.Load(), Written: w.written.Load(),
		SamplesDropped: w.samplesDropped.Load(), FlipsCoalesced: w.flipsCoalesced.Load(),
		Pruned: w.pruned.Load(), PruneErrors: w.pruneErrors.Load(),
	}
}

// Pending is the number of records waiting for a flush.
func (w *Writer) Pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.p.len()
}

// Close stops taking records, pulls every node's record from WithSource's
// source once more (whatever its SampleInterval), makes one last flush
// attempt (bounded by WriteTimeout) and stops the Writer's goroutine. It does not close the Backend. It returns the last
// flush's error; it is idempotent.
func (w *Writer) Close() error {
	w.mu.Lock()
	already := w.closed
	w.closed = true
	w.mu.Unlock()
	if !already {
		close(w.quit)
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	if n := w.p.len(); n > 0 {
		return fmt.Errorf("store: closed with %d records unwritten", n)
	}
	return nil
}

func (w *Writer) loop(flushT, pruneT, pullT *clockwork.Timer) {
	defer close(w.done)
	defer flushT.Close()
	defer pruneT.Close()
	defer pullT.Close()
	pruneAgain := false
	for {
		select {
		case now := <-flushT.C():
			w.flush()
			if pruneAgain {
				pruneAgain = !w.prune(now)
			}
			flushT.ResetAt(now.Add(w.cfg.FlushInterval))
			flushT.Ack()
		case now := <-pruneT.C():
			pruneAgain = !w.prune(now)
			pruneT.ResetAt(now.Add(w.cfg.PruneInterval))
			pruneT.Ack()
		case now := <-pullT.C():
			for _, n := range w.source() {
				w.Node(n)
			}
			pullT.ResetAt(now.Add(w.cfg.SampleInterval))
			pullT.Ack()
		case <-w.kick:
			w.flush()
		case res := <-w.flushReq:
			res <- w.flush()
		case <-w.quit:
			w.finalPull()
			w.flush()
			return
		}
	}
}

// finalPull queues every node's record from the source once more, inside
// its SampleInterval too, for Close's last flush: a clean shutdown keeps
// each node's last seen, height and head as of the shutdown, not as of the
// last periodic pull (up to SampleInterval older).
func (w *Writer) finalPull() {
	if w.source == nil {
		return
	}
	nodes := w.source()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, n := range nodes {
		w.nodeLocked(n, true)
	}
}

// flush writes the pending batch. On failure the flips and node records go
// back to the queue (the samples are dropped and counted) and the error is
// counted and logged, at most once per DefaultErrorLogInterval.
func (w *Writer) flush() error {
	w.mu.Lock()
	p := w.p
	w.p.reset()
	w.mu.Unlock()
	if p.len() == 0 {
		answer(p.waiters, nil)
		return nil
	}
	batch := Batch{Flips: p.flips, Retires: p.retires, Samples: p.samples, Nodes: make([]Node, 0, len(p.nodes))}
	for _, n := range p.nodes {
		batch.Nodes = append(batch.Nodes, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.WriteTimeout)
	err := w.b.Apply(ctx, batch)
	cancel()
	answer(p.waiters, err)
	if w.onFlush != nil {
		w.onFlush(batch.Len(), err)
	}
	if err == nil {
		w.flushes.Add(1)
		w.written.Add(uint64(batch.Len()))
		if w.failing {
			w.log.Info("store writes recovered", "failed_flushes", w.failures)
			w.failing, w.failures = false, 0
		}
		return nil
	}
	w.flushErrors.Add(1)
	w.samplesDropped.Add(uint64(len(p.samples)))
	w.requeue(p)
	w.failures++
	now := w.clk.Now()
	if !w.failing || now.Sub(w.lastErrLog) >= DefaultErrorLogInterval {
		w.log.Error("store write failed", "error", err, "failed_flushes", w.failures,
			"flips", len(p.flips), "nodes", len(p.nodes), "samples_dropped", len(p.samples))
		w.lastErrLog = now
	}
	w.failing = true
	return err
}

// requeue puts the flips and node records of a failed batch back in front
// of what arrived meanwhile. Retires are not: their callers got the error.
func (w *Writer) requeue(old pendingBatch) {
	w.mu.Lock()
	defer w.mu.Unlock()
	cur := w.p
	w.p.reset()
	w.p.samples = cur.samples
	w.p.retires, w.p.waiters = cur.retires, cur.waiters
	for _, f := range old.flips {
		w.p.addFlip(f, len(w.p.flips)+len(w.p.samples) >= w.cfg.QueueSize, &w.flipsCoalesced)
	}
	for _, f := range cur.flips {
		w.p.addFlip(f, len(w.p.flips)+len(w.p.samples) >= w.cfg.QueueSize, &w.flipsCoalesced)
	}
	for id, n := range old.nodes {
		w.p.nodes[id] = n
	}
	for id, n := range cur.nodes {
		w.p.nodes[id] = n
	}
}

func answer(waiters []chan error, err error) {
	for _, c := range waiters {
		c <- err
	}
}

// prune runs one bounded pruning pass and reports whether it finished.
func (w *Writer) prune(now time.Time) bool {
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.WriteTimeout)
	defer cancel()
	n, done, err := w.b.Prune(ctx, now.Add(-w.cfg.FlipRetention), now.Add(-w.cfg.SampleRetention), w.cfg.PruneLimit)
	w.pruned.Add(uint64(n))
	if err != nil {
		w.pruneErrors.Add(1)
		w.log.Error("store pruning failed", "error", err)
		return true // try again at the next PruneInterval
	}
	if n > 0 {
		w.log.Debug("store pruned", "rows", n, "done", done)
	}
	return done
}
