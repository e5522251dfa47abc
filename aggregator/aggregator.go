// Package aggregator is the receiving side of the heartbeat protocol,
// v1 (fil/heartbeat/1.0.0) and v2 (/fil/heartbeat/2.0.0, v2.go: CBOR frames
// via package wire2, acknowledged beats, reconnect pacing with GoAway).
// For v1 it is a libp2p stream handler that reads heartbeat lines
// with a bounded reader, decodes them with wire.DecodeLine, records them in
// a tracker.Tracker keyed by the authenticated peer id, detects silence on
// an injectable clock, and exposes Prometheus metrics.
//
// # Streams
//
// Following go-libp2p's ping and identify, each stream is attached to the
// wire.ServiceName resource scope, reserves its line buffer before reading
// (a small one, grown and reserved further only for a line that needs it),
// has a read deadline (the idle timeout, re-armed after each line), is
// Reset on any error and Closed only after a clean EOF. The sender's
// identity is s.Conn().RemotePeer(), proved by the secure channel; the body
// is only a label. A peer has at most one live stream: a newer one
// supersedes the older, which is reset; streams that keep superseding each
// other (two senders with one key) are reported by the tracker, counted as
// duplicate_identity and logged at WARN once per window. A malformed line (not JSON, wrong
// types, invalid UTF-8, too long) ends that stream only; it is counted by
// reason and logged at most once per RejectLogInterval per peer.
//
// # Ingest without a network
//
// ServeLines runs the per-stream work (bounded reading, decoding, tracking)
// over any io.Reader; the libp2p handler is a thin shell around it, and the
// benchmarks feed it many in-memory streams.
package aggregator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pbeat/heartbeat/aggregator/api"
	"github.com/p2pbeat/heartbeat/aggregator/metrics"
	"github.com/p2pbeat/heartbeat/aggregator/pacing"
	"github.com/p2pbeat/heartbeat/aggregator/store"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/aggregator/web"
	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/wire"
	"github.com/p2pbeat/heartbeat/wire2"
)

// Errors that end a stream, besides the decoder's (*wire.DecodeError) and
// the transport's. ServeLines wraps them; match with errors.Is.
var (
	// ErrLineTooLong: a line longer than Config.MaxLineBytes, or that many
	// bytes without a newline.
	ErrLineTooLong = errors.New("heartbeat line too long")
	// ErrIdleTimeout: no complete non-blank line within Config.IdleTimeout.
	ErrIdleTimeout = errors.New("heartbeat stream idle")
	// ErrNotAllowed: the peer is not on the allowlist.
	ErrNotAllowed = errors.New("peer not on the allowlist")
	// ErrSuperseded: the peer opened a newer stream.
	ErrSuperseded = errors.New("heartbeat stream superseded by a newer one")
	// ErrClosed: the aggregator is closed.
	ErrClosed = errors.New("aggregator closed")
)

// Option configures New, and HostOptions: pass the same options to both
// (WithLogger, WithClock and WithRegistry matter to the host too).
type Option func(*options)

type options struct {
	log     hclog.Logger
	clock   clockwork.Clock
	reg     *prometheus.Registry
	beatLog bool
	gater   *AllowGater
	hooks   *hooks
	dash    []web.Option // nil: no dashboard
	store   *storeSetup  // nil: no store
}

// applyOptions applies opts over the defaults (no logger, the wall clock,
// no registry: New makes one).
func applyOptions(opts []Option) options {
	o := options{log: hclog.NewNullLogger(), clock: clockwork.Real()}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = hclog.NewNullLogger()
	}
	if o.clock == nil {
		o.clock = clockwork.Real()
	}
	return o
}

// hooks let this package's tests wait for events instead of sleeping. nil
// in production.
type hooks struct {
	// beat runs after each accepted heartbeat (hb is only valid during the
	// call).
	beat func(id peer.ID, hb *wire.Heartbeat)
	// ended runs after a stream (or a refused one) has been fully recorded.
	ended func(id peer.ID, err error)
	// runtimeLag replaces the runtime/metrics reading of the health
	// monitor (nil: the real one).
	runtimeLag runtimeLag
}

// WithLogger sets the logger (default: none). Keys are snake_case and the
// error is always under "error"; use hclog's JSONFormat for log shippers.
func WithLogger(l hclog.Logger) Option { return func(o *options) { o.log = l } }

// WithClock sets the clock for the tracker's times and the silence sweeper
// (default: the wall clock). Stream deadlines always use the wall clock: a
// mock's time must never reach the network.
func WithClock(c clockwork.Clock) Option { return func(o *options) { o.clock = c } }

