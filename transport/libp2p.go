package transport

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/wire"
)

// BackstopFactor is how much longer the libp2p Dialer's wall-clock
// deadlines are than the state machine's dial and write timeouts. The
// machine owns the policy: its timers end a hung dial or a stalled write
// first, on the sender's (possibly virtual) clock. These deadlines are only a
// backstop that frees the goroutine and the libp2p stream should the machine's
// timer not end them, and being clearly longer they never race it.
const BackstopFactor = 2

// Defaults of the libp2p Dialer: the backstops of the state machine's
// default timeouts.
const (
	// DefaultDialTimeout bounds one Dial: connecting, the security and muxer
	// handshakes, identify and opening the stream.
	DefaultDialTimeout = BackstopFactor * fsm.DefaultDialTimeout
	// DefaultWriteTimeout bounds one Write, measured on the wall clock.
	DefaultWriteTimeout = BackstopFactor * fsm.DefaultWriteTimeout
)

// forceDirectReason is the reason string libp2p records for our forced
// direct dials.
const forceDirectReason = "heartbeat"

// protectTagPrefix prefixes the connection-manager protection tags of our
// streams. Every stream gets its own tag (see protectSeq).
const protectTagPrefix = "fil.heartbeat/"

// protectSeq numbers protection tags. The connection manager keeps a set of
// tags per peer, not a count: two senders to one aggregator sharing a tag
// would lose the protection as soon as the first one ended its stream.
var protectSeq atomic.Uint64

// Libp2pOption configures the Dialer NewLibp2p returns.
type Libp2pOption func(*libp2pDialer)

// WithDialTimeout bounds each Dial (default DefaultDialTimeout). A
// non-positive d keeps the default: an unbounded dial would let one black-holed
// aggregator stall the sender forever.
func WithDialTimeout(d time.Duration) Libp2pOption {
	return func(l *libp2pDialer) {
		if d > 0 {
			l.dialTimeout = d
		}
	}
}

// WithWriteTimeout bounds each Write (default DefaultWriteTimeout), as a
// wall-clock deadline on the stream. A non-positive d keeps the default: a
// write without a deadline blocks for as long as the aggregator stops
// reading.
func WithWriteTimeout(d time.Duration) Libp2pOption {
	return func(l *libp2pDialer) {
		if d > 0 {
			l.writeTimeout = d
		}
	}
}

// WithProtocols sets the protocol ids each Dial offers, in preference order
// (default DefaultProtocols(): wire.ProtocolIDV2, then wire.ProtocolID).
// Pass wire.ProtocolID alone for a v1-only sender, wire.ProtocolIDV2 alone
// for a v2-only one. NewLibp2p rejects an empty list, an unknown id or a
// repeated one.
func WithProtocols(ids ...protocol.ID) Libp2pOption {
	return func(l *libp2pDialer) {
		l.protocols = append([]protocol.ID(nil), ids...)
	}
}

// NewLibp2p returns a Dialer that opens heartbeat streams from h, or an
// error naming the setting when an option is invalid (see WithProtocols).
//
// Each Dial adds the target's addresses to h's peerstore (permanently, as the
// legacy sender did: the target is configuration, not a discovered address),
// then opens a stream offering the configured protocols in one NewStream
// call, so that multistream-select picks the first one the aggregator
// speaks (Stream.Protocol tells which); when it speaks none, Dial fails
// ("protocols not supported"). It dials with
// network.WithForceDirectDial and network.WithDialPeerTimeout, so the swarm's
// own per-peer dial backoff never swallows a retry the caller decided on.
// While a stream is open the aggregator is protected in h's connection
// manager, under a tag unique to that stream, until the stream's Reset or
// Close (the caller must call one of them, as with any libp2p stream).
//
// When identify already told h which of the offered protocols the aggregator
// speaks, libp2p picks the first of them and negotiates it lazily: Dial
// returns before the aggregator confirmed it, and a refusal shows up as the
// error Read or WaitRemote returns. The stream's read loop starts the
// negotiation at once, so the aggregator sees the stream right after Dial,
// before the first Write.
func NewLibp2p(h host.Host, opts ...Libp2pOption) (Dialer, error) {
	d := &libp2pDialer{
		h:            h,
		dialTimeout:  DefaultDialTimeout,
		writeTimeout: DefaultWriteTimeout,
		protocols:    DefaultProtocols(),
	}
	for _, o := range opts {
		o(d)
	}
	if err := checkProtocols(d.protocols); err != nil {
		return nil, err
	}
	return d, nil
}

type libp2pDialer struct {
	h            host.Host
	dialTimeout  time.Duration
	writeTimeout time.Duration
	protocols    []protocol.ID
}

// Dial implements Dialer.
func (d *libp2pDialer) Dial(ctx context.Context, target peer.AddrInfo) (Stream, error) {
	if target.ID == "" {
		return nil, dialError(ctx, target.ID, errors.New("no peer id in target"))
	}
	// A dial the caller already gave up on must not touch the network.
	if err := ctx.Err(); err != nil {
		return nil, dialError(ctx, target.ID, err)
	}
	d.h.Peerstore().AddAddrs(target.ID, target.Addrs, peerstore.PermanentAddrTTL)

	dctx, cancel := context.WithTimeout(ctx, d.dialTimeout)
	defer cancel()
	dctx = network.WithForceDirectDial(dctx, forceDirectReason)
	dctx = network.WithDialPeerTimeout(dctx, d.dialTimeout)

	s, err := d.h.NewStream(dctx, target.ID, d.protocols...)
	if err != nil {
		return nil, dialError(ctx, target.ID, err)
	}
	if err := s.Scope().SetService(wire.ServiceName); err != nil {
		_ = s.Reset()
		return nil, dialError(ctx, target.ID, fmt.Errorf("attach stream to service %s: %w", wire.ServiceName, err))
	}
	tag := fmt.Sprintf("%s%d", protectTagPrefix, protectSeq.Add(1))
	d.h.ConnManager().Protect(target.ID, tag)
	return newLibp2pStream(s, d.h.ConnManager(), target.ID, tag, d.writeTimeout), nil
}

// dialError wraps cause so that it matches ErrDialFailed and, when ctx ended
// the dial, ctx.Err() too (libp2p does not always wrap it).
func dialError(ctx context.Context, id peer.ID, cause error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(cause, cerr) {
		return fmt.Errorf("dial %s: %w: %w (%w)", id, ErrDialFailed, cause, cerr)
	}
	return fmt.Errorf("dial %s: %w: %w", id, ErrDialFailed, cause)
}
