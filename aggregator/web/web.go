// Package web is the aggregator's live dashboard: one page (plain HTML, CSS
// and JavaScript embedded with embed.FS: no CDN, no build step) and the
// server-sent events that keep it live.
//
//	GET /                       the page
//	GET /static/{file}          its assets
//	GET /api/events             text/event-stream: one "snapshot", then "delta"s
//	GET /api/history/{peer}     one node's flips and heights (?from=&to=, RFC 3339)
//
// # Events
//
// A Dashboard reads a Source (the fleet now) on its refresh goroutine,
// every RefreshInterval on its clock and when Notify is called (at most
// once per NotifyInterval), and broadcasts what changed since the last read
// as one "delta" event: the nodes that changed, the peers that went away,
// the summary, and the server's time. A new subscriber first gets a "snapshot" of every node.
// Each event is encoded once and shared by every subscriber.
//
// With WithUptimes, the node table's uptime column (Node.Uptime24h) comes
// from the store: read for every node in one query, at most once per
// UptimeInterval on the dashboard's clock, and only while someone watches
// (a refresh finds the last read older than that and starts the next one
// in the background; the page gets the new values with the refresh that
// follows). Neither a page load nor an event causes a query of its own.
// The dashboard keeps the figures of the nodes on its table only.
//
// A node whose only change is its last-seen time is sent at most once per
// LastSeenResolution, so that a steady fleet of 10,000 nodes beating every
// 3 s costs a subscriber a few hundred nodes a second, not all of them.
//
// # Bounds
//
// At most MaxSubscribers streams are served at once; past that /api/events
// answers 503 and counts the refusal. Each subscriber has a queue of
// SubscriberBuffer events; the refresh goroutine never waits for a
// subscriber: one whose queue is full is dropped (its stream ends, counted)
// and its browser reconnects and gets a fresh snapshot. Notify never
// blocks: it only sets a flag, so the aggregator may call it on its ingest
// path.
package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pbeat/heartbeat/clockwork"
)

// The screenshots in docs/img are made from a live run, so they are not
// reproducible byte for byte and stay out of `go generate ./...` (which must
// leave the tree unchanged). Regenerate them with:
//
//	go test ./aggregator/web -run '^TestDashboardScreenshot$' -screenshot ../../docs/img/dashboard.png

// Defaults applied by New.
const (
	// DefaultRefreshInterval is how often the Source is read when Notify
	// is not called: the delay with which heights and last-seen times
	// reach the page.
	DefaultRefreshInterval = time.Second
	// DefaultNotifyInterval is the least time between two refreshes caused
	// by Notify, so that a storm of changes (every node flipping at once)
	// costs a few refreshes a second, not one per change. Wall clock: it
	// protects the CPU.
	DefaultNotifyInterval = 250 * time.Millisecond
	// DefaultLastSeenResolution: a change of last-seen alone is sent once
	// it is at least this much newer than what the page has.
	DefaultLastSeenResolution = 10 * time.Second
	// DefaultMaxSubscribers bounds the open /api/events streams.
	DefaultMaxSubscribers = 64
	// DefaultSubscriberBuffer is the events queued per subscriber before it
	// counts as slow and is dropped.
	DefaultSubscriberBuffer = 16
	// DefaultKeepAlive is the wall-clock interval of the SSE comment lines
	// that keep idle proxies from closing the stream.
	DefaultKeepAlive = 15 * time.Second
	// DefaultWriteTimeout bounds one event's write to a subscriber (wall
	// clock); a client that reads nothing for that long is cut off.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultHistoryRange is the range /api/history serves without
	// from/to; MaxHistoryRange is the widest it accepts.
	DefaultHistoryRange = 24 * time.Hour
	MaxHistoryRange     = 31 * 24 * time.Hour
	// MaxHistoryPoints bounds the flips and, separately, the height samples
	// of one /api/history answer (the newest are kept).
	MaxHistoryPoints = 5000
	// UptimeWindow is the window of the node table's uptime column, and
	// UptimeInterval the least time between two reads of the Uptimes (on
	// the dashboard's clock); a read still running then is given up.
	UptimeWindow   = 24 * time.Hour
	UptimeInterval = time.Minute
)

// ErrTooManySubscribers is returned by Subscribe (and answered as 503 by
// /api/events) past MaxSubscribers.
var ErrTooManySubscribers = errors.New("web: too many dashboard subscribers (MaxSubscribers)")

// ErrClosed is returned by Subscribe after Close.
var ErrClosed = errors.New("web: dashboard closed")