// WithRegistry sets the Prometheus registry the aggregator's metrics are
// registered on (default: a new registry of its own, never the global one).
// New also registers the Go and process collectors and
// heartbeat_build_info there (metrics.RegisterProcess), unless the registry
// already has them.
func WithRegistry(r *prometheus.Registry) Option { return func(o *options) { o.reg = r } }

// WithBeatLog logs every accepted heartbeat at INFO ("heartbeat", with
// peer_id, nickname, head, height, miner_address (normalised, see
// wire.MinerAddressOf), miner_address_raw, genesis). Off by default:
// at 10,000 nodes every 3 s that is 3,300 lines a second.
func WithBeatLog(on bool) Option { return func(o *options) { o.beatLog = on } }

// WithGater makes the aggregator enforce g's allowlist on streams too (a
// stream from a peer the host's gater did not see is refused) and count the
// gater's refusals as "not_allowed". Pass the same g to HostOptions.
func WithGater(g *AllowGater) Option { return func(o *options) { o.gater = g } }

// WithDashboard serves the live dashboard (package aggregator/web) from
// HTTPHandler: its page at GET /, its events and its history routes
// (web.Routes). The aggregator builds it over its tracker with its clock,
// registry, logger and start time (with WithStore, also its per-node
// history and the 24 h uptime column, both from the store), calls its
// Notify on every node state change, and closes it in Close; opts come
// after those and may override them (WithHistory, refresh intervals...). Without it there is no
// dashboard (GET / is a 404).
func WithDashboard(opts ...web.Option) Option {
	return func(o *options) { o.dash = append([]web.Option{}, opts...) }
}

// Aggregator receives heartbeat streams on a libp2p host. Create it with
// New, which registers the stream handler and starts the sweeper; stop it
// with Close.
type Aggregator struct {
	h       host.Host
	cfg     Config
	log     hclog.Logger
	clock   clockwork.Clock
	reg     *prometheus.Registry
	tracker *tracker.Tracker
	obs     observer
	gater   *AllowGater
	beatLog bool
	hooks   *hooks
	rejects *rateLog
	health  *healthMonitor // owned by the sweeper goroutine
	bufs    sync.Pool      // *[]byte initial line buffers of lineBuf bytes
	lineBuf int            // min(initialLineBuffer, MaxLineBytes+1); tests may set it before any stream
	v2bufs  sync.Pool      // *v2Buffers
	pace    *pacer
	version string         // in Welcome
	dash    *web.Dashboard // nil without WithDashboard
	storeB  store.Backend  // nil without WithStore
	storeW  *store.Writer  // nil without WithStore
	snapBuf []tracker.Node // the Writer's source scratch (its goroutine only)

	mu      sync.Mutex
	closed  bool
	streams map[peer.ID]*liveStream
	wg      sync.WaitGroup // stream handlers inside the aggregator

	done      chan struct{} // closed by Close
	sweepDone chan struct{}
	closeOnce sync.Once
	closeErr  error // set inside closeOnce
}

// liveStream is one peer's current stream.
type liveStream struct {
	s          network.Stream
	reserved   int // line-buffer bytes reserved in s's scope by handleStream
	superseded atomic.Bool

	mu       sync.Mutex
	draining bool // Close half-closed the stream and set the drain deadline

	v2  bool       // a /fil/heartbeat/2.0.0 stream: Close sends GoAway
	wmu sync.Mutex // serialises v2 writes: the handler's and Close's GoAway
}

// SetReadDeadline arms the idle deadline for the line reader, unless Close
// has set the drain deadline, which then stays.
func (ls *liveStream) SetReadDeadline(t time.Time) error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.draining {
		return nil
	}
	return ls.s.SetReadDeadline(t)
}

// drain half-closes the stream (the sender reads EOF: an orderly end) and
// gives the sender until deadline to close its side. A v2 stream first
// gets goAway (a GoAway frame: when to come back) as its last frame: an Ack
// being written at that moment goes first, bounded by the same deadline,
// and no Ack starts after draining is set.
func (ls *liveStream) drain(deadline time.Time, goAway []byte) {
	ls.mu.Lock()
	ls.draining = true
	_ = ls.s.SetReadDeadline(deadline)
	// Also bounds an Ack write in flight, so the Lock below cannot outlast
	// the deadline.
	_ = ls.s.SetWriteDeadline(deadline)
	ls.mu.Unlock()
	if goAway != nil {
		ls.wmu.Lock()
		_, _ = ls.s.Write(goAway)
		ls.wmu.Unlock()
	}
	_ = ls.s.CloseWrite()
}

