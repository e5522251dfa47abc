// Package loadgen is the engine of `heartbeat load`: many sender identities
// in one process, each a real heartbeat.Service on a libp2p host of its own
// (TCP, noise, yamux), beating to one aggregator. It is for sizing an
// aggregator: it counts what the senders saw (connected, beats written,
// write errors, reconnects) and its own GC pauses, so that a paused load
// generator is not mistaken for a slow aggregator.
//
// # Why one host and one Service per identity
//
// The aggregator authenticates a node by the secure channel's peer id, so
// each identity needs its own connection, hence its own libp2p host (the
// swarm is per identity). On that host the real Service (fsm, backoff,
// transport) costs little more than a bespoke loop: a goroutine, a timer
// and the fsm, against the host's own swarm, peerstore and identify. Using
// it means the load is what real nodes send, reconnect policy included.
// The hosts are lean: no listen addresses, no resource manager limits (the
// aggregator's limits are what is measured), no connection manager, no
// metrics.
//
// # Transports
//
// The transport is the target's: TCP (noise, yamux) for a /tcp/ target,
// one connection and one file descriptor per sender on each side; QUIC for
// a /udp/…/quic-v1 target. Over QUIC every sender host of a Generator dials
// through one shared quicreuse.ConnManager (libp2p.QUICReuse), hence one UDP
// socket for all of them, and the aggregator serves them all on its one
// listening socket: the open-files limit no longer bounds the number of
// senders. Each connection still has its own TLS handshake and identity.
package loadgen

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	quictpt "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/quicreuse"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/quic-go/quic-go"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/transport"
)

// Config describes one load run. Zero values take the defaults named.
type Config struct {
	// Target is the aggregator's multiaddr ending in /p2p/<peer-id>.
	Target string
	// Nodes is the number of sender identities (> 0).
	Nodes int
	// Period is each sender's beat period (default heartbeat.DefaultBeatPeriod).
	Period time.Duration
	// ReconnectPeriod is each sender's reconnect period (default
	// heartbeat.DefaultReconnectPeriod).
	ReconnectPeriod time.Duration
	// Ramp spreads the senders' starts evenly over this time (0: all at once,
	// paced only by DialConcurrency).
	Ramp time.Duration
	// DialConcurrency bounds the dials in flight across all senders
	// (default DefaultDialConcurrency): an unbounded storm of handshakes
	// measures the load generator's CPU, not the aggregator.
	DialConcurrency int
	// Protocol is what the senders offer: heartbeat.ProtocolV1 (the
	// default: the 2019 lines, whose period the aggregator learns; the
	// capacity figures of docs/benchmarks.md are v1), heartbeat.ProtocolV2
	// (Hello with the declared period, Beats, Acks) or
	// heartbeat.ProtocolAuto (v2, then v1).
	Protocol string
	// Log receives the generator's own lines (default: none). The senders
	// themselves log nothing (50,000 senders would drown the output): their
	// failures are counted, and the last one is in Stats.LastError.
	Log hclog.Logger
	// Trace, if set, receives one line per sender event, for telling the
	// aggregator's Suspect transitions of senders that kept beating from
	// those of senders that did not (internal/e2ebench/falsesuspect):
	//
	//	<unix-ms> <peer-id> up             the stream is open (fsm Beating)
	//	<unix-ms> <peer-id> lost           it is not any more
	//	<unix-ms> <peer-id> late <gap-ms>  a beat written more than
	//	                                   LateFactor × Period after the
	//	                                   previous one on the same stream:
	//	                                   this generator sent late
	//
	// Lines are buffered; Run flushes them before it returns.
	Trace io.Writer
}

// LateFactor × Period is the gap between two beats written on one stream
// past which the trace calls the second one late: the sender's own timer
// or the generator's scheduler delayed it, not the aggregator.
const LateFactor = 1.5

// startWorkers is the number of goroutines building sender hosts.
const startWorkers = 16

// DefaultDialConcurrency is the default bound on dials in flight.
const DefaultDialConcurrency = 256