// Option configures New.
type Option func(*options)

type options struct {
	clock        clockwork.Clock
	refresh      time.Duration
	notifyEvery  time.Duration
	lastSeenRes  time.Duration
	maxSubs      int
	subBuf       int
	keepAlive    time.Duration
	writeTimeout time.Duration
	history      History
	uptimes      Uptimes
	started      time.Time
	reg          prometheus.Registerer
	log          hclog.Logger
}

// WithClock sets the clock of the refresh timer and of the times sent to
// the page (default: the wall clock). Pass the aggregator's clock.
func WithClock(c clockwork.Clock) Option { return func(o *options) { o.clock = c } }

// WithRefreshInterval sets DefaultRefreshInterval's value; it must be
// positive.
func WithRefreshInterval(d time.Duration) Option { return func(o *options) { o.refresh = d } }

// WithNotifyInterval sets DefaultNotifyInterval's value; it must be
// positive.
func WithNotifyInterval(d time.Duration) Option { return func(o *options) { o.notifyEvery = d } }

// WithLastSeenResolution sets DefaultLastSeenResolution's value; 0 sends
// every change of last-seen.
func WithLastSeenResolution(d time.Duration) Option {
	return func(o *options) { o.lastSeenRes = d }
}

// WithMaxSubscribers sets DefaultMaxSubscribers's value; at least 1.
func WithMaxSubscribers(n int) Option { return func(o *options) { o.maxSubs = n } }

// WithSubscriberBuffer sets DefaultSubscriberBuffer's value; at least 1.
func WithSubscriberBuffer(n int) Option { return func(o *options) { o.subBuf = n } }

// WithKeepAlive sets DefaultKeepAlive's value; it must be positive.
func WithKeepAlive(d time.Duration) Option { return func(o *options) { o.keepAlive = d } }

// WithWriteTimeout sets DefaultWriteTimeout's value; it must be positive.
func WithWriteTimeout(d time.Duration) Option { return func(o *options) { o.writeTimeout = d } }

// WithHistory sets the per-node history source (default none: the page
// says "no history").
func WithHistory(h History) Option { return func(o *options) { o.history = h } }

// WithUptimes sets the source of the node table's uptime column (default
// none: the column shows Unknown unless the Source fills it).
func WithUptimes(u Uptimes) Option { return func(o *options) { o.uptimes = u } }

// WithStarted sets the aggregator's start time, from which the page shows
// its uptime (default: the clock's now at New).
func WithStarted(t time.Time) Option { return func(o *options) { o.started = t } }

// WithRegisterer registers the dashboard's metrics on r (default: none):
//
//	heartbeat_dashboard_subscribers                  open /api/events streams
//	heartbeat_dashboard_subscribers_refused_total    refused past MaxSubscribers (503)
//	heartbeat_dashboard_subscribers_dropped_total    dropped because their queue was full
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.reg = r } }

// WithLogger sets the logger (default: none).
func WithLogger(l hclog.Logger) Option { return func(o *options) { o.log = l } }

// Stats are the dashboard's counters.
type Stats struct {
	// Subscribers is the number of open /api/events streams.
	Subscribers int
	// Refused counts subscriptions refused past MaxSubscribers.
	Refused uint64
	// Dropped counts subscribers dropped because their queue was full.
	Dropped uint64
	// Refreshes counts reads of the Source.
	Refreshes uint64
}

// Dashboard serves the page and its events (it is an http.Handler). Create
// it with New and stop it with Close.
type Dashboard struct {
	src  Source
	opts options
	log  hclog.Logger
	mux  *http.ServeMux

	notify chan struct{} // one slot: a pending Notify
	done   chan struct{}
	loop   sync.WaitGroup // the refresh goroutine and a read of the Uptimes
	// ctx ends a read of the Uptimes in flight when Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	subs    map[*subscriber]struct{}
	prev    map[string]Node // what every subscriber has, by peer
	sent    map[string]int64
	sum     Summary // of the last refresh
	scratch []Node
	seen    map[string]struct{} // scratch set of the peers read
	// uptime is the last read of the Uptimes (nil: none yet, or it
	// failed), uptimeAt when that read started on the clock, uptimeBusy
	// whether one is running.
	uptime     map[string]float64
	uptimeAt   time.Time
	uptimeBusy bool

	onRemove func() // test hook, under mu: a subscriber was removed

	refused, dropped, refreshes atomic.Uint64
	nsubs                       atomic.Int64
}