// Write writes one v2 frame, unless Close is draining the stream (the
// frame would land after the GoAway).
func (ls *liveStream) Write(p []byte) (int, error) {
	ls.wmu.Lock()
	defer ls.wmu.Unlock()
	if ls.isDraining() {
		return 0, ErrClosed
	}
	return ls.s.Write(p)
}

// SetDeadline arms the v2 loop's deadline (the next frame's read and the
// Ack's write), unless Close has set the drain deadline.
func (ls *liveStream) SetDeadline(t time.Time) error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.draining {
		return nil
	}
	return ls.s.SetDeadline(t)
}

func (ls *liveStream) isDraining() bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.draining
}

// New returns an aggregator for h. It validates cfg (the error names the
// field), registers the stream handler for wire.ProtocolID and starts the
// silence sweeper, so it is receiving when New returns; Close undoes all
// of it. The host's own limits come from HostOptions.
func New(h host.Host, cfg Config, opts ...Option) (*Aggregator, error) {
	if h == nil {
		return nil, errors.New("aggregator: nil host")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	o := applyOptions(opts)
	if o.reg == nil {
		o.reg = prometheus.NewRegistry()
	}
	t, err := tracker.New(cfg.trackerConfig(), o.clock.Now())
	if err != nil {
		return nil, fmt.Errorf("aggregator: %w", err)
	}
	// Read the tracker's fields back with its defaults applied.
	cfg = cfg.withTracker(t.Config())
	obs, err := metrics.New(o.reg, t)
	if err != nil {
		return nil, fmt.Errorf("aggregator: %w", err)
	}
	if err := metrics.RegisterProcess(o.reg); err != nil {
		return nil, fmt.Errorf("aggregator: %w", err)
	}
	// go-libp2p's resource-manager metrics (refusals included: its
	// libp2p_rcmgr_blocked_resources) are process-wide; expose them here
	// even when the host registered them elsewhere.
	rcmgr.MustRegisterWith(o.reg)
	a := &Aggregator{
		h:         h,
		cfg:       cfg,
		log:       o.log.Named("aggregator"),
		clock:     o.clock,
		reg:       o.reg,
		tracker:   t,
		obs:       obs,
		gater:     o.gater,
		beatLog:   o.beatLog,
		hooks:     o.hooks,
		rejects:   newRateLog(cfg.RejectLogInterval, 2*cfg.MaxNodes),
		streams:   make(map[peer.ID]*liveStream),
		done:      make(chan struct{}),
		sweepDone: make(chan struct{}),
	}
	var rt runtimeLag
	if o.hooks != nil {
		rt = o.hooks.runtimeLag
	}
	a.health = newHealthMonitor(cfg, rt)
	a.lineBuf = min(initialLineBuffer, cfg.MaxLineBytes+1)
	a.bufs.New = func() any { b := make([]byte, a.lineBuf); return &b }
	a.v2bufs.New = func() any { return &v2Buffers{frame: make([]byte, wire2.MaxFrameBytes), out: make([]byte, 0, 128)} }
	pc, err := pacing.New(cfg.AcceptRate, cfg.PacingWindow, nil)
	if err != nil { // validated by withDefaults: cannot happen
		return nil, fmt.Errorf("aggregator: %w", err)
	}
	a.pace = &pacer{p: pc}
	if o.store != nil {
		if o.store.b == nil {
			return nil, errors.New("aggregator: WithStore: nil Backend")
		}
		// Restored before any stream is accepted: a node that beats
		// first would otherwise be overwritten as Unknown.
		if err := a.restore(context.Background(), o.store.b, h.ID()); err != nil {
			return nil, err
		}
		wcfg := o.store.cfg
		if wcfg.Aggregator == "" {
			wcfg.Aggregator = h.ID()
		}
		w, err := store.NewWriter(o.store.b, wcfg, store.WithClock(o.clock), store.WithLogger(a.log), store.WithSource(a.snapshot))
		if err != nil {
			return nil, fmt.Errorf("aggregator: %w", err)
		}
		if err := registerStoreMetrics(o.reg, w); err != nil {
			_ = w.Close()
			return nil, fmt.Errorf("aggregator: %w", err)
		}
		a.storeB, a.storeW = o.store.b, w
	}
	if o.dash != nil {
		if a.storeB != nil {
			o.dash = append([]web.Option{web.WithHistory(web.StoreHistory(a.storeB)), web.WithUptimes(web.StoreUptimes(a.storeB))}, o.dash...)
		}
		dopts := append([]web.Option{web.WithClock(o.clock), web.WithRegisterer(o.reg),
			web.WithStarted(o.clock.Now()), web.WithLogger(a.log)}, o.dash...)
		if a.dash, err = web.New(web.TrackerSource(t), dopts...); err != nil {
			if a.storeW != nil {
				_ = a.storeW.Close()
			}
			return nil, fmt.Errorf("aggregator: dashboard: %w", err)
		}
	}
	a.version, _ = metrics.BuildVersion()
	if a.gater != nil {
		f := func(id peer.ID) { a.reject(id, metrics.ReasonNotAllowed, ErrNotAllowed) }
		a.gater.onRefuse.Store(&f)
	}
	// The sweeper's timer is armed here, before New returns, so that a test
	// advancing a mock clock right after New cannot miss the first tick;
	// ownership passes to the sweeper goroutine.
	timer := clockwork.NewTimer(a.clock)
	first := a.clock.Now().Add(cfg.SweepInterval)
	timer.ResetAt(first)
	var ids []string
	for _, p := range cfg.Protocols {
		switch p {
		case ProtocolV1:
			h.SetStreamHandler(wire.ProtocolID, a.handleStream)
			ids = append(ids, wire.ProtocolID)
		case ProtocolV2:
			h.SetStreamHandler(wire2.ProtocolID, a.handleStreamV2)
			ids = append(ids, wire2.ProtocolID)
		}
	}
	go a.sweep(timer, first)
	a.log.Info("aggregator started", "protocols", strings.Join(ids, " "), "peer_id", h.ID().String(),
		"max_nodes", cfg.MaxNodes, "max_line_bytes", cfg.MaxLineBytes, "idle_timeout", cfg.IdleTimeout.String())
	return a, nil
}

// Config returns the configuration in force, defaults applied.
func (a *Aggregator) Config() Config { return a.cfg }

// Tracker returns the node tracker (safe for concurrent use).
func (a *Aggregator) Tracker() *tracker.Tracker { return a.tracker }

// Registry returns the Prometheus registry holding the aggregator's
// metrics (see package aggregator/metrics), to gather or to serve.
func (a *Aggregator) Registry() *prometheus.Registry { return a.reg }

// Dashboard returns the live dashboard, nil without WithDashboard.
func (a *Aggregator) Dashboard() *web.Dashboard { return a.dash }

// HTTPHandler serves /metrics (from Registry), /api/nodes, /api/summary and
// /healthz (see package aggregator/api), with times on the aggregator's
// clock, and with WithDashboard the dashboard's routes (web.Routes: GET /,
// /static/, /api/events, /api/history/{peer}). Serve it with
// api.NewServer, which sets the server timeouts. The per-node routes
// (GET and DELETE /api/nodes/{peer}, /history) use the store with
// WithStore, and retire with Retire; opts come after those (e.g.
// api.WithAdminToken).
func (a *Aggregator) HTTPHandler(opts ...api.Option) http.Handler {
	opts = append([]api.Option{api.WithRetire(a.Retire)}, opts...)
	if a.storeB != nil {
		opts = append(opts, api.WithStore(a.storeB))
	}
	if a.dash != nil {
		opts = append(opts, api.WithRoutes(web.Routes, a.dash))
	}
	return api.NewHandler(a.tracker, a.reg, a.clock.Now, opts...)
}

// Run blocks until ctx is done or Close is called, then closes the
// aggregator. It returns ctx.Err() when ctx ended it, nil after Close.
func (a *Aggregator) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		a.Close()
		return ctx.Err()
	case <-a.done:
		a.Close() // waits for a concurrent Close to finish
		return nil
	}
}

