package aggregator

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	basicconnmgr "github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/wire"
)

// AllowGater is a connection gater that admits only the listed peers. It
// refuses the others as soon as the secure handshake has proved who they are
// (InterceptSecured), before any stream is opened, and never dials them
// (InterceptPeerDial). A nil *AllowGater admits everyone.
type AllowGater struct {
	allow   map[peer.ID]struct{}
	refused atomic.Uint64
	// onRefuse is set by the aggregator (WithGater) to count and log the
	// refusals; the gater exists before the aggregator does.
	onRefuse atomic.Pointer[func(peer.ID)]
}

var _ connmgr.ConnectionGater = (*AllowGater)(nil)

// Gater returns a gater that admits only the peers in allow, or nil (admit
// everyone) when allow is empty: an empty allowlist means "no allowlist",
// never "refuse all". Pass it to HostOptions and to New (WithGater).
func Gater(allow []peer.ID) *AllowGater {
	if len(allow) == 0 {
		return nil
	}
	g := &AllowGater{allow: make(map[peer.ID]struct{}, len(allow))}
	for _, id := range allow {
		g.allow[id] = struct{}{}
	}
	return g
}

// Allows reports whether p may connect.
func (g *AllowGater) Allows(p peer.ID) bool {
	if g == nil {
		return true
	}
	_, ok := g.allow[p]
	return ok
}

// Refused returns how many connections (and dials) the gater refused.
func (g *AllowGater) Refused() uint64 {
	if g == nil {
		return 0
	}
	return g.refused.Load()
}

func (g *AllowGater) check(p peer.ID) bool {
	if g.Allows(p) {
		return true
	}
	g.refused.Add(1)
	if f := g.onRefuse.Load(); f != nil {
		(*f)(p)
	}
	return false
}

// InterceptPeerDial refuses dials to peers outside the allowlist.
func (g *AllowGater) InterceptPeerDial(p peer.ID) bool { return g.check(p) }

// InterceptAddrDial allows every address of an allowed peer.
func (g *AllowGater) InterceptAddrDial(peer.ID, ma.Multiaddr) bool { return true }

// InterceptAccept allows every inbound connection: the peer is not known
// until the secure handshake.
func (g *AllowGater) InterceptAccept(network.ConnMultiaddrs) bool { return true }

// InterceptSecured refuses a connection, in either direction, from a peer
// outside the allowlist: the secure channel has just authenticated it.
func (g *AllowGater) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return g.check(p)
}

// InterceptUpgraded allows every connection that got this far.
func (g *AllowGater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return true, 0
}

// HostOptions returns the libp2p options an aggregator's host needs, for the
// embedder to pass to libp2p.New with its own (listen addresses, identity);
// NewHost does both and keeps listen errors matchable. Pass the same opts
// as to New: WithLogger (resource-manager refusals are logged), WithClock
// (the connection manager's clock) and WithRegistry (go-libp2p's metrics,
// the resource manager's included, go to the aggregator's registry).
//   - the transports: TCP without SO_REUSEPORT (tcp.DisableReuseport) and
//     QUIC. go-libp2p's TCP listener sets SO_REUSEPORT by default, so a
//     second aggregator (another key) could bind the same port and the
//     kernel would split the senders' connections between the two; without
//     it the second bind fails with EADDRINUSE. A sender may keep
//     reuseport: it only dials;
//   - a resource manager with ResourceLimits(cfg.MaxNodes, cfg.MaxLineBytes),
//     because go-libp2p's default limits refuse connections past a few
//     hundred peers. Its refusals are counted by go-libp2p's own reporter
//     (libp2p_rcmgr_blocked_resources) and logged at WARN, at most once per
//     RejectLogInterval, by a trace reporter (rcmgr.WithTraceReporter);
//   - go-libp2p's connection manager, closing connections that carry no
//     heartbeat stream: New protects a peer while it has one, and every
//     other connection is closed once older than IdleTimeout (its grace
//     period), at the next trim (every IdleTimeout/4). The connection
//     manager keeps at least one unprotected connection (its low water
//     mark; 0 would disable it). A stream-less flood of connections thus
//     holds the resource manager's slots for about IdleTimeout, not for ever;
//   - the allowlist gater g, when not nil (see Gater).
func HostOptions(cfg Config, g *AllowGater, opts ...Option) ([]libp2p.Option, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	o := applyOptions(opts)
	limits := ResourceLimits(cfg.MaxNodes, cfg.MaxLineBytes)
	refusals := newRefusalLog(o.log.Named("aggregator"), o.clock, cfg.RejectLogInterval)
	hopts := []libp2p.Option{
		libp2p.Transport(tcp.NewTCPTransport, tcp.DisableReuseport()),
		libp2p.Transport(quic.NewTransport),
		// Built when libp2p.New applies them, like go-libp2p's own defaults,
		// so that options that are never used start no goroutine.
		func(c *libp2p.Config) error {
			mgr, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits), rcmgr.WithTraceReporter(refusals))
			if err != nil {
				return fmt.Errorf("aggregator resource manager: %w", err)
			}
			return c.Apply(libp2p.ResourceManager(mgr))
		},
		func(c *libp2p.Config) error {
			cm, err := basicconnmgr.NewConnManager(idleLowWater, idleLowWater,
				basicconnmgr.WithGracePeriod(cfg.IdleTimeout),
				basicconnmgr.WithSilencePeriod(max(cfg.IdleTimeout/4, time.Millisecond)),
				basicconnmgr.WithClock(o.clock))
			if err != nil {
				return fmt.Errorf("aggregator connection manager: %w", err)
			}
			return c.Apply(libp2p.ConnectionManager(cm))
		},
	}
	if o.reg != nil {
		hopts = append(hopts, libp2p.PrometheusRegisterer(o.reg))
	}
	if g != nil {
		hopts = append(hopts, libp2p.ConnectionGater(g))
	}
	return hopts, nil
}