// subscriber is one /api/events stream.
type subscriber struct {
	ch      chan []byte // encoded events; closed when dropped or on Close
	dropped bool
}

// New returns a dashboard over src and starts its refresh goroutine. It
// returns an error naming the option when one is invalid.
func New(src Source, opts ...Option) (*Dashboard, error) {
	if src == nil {
		return nil, errors.New("web: nil Source")
	}
	o := options{
		clock:        clockwork.Real(),
		refresh:      DefaultRefreshInterval,
		notifyEvery:  DefaultNotifyInterval,
		lastSeenRes:  DefaultLastSeenResolution,
		maxSubs:      DefaultMaxSubscribers,
		subBuf:       DefaultSubscriberBuffer,
		keepAlive:    DefaultKeepAlive,
		writeTimeout: DefaultWriteTimeout,
		log:          hclog.NewNullLogger(),
	}
	for _, opt := range opts {
		opt(&o)
	}
	switch {
	case o.clock == nil:
		return nil, errors.New("web: WithClock: nil clock")
	case o.refresh <= 0:
		return nil, fmt.Errorf("web: WithRefreshInterval (%v) must be positive", o.refresh)
	case o.notifyEvery <= 0:
		return nil, fmt.Errorf("web: WithNotifyInterval (%v) must be positive", o.notifyEvery)
	case o.lastSeenRes < 0:
		return nil, fmt.Errorf("web: WithLastSeenResolution (%v) must not be negative", o.lastSeenRes)
	case o.maxSubs < 1:
		return nil, fmt.Errorf("web: WithMaxSubscribers (%d) must be at least 1", o.maxSubs)
	case o.subBuf < 1:
		return nil, fmt.Errorf("web: WithSubscriberBuffer (%d) must be at least 1", o.subBuf)
	case o.keepAlive <= 0:
		return nil, fmt.Errorf("web: WithKeepAlive (%v) must be positive", o.keepAlive)
	case o.writeTimeout <= 0:
		return nil, fmt.Errorf("web: WithWriteTimeout (%v) must be positive", o.writeTimeout)
	}
	if o.log == nil {
		o.log = hclog.NewNullLogger()
	}
	if o.started.IsZero() {
		o.started = o.clock.Now()
	}
	d := &Dashboard{
		src:    src,
		opts:   o,
		log:    o.log.Named("web"),
		notify: make(chan struct{}, 1),
		done:   make(chan struct{}),
		subs:   make(map[*subscriber]struct{}),
		prev:   make(map[string]Node),
		sent:   make(map[string]int64),
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	if o.reg != nil {
		if err := d.register(o.reg); err != nil {
			return nil, err
		}
	}
	d.mux = d.routes()
	// Armed before New returns, so a test advancing a mock clock right
	// after New cannot miss the first refresh (as the aggregator's sweeper).
	timer := clockwork.NewTimer(o.clock)
	next := o.clock.Now().Add(o.refresh)
	timer.ResetAt(next)
	d.loop.Add(1)
	go d.run(timer, next)
	return d, nil
}

func (d *Dashboard) register(r prometheus.Registerer) error {
	cs := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "heartbeat_dashboard_subscribers",
			Help: "Open dashboard event streams (GET /api/events).",
		}, func() float64 { return float64(d.nsubs.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "heartbeat_dashboard_subscribers_refused_total",
			Help: "Dashboard event streams refused (503) because MaxSubscribers were open.",
		}, func() float64 { return float64(d.refused.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "heartbeat_dashboard_subscribers_dropped_total",
			Help: "Dashboard event streams dropped because the client read too slowly (queue full).",
		}, func() float64 { return float64(d.dropped.Load()) }),
	}
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("web: register metrics: %w", err)
		}
	}
	return nil
}

// Notify asks for a refresh as soon as possible: at once, or at the end of
// the NotifyInterval that follows the last Notify-driven refresh. It never
// blocks, and calls made while one is pending are merged. The aggregator
// calls it for every tracker.Change, so state changes reach the page
// without waiting for the next RefreshInterval.
func (d *Dashboard) Notify() {
	select {
	case d.notify <- struct{}{}:
	default:
	}
}

// Stats returns the dashboard's counters.
func (d *Dashboard) Stats() Stats {
	return Stats{
		Subscribers: int(d.nsubs.Load()),
		Refused:     d.refused.Load(),
		Dropped:     d.dropped.Load(),
		Refreshes:   d.refreshes.Load(),
	}
}