// Close removes the stream handlers and ends every live stream in order: it
// sends each v2 stream GoAway (retry after a delay drawn from
// [0, min(PacingWindow, StartupGrace/2)), pacing.ShutdownSpread, so that
// the senders do not all return at once, and come back within the startup
// grace of the aggregator that restarts),
// half-closes each one (CloseWrite: the sender reads EOF, not a reset),
// waits up to Config.CloseTimeout for the senders to close their side (a
// legacy sender never does), then closes the streams (Close, never Reset),
// so that the FINs are out before the embedder closes the host. It waits
// for the handlers and the sweeper to return and leaves the tracker and
// the registry readable; the nodes keep their states (a shutdown is not a
// node leaving). With WithStore it then flushes the store's Writer; the
// error says how many records were left unwritten if that failed. It is
// idempotent and safe to call concurrently: every call returns after the
// shutdown has completed, with the same error.
func (a *Aggregator) Close() error {
	a.closeOnce.Do(func() {
		a.h.RemoveStreamHandler(wire.ProtocolID)
		a.h.RemoveStreamHandler(wire2.ProtocolID)
		if a.gater != nil {
			a.gater.onRefuse.Store(nil)
		}
		a.mu.Lock()
		a.closed = true
		live := make([]*liveStream, 0, len(a.streams))
		for _, ls := range a.streams {
			live = append(live, ls)
		}
		a.mu.Unlock()
		close(a.done)
		// Wall clock: the deadline lives inside the transport.
		deadline := time.Now().Add(a.cfg.CloseTimeout)
		shutdownSpread := pacing.ShutdownSpread(a.tracker.Config().StartupGrace)
		var enc wire2.Encoder
		for _, ls := range live {
			var goAway []byte
			if ls.v2 {
				// Spread the senders' return within the startup grace of
				// the aggregator that comes back (pacing.ShutdownSpread).
				goAway, _ = enc.Append(nil, &wire2.GoAway{RetryAfter: a.pace.spread(shutdownSpread), Reason: "shutdown"})
			}
			ls.drain(deadline, goAway)
		}
		a.wg.Wait()
		<-a.sweepDone
		if a.dash != nil {
			_ = a.dash.Close() // ends the event streams: their pages go offline
		}
		if a.storeW != nil {
			if err := a.storeW.Close(); err != nil {
				a.closeErr = fmt.Errorf("aggregator: store: %w", err)
				a.log.Error("store not flushed at shutdown", "error", err)
			}
		}
		a.log.Info("aggregator stopped")
	})
	return a.closeErr
}