func (c Config) withDefaults() (Config, error) {
	if c.Target == "" {
		return c, errors.New("loadgen: Target is required")
	}
	if _, err := heartbeat.ParseTarget(c.Target); err != nil {
		return c, fmt.Errorf("loadgen: Target: %w", err)
	}
	if c.Nodes <= 0 {
		return c, fmt.Errorf("loadgen: Nodes %d: want > 0", c.Nodes)
	}
	if c.Period == 0 {
		c.Period = heartbeat.DefaultBeatPeriod
	}
	if c.Period < 0 {
		return c, fmt.Errorf("loadgen: Period %v: want > 0", c.Period)
	}
	if c.ReconnectPeriod == 0 {
		c.ReconnectPeriod = heartbeat.DefaultReconnectPeriod
	}
	if c.ReconnectPeriod < 0 {
		return c, fmt.Errorf("loadgen: ReconnectPeriod %v: want > 0", c.ReconnectPeriod)
	}
	if c.Ramp < 0 {
		return c, fmt.Errorf("loadgen: Ramp %v: want >= 0", c.Ramp)
	}
	if c.DialConcurrency == 0 {
		c.DialConcurrency = DefaultDialConcurrency
	}
	if c.DialConcurrency < 0 {
		return c, fmt.Errorf("loadgen: DialConcurrency %d: want > 0", c.DialConcurrency)
	}
	switch c.Protocol {
	case "":
		c.Protocol = heartbeat.ProtocolV1
	case heartbeat.ProtocolV1, heartbeat.ProtocolV2, heartbeat.ProtocolAuto:
	default:
		return c, fmt.Errorf("loadgen: Protocol %q: want %q, %q or %q", c.Protocol,
			heartbeat.ProtocolV1, heartbeat.ProtocolV2, heartbeat.ProtocolAuto)
	}
	if c.Log == nil {
		c.Log = hclog.NewNullLogger()
	}
	return c, nil
}

// Stats is a snapshot of a run. Counts are totals since Run started.
type Stats struct {
	// Started is the number of senders started (hosts built, Services running).
	Started int
	// Connected is the number of senders whose stream is open (fsm Beating).
	Connected int
	// Beaten is the number of senders that wrote at least one beat.
	Beaten int
	// BeatsWritten counts heartbeats written; WriteErrors failed or timed-out
	// writes; DialErrors failed or timed-out dials.
	BeatsWritten, WriteErrors, DialErrors uint64
	// Reconnects counts streams opened by a sender that had one before.
	Reconnects uint64
	// HostErrors counts senders that could not be built (e.g. out of file
	// descriptors); they are not retried.
	HostErrors uint64
	// GCCycles, GCPauseTotal and GCPauseMax are this process's garbage
	// collections since Run started (runtime/metrics /gc/pauses:seconds,
	// stop-the-world pauses; the max is the histogram bucket's upper edge).
	GCCycles     uint64
	GCPauseTotal time.Duration
	GCPauseMax   time.Duration
	// SchedLatencyP99 is the p99 time goroutines waited to run since Run
	// started (/sched/latencies:seconds): a saturated generator writes late.
	SchedLatencyP99 time.Duration
	// LastError is the last dial or write error a sender saw, nil if none.
	LastError error
}

// Generator runs the senders of one Config.
type Generator struct {
	cfg    Config
	target peer.AddrInfo
	sem    chan struct{}

	connected  atomic.Int64
	started    atomic.Int64
	beats      atomic.Uint64
	writeErrs  atomic.Uint64
	dialErrs   atomic.Uint64
	reconnects atomic.Uint64
	hostErrs   atomic.Uint64
	lastErr    atomic.Pointer[error]
	beaten     atomic.Int64 // senders that wrote at least one beat

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when Started, Connected or Beaten changes

	rt0 atomic.Pointer[rtSample] // runtime metrics at the start of Run

	quic bool // the target is QUIC: hosts share quicCM
	// quicCM is the one QUIC connection manager (one UDP socket) every
	// sender host dials through; Run closes it after the hosts.
	quicCM *quicreuse.ConnManager

	traceMu sync.Mutex
	trace   *bufio.Writer // nil without Config.Trace
}

// New validates cfg, naming the bad field.
func New(cfg Config) (*Generator, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	target, _ := heartbeat.ParseTarget(cfg.Target)
	g := &Generator{cfg: cfg, target: target, sem: make(chan struct{}, cfg.DialConcurrency),
		changed: make(chan struct{})}
	for _, a := range target.Addrs {
		if _, err := a.ValueForProtocol(ma.P_QUIC_V1); err == nil {
			g.quic = true
		}
	}
	if cfg.Trace != nil {
		g.trace = bufio.NewWriterSize(cfg.Trace, 64<<10)
	}
	return g, nil
}