// idleLowWater is the connection manager's low and high water mark: trim
// whenever there is a connection, down to one. go-libp2p's manager treats
// 0 as "disabled".
const idleLowWater = 1

// protectTag is the connection manager tag New protects a peer with while
// it has a heartbeat stream.
const protectTag = wire.ServiceName

// refusalLog is a resource-manager trace reporter that logs refusals
// (blocked connections, streams, memory) at WARN, at most once per
// interval, with the number suppressed since the last line. go-libp2p's own
// reporter counts them. It is called synchronously on every resource
// event, so it returns at once for the others.
type refusalLog struct {
	log   hclog.Logger
	clock clockwork.Clock
	every time.Duration

	mu         sync.Mutex
	last       time.Time
	logged     bool
	suppressed int
}

func newRefusalLog(log hclog.Logger, clock clockwork.Clock, every time.Duration) *refusalLog {
	return &refusalLog{log: log, clock: clock, every: every}
}

// ConsumeEvent implements rcmgr.TraceReporter.
func (r *refusalLog) ConsumeEvent(evt rcmgr.TraceEvt) {
	var resource string
	switch evt.Type {
	case rcmgr.TraceBlockAddConnEvt:
		resource = "connection"
	case rcmgr.TraceBlockAddStreamEvt:
		resource = "stream"
	case rcmgr.TraceBlockReserveMemoryEvt:
		resource = "memory"
	default:
		return
	}
	now := r.clock.Now()
	r.mu.Lock()
	if r.logged && r.every >= 0 && now.Sub(r.last) < r.every {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	suppressed := r.suppressed
	r.last, r.logged, r.suppressed = now, true, 0
	r.mu.Unlock()
	r.log.Warn("resource manager refused", "resource", resource, "scope", evt.Name,
		"memory", evt.Memory, "suppressed", suppressed)
}

// NewHost starts the libp2p host of an aggregator: HostOptions(cfg, g,
// aggOpts...) followed by opts (identity, libp2p.ListenAddrs...). It listens on each of
// the listen addresses in opts itself, one by one, because libp2p.New
// flattens a listen error to text: here a port that another process holds
// gives an error that names the address, says "address already in use" and
// matches syscall.EADDRINUSE with errors.Is. Any listen error closes the
// host and is returned.
func NewHost(cfg Config, g *AllowGater, aggOpts []Option, opts ...libp2p.Option) (host.Host, error) {
	hopts, err := HostOptions(cfg, g, aggOpts...)
	if err != nil {
		return nil, err
	}
	// Read the listen addresses from opts, then build the host without them.
	var lc libp2p.Config
	if err := lc.Apply(opts...); err != nil {
		return nil, fmt.Errorf("aggregator host: %w", err)
	}
	all := append(append(hopts, opts...), libp2p.NoListenAddrs)
	h, err := libp2p.New(all...)
	if err != nil {
		return nil, fmt.Errorf("aggregator host: %w", err)
	}
	l, ok := h.Network().(interface{ AddListenAddr(ma.Multiaddr) error })
	for _, a := range lc.ListenAddrs {
		if ok {
			err = l.AddListenAddr(a)
		} else {
			err = h.Network().Listen(a)
		}
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("aggregator host: listen on %s: %w", a, err)
		}
	}
	return h, nil
}

// yamuxStreamWindow is the receive window go-libp2p's yamux reserves from a
// connection's resource scope for every stream it opens or accepts.
const yamuxStreamWindow = 256 << 10