// enter admits a handler unless the aggregator is closed; the caller must
// call a.wg.Done when it returns true.
func (a *Aggregator) enter() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false
	}
	a.wg.Add(1)
	return true
}

// handleStream is the libp2p stream handler.
func (a *Aggregator) handleStream(s network.Stream) {
	if !a.enter() {
		s.Close() // shutting down: an orderly end, not a reset
		return
	}
	defer a.wg.Done()
	id := s.Conn().RemotePeer()
	if err := s.Scope().SetService(wire.ServiceName); err != nil {
		a.reject(id, metrics.ReasonResourceLimit, fmt.Errorf("attach stream to service %s: %w", wire.ServiceName, err))
		s.Reset()
		return
	}
	if !a.gater.Allows(id) {
		a.reject(id, metrics.ReasonNotAllowed, ErrNotAllowed)
		s.Reset()
		return
	}
	// The initial line buffer; serve releases it, with any growth the
	// line reader reserved, before it reports the stream ended.
	size := a.lineBuf
	if err := s.Scope().ReserveMemory(size, network.ReservationPriorityAlways); err != nil {
		a.reject(id, metrics.ReasonResourceLimit, fmt.Errorf("reserve %d bytes for the line buffer: %w", size, err))
		s.Reset()
		return
	}

	ls := &liveStream{s: s, reserved: size}
	if !a.register(id, ls) {
		s.Scope().ReleaseMemory(size)
		s.Close() // shutting down: an orderly end, not a reset
		return
	}
	err := a.serve(id, s, ls)
	a.unregister(id, ls)
	if err != nil && !errors.Is(err, ErrClosed) {
		s.Reset()
		return
	}
	// A clean EOF, or Close's drain (our FIN is out; the sender closed its
	// side or ran out of time): close, never reset.
	s.Close()
}

// register makes ls id's live stream and resets the one it supersedes.
func (a *Aggregator) register(id peer.ID, ls *liveStream) bool {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return false
	}
	old := a.streams[id]
	a.streams[id] = ls
	if old == nil {
		// A peer with a heartbeat stream keeps its connection; the
		// connection manager closes the others (HostOptions).
		a.h.ConnManager().Protect(id, protectTag)
	}
	a.mu.Unlock()
	if old != nil {
		old.superseded.Store(true)
		old.s.Reset()
		a.reject(id, metrics.ReasonSuperseded, ErrSuperseded)
		// Streams that keep superseding each other are two senders with
		// one key: the tracker says so once per window, and that is a
		// fault to see, not routine.
		if a.tracker.Superseded(id, a.clock.Now()) {
			a.obs.Rejected(metrics.ReasonDuplicateIdentity)
			tc := a.tracker.Config()
			a.log.Warn("duplicate identity: streams of one peer keep superseding each other", "peer_id", id.String(),
				"supersedes", tc.DuplicateThreshold+1, "window", tc.DuplicateWindow.String())
		}
	}
	return true
}