// newQUICConnManager is the connection manager all sender hosts share. The
// stateless-reset and token keys matter only to a listener, which the
// senders are not; they are random per run.
func newQUICConnManager() (*quicreuse.ConnManager, error) {
	var reset quic.StatelessResetKey
	var token quic.TokenGeneratorKey
	if _, err := rand.Read(reset[:]); err != nil {
		return nil, fmt.Errorf("quic reset key: %w", err)
	}
	if _, err := rand.Read(token[:]); err != nil {
		return nil, fmt.Errorf("quic token key: %w", err)
	}
	return quicreuse.NewConnManager(reset, token)
}

// Changed returns a channel closed at the next change of Stats.Started,
// Connected or Beaten, so that a caller can wait for a condition without
// polling. Beat counts alone do not signal it.
func (g *Generator) Changed() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

func (g *Generator) notify() {
	g.mu.Lock()
	close(g.changed)
	g.changed = make(chan struct{})
	g.mu.Unlock()
}

// node is one sender identity.
type node struct {
	h   host.Host
	id  string // h.ID(), for the trace
	svc *heartbeat.Service
	// beating, wasConnected, beat and lastWrite are read and written on
	// the Service's goroutine only.
	beating, wasConnected, beat bool
	lastWrite                   time.Time // zero: no beat on this stream yet
}

// Run starts the senders (spread over Ramp) and keeps them beating until
// ctx is done, then stops every Service (a clean half-close, as a stopping
// node does) and closes every host. No goroutine outlives it. It returns
// nil when ctx ended it.
func (g *Generator) Run(ctx context.Context) error {
	rt0 := readRuntime()
	g.rt0.Store(&rt0)
	if g.quic {
		cm, err := newQUICConnManager()
		if err != nil {
			return fmt.Errorf("loadgen: %w", err)
		}
		g.quicCM = cm
		defer cm.Close() // after the hosts (deferred below, so run first)
	}
	defer g.flushTrace()
	var (
		mu    sync.Mutex
		nodes []*node
	)
	defer func() {
		// Stop in parallel: each Service's stop waits up to its close
		// timeout for the aggregator's EOF.
		var wg sync.WaitGroup
		for _, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n.svc.Close()
				n.h.Close()
			}()
		}
		wg.Wait()
	}()
	var step time.Duration
	if g.cfg.Nodes > 1 {
		step = g.cfg.Ramp / time.Duration(g.cfg.Nodes-1)
	}
	// Builders: building a host waits on more than the CPU (so one
	// goroutine would start about 100 a second), and the ramp paces them.
	next := make(chan int)
	var wg sync.WaitGroup
	for range startWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				n, err := g.startNode(ctx, i)
				if err != nil {
					if ctx.Err() != nil {
						continue // stopping: not a sender that failed
					}
					if g.hostErrs.Add(1) == 1 {
						g.cfg.Log.Error("sender not started", "node", i, "error", err)
					}
					continue
				}
				mu.Lock()
				nodes = append(nodes, n)
				mu.Unlock()
				g.started.Add(1)
				g.notify()
			}
		}()
	}
	start := time.Now()
	tick := time.NewTimer(0)
	defer tick.Stop()
feed:
	for i := range g.cfg.Nodes {
		if step > 0 {
			tick.Reset(time.Until(start.Add(time.Duration(i) * step)))
			select {
			case <-ctx.Done():
				break feed
			case <-tick.C:
			}
		}
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	<-ctx.Done()
	return nil
}