// Close stops the refresh goroutine and ends every event stream; it
// returns once the goroutine has returned. Open requests return shortly
// after (their handlers see their queue closed). Idempotent.
func (d *Dashboard) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		d.loop.Wait()
		return nil
	}
	d.closed = true
	for s := range d.subs {
		d.removeLocked(s)
	}
	d.mu.Unlock()
	close(d.done)
	d.cancel()
	d.loop.Wait()
	return nil
}

func (d *Dashboard) run(timer *clockwork.Timer, next time.Time) {
	defer d.loop.Done()
	defer timer.Close()
	// After a Notify-driven refresh, cool is the end of the quiet period
	// (DefaultNotifyInterval); a Notify inside it is held until then.
	var (
		cool    *time.Timer
		coolC   <-chan time.Time
		pending bool
	)
	defer func() {
		if cool != nil {
			cool.Stop()
		}
	}()
	startCool := func() {
		if cool == nil {
			cool = time.NewTimer(d.opts.notifyEvery)
		} else {
			cool.Reset(d.opts.notifyEvery)
		}
		coolC = cool.C
	}
	for {
		select {
		case <-d.done:
			return
		case <-d.notify:
			if coolC != nil {
				pending = true
				continue
			}
			d.refresh()
			startCool()
		case <-coolC:
			coolC = nil
			if pending {
				pending = false
				d.refresh()
				startCool()
			}
		case now := <-timer.C():
			d.refresh()
			next = next.Add(d.opts.refresh)
			if !next.After(now) {
				next = now.Add(d.opts.refresh)
			}
			timer.ResetAt(next)
			timer.Ack()
		}
	}
}

// refresh reads the source and broadcasts the delta, if any subscriber
// listens (with none it only marks prev stale: Subscribe refreshes).
func (d *Dashboard) refresh() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || len(d.subs) == 0 {
		return // prev goes stale; Subscribe refreshes it
	}
	d.refreshLocked()
}

// event is the JSON body of every SSE event.
type event struct {
	NowMs int64 `json:"now_ms"`
	// LastSeenResMs is the last-seen resolution: the page shows an age
	// below it as "< resolution".
	LastSeenResMs int64    `json:"last_seen_res_ms"`
	StartedMs     int64    `json:"started_ms"`
	Summary       Summary  `json:"summary"`
	Nodes         []Node   `json:"nodes"`
	Removed       []string `json:"removed,omitempty"`
	History       bool     `json:"history"`
}

// refreshLocked reads the source, updates prev and sends the delta to
// every subscriber. With no change but the clock, it still sends the
// summary and the time (a few hundred bytes), which doubles as liveness.
func (d *Dashboard) refreshLocked() {
	d.refreshes.Add(1)
	now := d.opts.clock.Now()
	d.scratch = d.src.Nodes(d.scratch[:0])
	sum := d.src.Summary()
	d.uptimesLocked(now)
	res := d.opts.lastSeenRes.Milliseconds()
	var (
		changed []Node
		removed []string
	)
	if d.seen == nil {
		d.seen = make(map[string]struct{}, len(d.scratch))
	}
	seen := d.seen
	clear(seen)
	for i := range d.scratch {
		n := d.scratch[i]
		seen[n.Peer] = struct{}{}
		old, ok := d.prev[n.Peer]
		d.prev[n.Peer] = n
		if ok && old.equalButLastSeen(&n) && n.LastSeenMs-d.sent[n.Peer] < res {
			continue
		}
		changed = append(changed, n)
		d.sent[n.Peer] = n.LastSeenMs
	}
	for p := range d.prev {
		if _, ok := seen[p]; !ok {
			delete(d.prev, p)
			delete(d.sent, p)
			removed = append(removed, p)
		}
	}
	clear(d.scratch) // no references to node strings between refreshes
	d.sum = sum
	msg := d.encode("delta", event{
		NowMs: now.UnixMilli(), StartedMs: d.opts.started.UnixMilli(), LastSeenResMs: res,
		Summary: sum, Nodes: changed, Removed: removed, History: d.opts.history != nil,
	})
	for s := range d.subs {
		d.sendLocked(s, msg)
	}
}