func (a *Aggregator) unregister(id peer.ID, ls *liveStream) {
	a.mu.Lock()
	if a.streams[id] == ls {
		delete(a.streams, id)
		a.h.ConnManager().Unprotect(id, protectTag)
	}
	a.mu.Unlock()
}

// ServeLines runs one heartbeat stream from the authenticated peer id over
// r until it ends: it records the stream in the tracker, reads lines with
// the bounded reader, decodes and records each heartbeat, and records the
// end. It returns nil after a clean EOF and otherwise the error that ended
// the stream (a *wire.DecodeError, ErrLineTooLong, ErrIdleTimeout,
// tracker.ErrFull, or the reader's error), wrapped; rejections are counted
// and logged. If r has a SetReadDeadline method (a network.Stream does),
// the idle timeout is enforced with it. The libp2p handler calls this; so
// can tests and benchmarks, with in-memory readers.
func (a *Aggregator) ServeLines(id peer.ID, r io.Reader) error {
	return a.serve(id, r, nil)
}

func (a *Aggregator) serve(id peer.ID, r io.Reader, ls *liveStream) (err error) {
	if a.hooks != nil && a.hooks.ended != nil {
		defer func() { a.hooks.ended(id, err) }()
	}
	var grown int // line-buffer growth the reader reserved
	if ls != nil {
		defer func() { ls.s.Scope().ReleaseMemory(ls.reserved + grown) }()
	}
	if err := a.tracker.StreamOpened(id, a.clock.Now()); err != nil {
		if errors.Is(err, tracker.ErrFull) {
			a.reject(id, metrics.ReasonTooManyNodes, err)
		}
		return fmt.Errorf("heartbeat stream from %s refused: %w", id, err)
	}
	a.obs.StreamOpened()

	bp := a.bufs.Get().(*[]byte)
	lr := newLineReader(r, *bp, a.cfg.MaxLineBytes)
	if ls != nil {
		lr.dl, lr.idle = ls, a.cfg.IdleTimeout
		scope := ls.s.Scope()
		lr.reserve = func(n int) error { return scope.ReserveMemory(n, network.ReservationPriorityAlways) }
	} else if dl, ok := r.(readDeadliner); ok {
		lr.dl, lr.idle = dl, a.cfg.IdleTimeout
	}
	err = a.readLoop(id, lr)
	grown = lr.grown
	// Only the initial buffer goes back to the pool: a grown one is the
	// rare stream's, and pooling it would hand its size to every stream.
	a.bufs.Put(bp)

	how := metrics.ClosedEOF
	switch {
	case ls != nil && ls.isDraining():
		// Ended by Close, whether the sender answered our half-close with
		// its own (EOF), ran out of time or reset: not the node leaving.
		if err == nil {
			err = io.EOF
		}
		err, how = fmt.Errorf("%w: %w", ErrClosed, err), metrics.ClosedError
	case err == nil:
	case ls != nil && ls.superseded.Load():
		err, how = ErrSuperseded, metrics.ClosedError // counted by register
	default:
		how, err = a.classify(id, err)
	}
	if ch, ok := a.tracker.StreamEnded(id, how == metrics.ClosedEOF, a.clock.Now()); ok {
		a.logChange(ch)
	}
	a.obs.StreamClosedHow(how)
	if err != nil {
		return fmt.Errorf("heartbeat stream from %s: %w", id, err)
	}
	return nil
}

// readLoop is the hot path: one line, one decode, one Beat, no allocation
// for a steady sender. It takes one timestamp per chunk read: the lines of
// a chunk arrived together.
func (a *Aggregator) readLoop(id peer.ID, lr *lineReader) error {
	var (
		hb    wire.Heartbeat
		now   time.Time
		reads uint64
	)
	for {
		line, err := lr.next()
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if lr.reads != reads {
			reads, now = lr.reads, a.clock.Now()
		}
		if err := wire.DecodeLine(line, &hb); err != nil {
			return err
		}
		a.capLabels(&hb)
		ch, changed, err := a.tracker.Beat(id, &hb, now)
		if err != nil {
			return err
		}
		if changed {
			a.logChange(ch)
		}
		if a.beatLog {
			a.logBeat(id, &hb, now)
		}
		if a.hooks != nil && a.hooks.beat != nil {
			a.hooks.beat(id, &hb)
		}
	}
}