// ResourceLimits returns resource-manager limits that admit maxNodes
// heartbeat senders at once (plus headroom), built on go-libp2p's
// auto-scaled defaults, which are never lowered:
//   - system and transient: maxNodes+headroom inbound connections (after an
//     aggregator restart every sender reconnects at once, and a new
//     connection is transient until its peer is known), four inbound streams
//     per connection (heartbeat, a superseding heartbeat, identify, ping),
//     one file descriptor per connection, and memory for yamux's
//     per-stream window reservation plus our line buffer;
//   - the heartbeat service and each protocol (v1 and v2): two streams per node (a newer
//     stream supersedes the older, which is briefly still open) and
//     maxLineBytes of memory per stream; per peer, four streams;
//   - identify (which runs on every new connection) scaled the same way.
//
// The memory figures are reservations, not resident memory: yamux reserves
// a 256 KiB window per stream but allocates buffers as data arrives. The
// process also needs an open-file limit above maxNodes (ulimit -n); the
// resource manager only accounts, the kernel enforces.
func ResourceLimits(maxNodes, maxLineBytes int) rcmgr.ConcreteLimitConfig {
	if maxNodes <= 0 {
		maxNodes = DefaultMaxNodes
	}
	if maxLineBytes <= 0 {
		maxLineBytes = DefaultMaxLineBytes
	}
	// A stream reserves its v1 line buffer or its v2 frame buffers.
	perStream := max(maxLineBytes+1, v2Reserve)
	scaling := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&scaling)
	defaults := scaling.AutoScale()

	headroom := max(64, maxNodes/8)
	conns := maxNodes + headroom
	streamsIn := 4 * conns
	ours := 2*maxNodes + headroom

	// Every value is raised to at least what the defaults give.
	grow := func(def rcmgr.BaseLimit, want rcmgr.BaseLimit) rcmgr.ResourceLimits {
		pick := func(d, w int) rcmgr.LimitVal { return rcmgr.LimitVal(max(d, w)) }
		return rcmgr.ResourceLimits{
			Streams:         pick(def.Streams, want.Streams),
			StreamsInbound:  pick(def.StreamsInbound, want.StreamsInbound),
			StreamsOutbound: pick(def.StreamsOutbound, want.StreamsOutbound),
			Conns:           pick(def.Conns, want.Conns),
			ConnsInbound:    pick(def.ConnsInbound, want.ConnsInbound),
			ConnsOutbound:   pick(def.ConnsOutbound, want.ConnsOutbound),
			FD:              pick(def.FD, want.FD),
			Memory:          rcmgr.LimitVal64(max(def.Memory, want.Memory)),
		}
	}
	base := defaults.ToPartialLimitConfig()
	def := func(l rcmgr.ResourceLimits) rcmgr.BaseLimit { return l.Build(rcmgr.BaseLimit{}) }

	connScope := rcmgr.BaseLimit{
		Conns:           conns + 256,
		ConnsInbound:    conns,
		ConnsOutbound:   256,
		Streams:         streamsIn + 1024,
		StreamsInbound:  streamsIn,
		StreamsOutbound: 1024,
		FD:              conns + 256,
		Memory:          int64(conns) * (2*yamuxStreamWindow + int64(perStream)),
	}
	oursScope := rcmgr.BaseLimit{
		Streams:        ours,
		StreamsInbound: ours,
		Memory:         int64(ours) * int64(perStream),
	}
	oursPeer := rcmgr.BaseLimit{Streams: 4, StreamsInbound: 4, Memory: 4 * int64(perStream)}
	identifyScope := rcmgr.BaseLimit{
		Streams: 2 * conns, StreamsInbound: conns, StreamsOutbound: conns,
	}

	partial := rcmgr.PartialLimitConfig{
		System:    grow(def(base.System), connScope),
		Transient: grow(def(base.Transient), connScope),
		Service: map[string]rcmgr.ResourceLimits{
			wire.ServiceName:     grow(def(base.ServiceDefault), oursScope),
			identify.ServiceName: grow(def(base.Service[identify.ServiceName]), identifyScope),
		},
		ServicePeer: map[string]rcmgr.ResourceLimits{
			wire.ServiceName: grow(def(base.ServicePeerDefault), oursPeer),
		},
		// Both protocols: a protocol without its own entry gets go-libp2p's
		// default protocol limit (1,265 inbound streams here), which
		// stopped a 5,000-node v2 fleet at 1,265 nodes.
		Protocol: map[protocol.ID]rcmgr.ResourceLimits{
			wire.ProtocolID:   grow(def(base.ProtocolDefault), oursScope),
			wire.ProtocolIDV2: grow(def(base.ProtocolDefault), oursScope),
			identify.ID:       grow(def(base.Protocol[identify.ID]), identifyScope),
		},
		ProtocolPeer: map[protocol.ID]rcmgr.ResourceLimits{
			wire.ProtocolID:   grow(def(base.ProtocolPeerDefault), oursPeer),
			wire.ProtocolIDV2: grow(def(base.ProtocolPeerDefault), oursPeer),
		},
	}
	return partial.Build(defaults)
}