// uptimesLocked fills the nodes the Source left without uptime from the
// last read of the Uptimes, and starts the next read once the last one is
// UptimeInterval old.
func (d *Dashboard) uptimesLocked(now time.Time) {
	if d.opts.uptimes == nil {
		return
	}
	if !d.uptimeBusy && (d.uptimeAt.IsZero() || now.Sub(d.uptimeAt) >= UptimeInterval) {
		d.uptimeBusy, d.uptimeAt = true, now
		d.loop.Add(1) // not closed (the callers check under mu): Close waits for it
		go d.readUptimes(now)
	}
	for i := range d.scratch {
		n := &d.scratch[i]
		if n.Uptime24h != Unknown {
			continue
		}
		if u, ok := d.uptime[n.Peer]; ok {
			n.Uptime24h = u
		}
	}
}

// readUptimes reads the Uptimes of the UptimeWindow before now, then asks
// for a refresh to send them. A failed read is logged and shows every
// node's uptime as Unknown until the next one.
func (d *Dashboard) readUptimes(now time.Time) {
	defer d.loop.Done()
	ctx, cancel := context.WithTimeout(d.ctx, UptimeInterval)
	defer cancel()
	m, err := d.opts.uptimes.Uptimes(ctx, now.Add(-UptimeWindow), now)
	if err != nil {
		d.log.Warn("uptime of the nodes not read", "error", err)
		m = nil
	}
	for p, u := range m {
		// The page shows one decimal of a percent; rounding keeps a node
		// whose uptime moved less than that out of the next delta.
		m[p] = math.Round(u*1000) / 1000
	}
	d.mu.Lock()
	// Keep only the nodes on the table: a store shared by several
	// aggregators may know many more, and the table is bounded by the
	// Source (the tracker's MaxNodes).
	for p := range m {
		if _, ok := d.prev[p]; !ok {
			delete(m, p)
		}
	}
	d.uptime, d.uptimeBusy = m, false
	d.mu.Unlock()
	d.Notify()
}

// snapshotLocked encodes every node in prev.
func (d *Dashboard) snapshotLocked() []byte {
	nodes := make([]Node, 0, len(d.prev))
	for _, n := range d.prev {
		nodes = append(nodes, n)
	}
	return d.encode("snapshot", event{
		NowMs: d.opts.clock.Now().UnixMilli(), StartedMs: d.opts.started.UnixMilli(),
		LastSeenResMs: d.opts.lastSeenRes.Milliseconds(),
		Summary:       d.sum, Nodes: nodes, History: d.opts.history != nil,
	})
}

// encode renders one SSE event. JSON has no raw newline, so the body is
// one data line.
func (d *Dashboard) encode(name string, ev event) []byte {
	if ev.Nodes == nil {
		ev.Nodes = []Node{}
	}
	var b bytes.Buffer
	b.WriteString("event: ")
	b.WriteString(name)
	b.WriteString("\ndata: ")
	enc := json.NewEncoder(&b)
	// Our types always encode.
	_ = enc.Encode(ev) // ends with '\n'
	b.WriteString("\n")
	return b.Bytes()
}

// sendLocked queues msg for s without waiting; a full queue drops s.
func (d *Dashboard) sendLocked(s *subscriber, msg []byte) {
	select {
	case s.ch <- msg:
	default:
		s.dropped = true
		d.dropped.Add(1)
		d.removeLocked(s)
		d.log.Warn("dashboard subscriber dropped: queue full", "queue", d.opts.subBuf)
	}
}

func (d *Dashboard) removeLocked(s *subscriber) {
	if _, ok := d.subs[s]; !ok {
		return
	}
	delete(d.subs, s)
	d.nsubs.Add(-1)
	close(s.ch)
	if d.onRemove != nil {
		d.onRemove()
	}
}

// Subscribe registers a subscriber whose queue starts with a snapshot of
// every node. It fails with ErrTooManySubscribers past MaxSubscribers (and
// counts it) and with ErrClosed after Close. The caller must call the
// returned cancel function when it stops reading; the channel is closed
// when the subscriber is dropped, cancelled or the dashboard closes.
func (d *Dashboard) Subscribe() (<-chan []byte, func(), error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, nil, ErrClosed
	}
	if len(d.subs) >= d.opts.maxSubs {
		d.refused.Add(1)
		return nil, nil, ErrTooManySubscribers
	}
	// Bring prev (and the other subscribers) up to date first, so that
	// the snapshot and the deltas that follow it agree.
	d.refreshLocked()
	s := &subscriber{ch: make(chan []byte, d.opts.subBuf)}
	s.ch <- d.snapshotLocked()
	d.subs[s] = struct{}{}
	d.nsubs.Add(1)
	return s.ch, func() {
		d.mu.Lock()
		d.removeLocked(s)
		d.mu.Unlock()
	}, nil
}