// classify maps the error that ended a stream to its rejection reason,
// counts and logs it, and returns how the stream closed for the metrics
// and the error to report (with our sentinel): "error" when the aggregator
// ended it, "reset" when the sender or the network did (not the peer's
// protocol fault: uncounted as a rejection, logged at DEBUG).
func (a *Aggregator) classify(id peer.ID, err error) (string, error) {
	var de *wire.DecodeError
	switch {
	case errors.As(err, &de):
		a.reject(id, string(de.Reason), err)
		return metrics.ClosedError, err
	case errors.Is(err, errLineBufferLimit):
		a.reject(id, metrics.ReasonResourceLimit, err)
		return metrics.ClosedError, err
	case errors.Is(err, errLineTooLong):
		err = fmt.Errorf("%w (limit %d bytes)", ErrLineTooLong, a.cfg.MaxLineBytes)
		a.reject(id, metrics.ReasonLineTooLong, err)
		return metrics.ClosedError, err
	case errors.Is(err, tracker.ErrFull):
		a.reject(id, metrics.ReasonTooManyNodes, err)
		return metrics.ClosedError, err
	case isTimeout(err):
		err = fmt.Errorf("%w (%v): %w", ErrIdleTimeout, a.cfg.IdleTimeout, err)
		a.reject(id, metrics.ReasonIdleTimeout, err)
		return metrics.ClosedError, err
	}
	select {
	case <-a.done:
		return metrics.ClosedError, fmt.Errorf("%w: %w", ErrClosed, err)
	default:
	}
	a.log.Debug("heartbeat stream ended", "peer_id", id.String(), "error", err)
	return metrics.ClosedReset, err
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// reject counts a rejection and logs it, rate-limited per peer. A
// superseded stream is routine (a sender reconnecting before the old
// stream died), and so is a paced one (GoAway past the accept rate): both
// log at INFO; the rest are faults and log at WARN.
func (a *Aggregator) reject(id peer.ID, reason string, err error) {
	a.obs.Rejected(reason)
	level := hclog.Warn
	if reason == metrics.ReasonSuperseded || reason == metrics.ReasonPaced {
		level = hclog.Info
	}
	if ok, suppressed := a.rejects.allow(id, a.clock.Now()); ok {
		a.log.Log(level, "heartbeat stream rejected", "peer_id", id.String(), "reason", reason,
			"suppressed", suppressed, "error", err)
	}
}

// logChange is the hook of every node state change (Beat, StreamEnded,
// Sweep, v1 and v2): it tells the dashboard, then logs the change in one
// line with JSON-friendly values.
func (a *Aggregator) logChange(ch tracker.Change) {
	if a.dash != nil {
		a.dash.Notify() // never blocks
	}
	if a.storeW != nil {
		a.storeChange(ch) // memory only: never waits on the database
	}
	level := hclog.Info
	if ch.To == tracker.Suspect || ch.To == tracker.Down {
		level = hclog.Warn
	}
	if level == hclog.Info && !a.log.IsInfo() || level == hclog.Warn && !a.log.IsWarn() {
		return
	}
	lastSeen := ""
	if n, ok := a.tracker.Node(ch.Peer); ok && !n.LastSeen.IsZero() {
		lastSeen = n.LastSeen.UTC().Format(time.RFC3339Nano)
	}
	a.log.Log(level, "node state changed", "peer_id", ch.Peer.String(), "nickname", logText(ch.Nickname),
		"from", ch.From.String(), "to", ch.To.String(), "last_seen", lastSeen,
		"at", ch.At.UTC().Format(time.RFC3339Nano))
}

func (a *Aggregator) logBeat(id peer.ID, hb *wire.Heartbeat, now time.Time) {
	a.log.Info("heartbeat", "peer_id", id.String(), "nickname", logText(hb.Nickname), "head", logText(hb.Head),
		"height", hb.Height, "miner_address", logText(wire.MinerAddressOf(hb.MinerAddress)),
		"miner_address_raw", logText(hb.MinerAddress), "genesis", logText(hb.Genesis),
		"at", now.UTC().Format(time.RFC3339Nano))
}

// sweep runs silence detection every SweepInterval on the aggregator's
// clock until Close. On a mock clock it Acks each tick after logging the
// changes, so a test that advances the clock sees them when it returns.
//
// Each sweep judges the nodes at its scheduled time (next), not at the
// moment it runs, like a Go timer's value. When the aggregator stalls
// (SIGSTOP, a long GC, a frozen VM) the heartbeats pile up unread in the
// kernel, and the late sweep must not count that time as the nodes'
// silence; the sweep after it comes one SweepInterval after the stall
// ended, when the handlers have read the backlog. So a stalled aggregator
// does not mark live nodes Suspect or Down, and there is no burst of
// catch-up sweeps. It logs the disruption guard's start (WARN) and end
// (INFO) once each.
func (a *Aggregator) sweep(t *clockwork.Timer, next time.Time) {
	defer close(a.sweepDone)
	defer t.Close()
	var (
		changes   []tracker.Change
		disrupted bool
		band      = healthBand(1)
	)
	for {
		select {
		case <-a.done:
			return
		case <-t.C():
			// Local health first: a sweep that fires late, a starved
			// scheduler or a GC pause raise the thresholds this sweep
			// judges by (health.go).
			l, health := a.health.observe(a.clock.Now().Sub(next))
			a.obs.Lag(metrics.LagSweep, l.sweep)
			a.obs.Lag(metrics.LagScheduler, l.sched)
			a.obs.Lag(metrics.LagGC, l.gc)
			a.tracker.SetHealth(health)
			band = a.logHealth(band, health, l)
			changes = a.tracker.Sweep(next, changes[:0])
			for _, ch := range changes {
				a.logChange(ch)
			}
			disrupted = a.logDisruption(disrupted, next)
			next = next.Add(a.cfg.SweepInterval)
			if now := a.clock.Now(); !next.After(now) {
				next = now.Add(a.cfg.SweepInterval) // late: restart from now
			}
			t.ResetAt(next)
			t.Ack()
		}
	}
}

// logHealth logs a change of the health band (WARN when it worsens, INFO
// when it improves) and returns the band now.
func (a *Aggregator) logHealth(was string, h tracker.Health, l lags) string {
	now := healthBand(h.Multiplier)
	if now == was {
		return now
	}
	level := hclog.Info
	if bandRank(now) > bandRank(was) {
		level = hclog.Warn
	}
	a.log.Log(level, "local health changed: Suspect and Down thresholds scaled", "from", was, "to", now,
		"multiplier", h.Multiplier, "lag", h.Lag.String(), "sweep_lag", l.sweep.String(),
		"scheduler_lag", l.sched.String(), "gc_pause", l.gc.String())
	return now
}

// logDisruption logs a change of the tracker's disrupted mode after a
// sweep at at and returns the mode.
func (a *Aggregator) logDisruption(was bool, at time.Time) bool {
	on, since := a.tracker.Disrupted()
	switch {
	case on && !was:
		s := a.tracker.Summary()
		a.log.Warn("disruption: most nodes fell silent at once; no node is marked Down until they beat again",
			"silent", s.ByState[tracker.Suspect], "up", s.ByState[tracker.Up],
			"fraction", a.tracker.Config().DisruptionFraction,
			"max_hold", a.tracker.Config().DisruptionMaxHold.String(),
			"since", since.UTC().Format(time.RFC3339Nano))
	case !on && was:
		s := a.tracker.Summary()
		a.log.Info("disruption over", "up", s.ByState[tracker.Up], "suspect", s.ByState[tracker.Suspect],
			"at", at.UTC().Format(time.RFC3339Nano))
	}
	return on
}

// rateLog allows one log line per peer per interval and counts the rest.
// Its map is bounded: when full it forgets expired entries, and if none has
// expired it stays silent (the counters still count).
type rateLog struct {
	every time.Duration
	max   int
	mu    sync.Mutex
	seen  map[peer.ID]rateEntry
}

type rateEntry struct {
	last       time.Time
	suppressed int
}

func newRateLog(every time.Duration, max int) *rateLog {
	return &rateLog{every: every, max: max, seen: make(map[peer.ID]rateEntry)}
}

// allow reports whether to log for id at now, and how many lines were
// suppressed since the last one logged.
func (r *rateLog) allow(id peer.ID, now time.Time) (bool, int) {
	if r.every < 0 {
		return true, 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.seen[id]
	if ok && now.Sub(e.last) < r.every {
		e.suppressed++
		r.seen[id] = e
		return false, 0
	}
	if !ok && len(r.seen) >= r.max {
		for k, v := range r.seen {
			if now.Sub(v.last) >= r.every {
				delete(r.seen, k)
			}
		}
		if len(r.seen) >= r.max {
			return false, 0
		}
	}
	r.seen[id] = rateEntry{last: now}
	return true, e.suppressed
}

// withHooks installs test hooks.
func withHooks(h *hooks) Option { return func(o *options) { o.hooks = h } }