// startNode builds identity i's host and starts its Service.
func (g *Generator) startNode(ctx context.Context, i int) (*node, error) {
	opts := []libp2p.Option{libp2p.NoListenAddrs,
		libp2p.ResourceManager(&network.NullResourceManager{}),
		// A sender has one connection: go-libp2p's default manager (its
		// decayer and tag maps, about 30 KiB per host) trims nothing.
		libp2p.ConnectionManager(&connmgr.NullConnMgr{}),
		libp2p.DisableMetrics(),
		libp2p.Ping(false)}
	if g.quic {
		cm := g.quicCM
		opts = append(opts, libp2p.Transport(quictpt.NewTransport),
			// Not the host's own manager: the host would close it.
			libp2p.QUICReuse(func() (*quicreuse.ConnManager, error) { return cm, nil }))
	} else {
		opts = append(opts, libp2p.Transport(tcp.NewTCPTransport),
			libp2p.Security(noise.ID, noise.New),
			libp2p.Muxer(yamux.ID, yamux.DefaultTransport))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("sender host %d: %w", i, err)
	}
	n := &node{h: h, id: h.ID().String()}
	cfg := heartbeat.Config{BeatTarget: g.cfg.Target, BeatPeriod: g.cfg.Period.String(),
		ReconnectPeriod: g.cfg.ReconnectPeriod.String(), Nickname: fmt.Sprintf("load-%d", i), Protocol: g.cfg.Protocol}
	// The Service's own dialer, wrapped below, offers what it would.
	ld, err := transport.NewLibp2p(h,
		transport.WithDialTimeout(transport.BackstopFactor*fsm.DefaultDialTimeout),
		transport.WithWriteTimeout(transport.BackstopFactor*fsm.DefaultWriteTimeout),
		transport.WithProtocols(offers(g.cfg.Protocol)...))
	if err != nil {
		_ = h.Close()
		return nil, fmt.Errorf("sender dialer %d: %w", i, err)
	}
	d := limitedDialer{d: ld, sem: g.sem}
	head := func() (heartbeat.ChainHead, error) {
		return heartbeat.ChainHead{Head: "{ bafy2bzaceloadgenerator }", Height: uint64(i)}, nil
	}
	svc, err := heartbeat.New(h, cfg, head,
		heartbeat.WithTransport(d),
		heartbeat.WithLogger(hclog.NewNullLogger()),
		heartbeat.WithObserver(func(o heartbeat.Observation) { g.observe(n, o) }))
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("sender %d: %w", i, err)
	}
	n.svc = svc
	if err := svc.Start(ctx); err != nil {
		h.Close()
		return nil, fmt.Errorf("sender %d: %w", i, err)
	}
	return n, nil
}

// offers is the protocol ids a sender offers for Config.Protocol, in
// preference order, as the Service's own dialer would.
func offers(p string) []protocol.ID {
	switch p {
	case heartbeat.ProtocolV2:
		return []protocol.ID{heartbeat.ProtocolIDV2}
	case heartbeat.ProtocolAuto:
		return []protocol.ID{heartbeat.ProtocolIDV2, heartbeat.ProtocolID}
	}
	return []protocol.ID{heartbeat.ProtocolID}
}

// observe counts one Service event; it runs on that Service's goroutine.
func (g *Generator) observe(n *node, o heartbeat.Observation) {
	switch o.Event.Kind {
	case fsm.WriteSucceeded:
		g.beats.Add(1)
		if g.trace != nil {
			if gap := o.At.Sub(n.lastWrite); !n.lastWrite.IsZero() && gap > time.Duration(LateFactor*float64(g.cfg.Period)) {
				g.traceLine(o.At, n.id, "late", gap.Milliseconds())
			}
			n.lastWrite = o.At
		}
		if !n.beat {
			n.beat = true
			g.beaten.Add(1)
			g.notify()
		}
	case fsm.WriteFailed, fsm.WriteTimedOut:
		g.writeErrs.Add(1)
		g.setErr(o.Event)
	case fsm.DialFailed, fsm.DialTimedOut:
		g.dialErrs.Add(1)
		g.setErr(o.Event)
	}
	beating := o.To == fsm.Beating
	if beating == n.beating {
		return
	}
	n.beating = beating
	n.lastWrite = time.Time{}
	if g.trace != nil {
		g.traceLine(o.At, n.id, map[bool]string{true: "up", false: "lost"}[beating], -1)
	}
	if beating {
		g.connected.Add(1)
		if n.wasConnected {
			g.reconnects.Add(1)
		}
		n.wasConnected = true
	} else {
		g.connected.Add(-1)
	}
	g.notify()
}

// traceLine writes one trace line; gap < 0 writes none.
func (g *Generator) traceLine(at time.Time, id, event string, gap int64) {
	g.traceMu.Lock()
	defer g.traceMu.Unlock()
	if gap >= 0 {
		fmt.Fprintf(g.trace, "%d %s %s %d\n", at.UnixMilli(), id, event, gap)
		return
	}
	fmt.Fprintf(g.trace, "%d %s %s\n", at.UnixMilli(), id, event)
}

func (g *Generator) flushTrace() {
	if g.trace == nil {
		return
	}
	g.traceMu.Lock()
	defer g.traceMu.Unlock()
	if err := g.trace.Flush(); err != nil {
		g.cfg.Log.Error("trace not written", "error", err)
	}
}

func (g *Generator) setErr(ev fsm.Event) {
	err := ev.Err
	if err == nil {
		err = fmt.Errorf("%s", ev.Kind)
	}
	g.lastErr.Store(&err)
}

// Stats returns the counts so far.
func (g *Generator) Stats() Stats {
	rt := readRuntime()
	rt0 := rt
	if p := g.rt0.Load(); p != nil {
		rt0 = *p
	}
	s := Stats{
		Started:      int(g.started.Load()),
		Connected:    int(g.connected.Load()),
		Beaten:       int(g.beaten.Load()),
		BeatsWritten: g.beats.Load(),
		WriteErrors:  g.writeErrs.Load(),
		DialErrors:   g.dialErrs.Load(),
		Reconnects:   g.reconnects.Load(),
		HostErrors:   g.hostErrs.Load(),
	}
	if p := g.lastErr.Load(); p != nil {
		s.LastError = *p
	}
	pauses := rt.gcPauses.sub(rt0.gcPauses)
	s.GCCycles = pauses.count()
	s.GCPauseTotal = pauses.sum()
	s.GCPauseMax = pauses.quantile(1)
	s.SchedLatencyP99 = rt.sched.sub(rt0.sched).quantile(0.99)
	return s
}

// limitedDialer bounds the dials in flight across all senders.
type limitedDialer struct {
	d   transport.Dialer
	sem chan struct{}
}

func (l limitedDialer) Dial(ctx context.Context, target peer.AddrInfo) (transport.Stream, error) {
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for a dial slot: %w", transport.ErrDialFailed, ctx.Err())
	}
	defer func() { <-l.sem }()
	return l.d.Dial(ctx, target)
}

// rtSample is the runtime/metrics histograms the generator reports.
type rtSample struct{ gcPauses, sched hist }

const (
	metricGCPauses = "/gc/pauses:seconds"
	metricSched    = "/sched/latencies:seconds"
)

func readRuntime() rtSample {
	s := []metrics.Sample{{Name: metricGCPauses}, {Name: metricSched}}
	metrics.Read(s)
	return rtSample{gcPauses: histOf(s[0]), sched: histOf(s[1])}
}

// hist is a copy of a runtime/metrics Float64Histogram (seconds).
type hist struct {
	counts  []uint64
	buckets []float64
}

func histOf(s metrics.Sample) hist {
	if s.Value.Kind() != metrics.KindFloat64Histogram {
		return hist{}
	}
	h := s.Value.Float64Histogram()
	return hist{counts: append([]uint64(nil), h.Counts...), buckets: h.Buckets}
}

// sub is h minus an earlier sample of the same histogram.
func (h hist) sub(old hist) hist {
	out := hist{counts: append([]uint64(nil), h.counts...), buckets: h.buckets}
	if len(old.counts) == len(out.counts) {
		for i := range out.counts {
			out.counts[i] -= old.counts[i]
		}
	}
	return out
}

func (h hist) count() uint64 {
	var n uint64
	for _, c := range h.counts {
		n += c
	}
	return n
}

// sum estimates the total from bucket midpoints (the runtime keeps no sum).
func (h hist) sum() time.Duration {
	var s float64
	for i, c := range h.counts {
		lo, hi := h.buckets[i], h.buckets[i+1]
		if math.IsInf(lo, -1) {
			lo = 0
		}
		if math.IsInf(hi, 1) {
			hi = lo
		}
		s += float64(c) * (lo + hi) / 2
	}
	return seconds(s)
}

// quantile returns the upper edge of the bucket holding quantile q (0 when
// empty; the lower edge for the open last bucket).
func (h hist) quantile(q float64) time.Duration {
	n := h.count()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			hi := h.buckets[i+1]
			if math.IsInf(hi, 1) {
				hi = h.buckets[i]
			}
			return seconds(hi)
		}
	}
	return 0
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
