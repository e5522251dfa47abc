package transport_test

import (
	"context"
	"crypto/rand"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/transport"
	"github.com/p2pbeat/heartbeat/wire"
)

func dialCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	t.Cleanup(cancel)
	return ctx
}

func TestLibp2pProtocolIDIsLegacyString(t *testing.T) {
	checkLeaks(t)
	// No leading slash: the 2019 nodes registered exactly this string.
	require.Equal(t, "fil/heartbeat/1.0.0", wire.ProtocolID)

	sender := newHost(t, nil, loopback)
	agg := newAggregator(t, nil, loopback)
	s, err := newLibp2pDialer(t, sender).Dial(dialCtx(t), agg.addrInfo())
	require.NoError(t, err)
	ss := agg.accept(t)
	// The default offers v2 first; a legacy aggregator picks v1.
	require.Equal(t, "fil/heartbeat/1.0.0", string(s.Protocol()))
	require.Equal(t, "fil/heartbeat/1.0.0", string(ss.Protocol()))
	require.Equal(t, sender.ID(), ss.Conn().RemotePeer())

	// The stream is accounted to the heartbeat service in the sender's
	// resource manager.
	var outbound int
	require.NoError(t, sender.Network().ResourceManager().ViewService(wire.ServiceName, func(sc network.ServiceScope) error {
		outbound = sc.Stat().NumStreamsOutbound
		return nil
	}))
	require.Equal(t, 1, outbound)

	require.NoError(t, s.Close())
	_ = ss.Close()
}

func TestLibp2pProtectsAggregatorWhileStreamsAreOpen(t *testing.T) {
	checkLeaks(t)
	sender := newHost(t, nil, loopback)
	agg := newAggregator(t, nil, loopback)
	cm := sender.ConnManager()
	d := newLibp2pDialer(t, sender)
	aggID := agg.h.ID()
	require.False(t, cm.IsProtected(aggID, ""))

	// Two senders to one aggregator (the primary and the alert sender):
	// ending one stream must not unprotect the other's.
	a, err := d.Dial(dialCtx(t), agg.addrInfo())
	require.NoError(t, err)
	require.True(t, cm.IsProtected(aggID, ""))
	b, err := d.Dial(dialCtx(t), agg.addrInfo())
	require.NoError(t, err)
	ssA, ssB := agg.accept(t), agg.accept(t)

	require.NoError(t, a.Close())
	require.True(t, cm.IsProtected(aggID, ""), "b is still open")
	require.NoError(t, b.Reset())
	require.False(t, cm.IsProtected(aggID, ""))
	require.NoError(t, b.Close())
	require.NoError(t, a.Reset())
	require.False(t, cm.IsProtected(aggID, ""))

	// Protection follows the local end, not the remote one: the caller
	// still owns a stream the aggregator closed until it closes it.
	c, err := d.Dial(dialCtx(t), agg.addrInfo())
	require.NoError(t, err)
	ssC := agg.accept(t)
	require.NoError(t, ssC.Close())
	require.Equal(t, io.EOF, waitRemote(t, c))
	require.True(t, cm.IsProtected(aggID, ""))
	require.NoError(t, c.Close())
	require.False(t, cm.IsProtected(aggID, ""))

	_ = ssA.Close()
	_ = ssB.Reset()
}

// The swarm backs off from an address whose dial failed, for seconds to
// minutes. The sender owns its retry policy, so its dials must reach the
// network anyway: here the aggregator comes back on the same address right
// after a refused dial.
func TestLibp2pDialIgnoresSwarmBackoff(t *testing.T) {
	checkLeaks(t)
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	require.NoError(t, err)
	first := newAggregator(t, key, loopback)
	target := first.addrInfo()
	port, err := target.Addrs[0].ValueForProtocol(ma.P_TCP)
	require.NoError(t, err)
	require.NoError(t, first.h.Close())

	sender := newHost(t, nil, loopback)
	d := newLibp2pDialer(t, sender)
	_, err = d.Dial(dialCtx(t), target)
	require.ErrorIs(t, err, transport.ErrDialFailed)

	again := newAggregator(t, key, "/ip4/127.0.0.1/tcp/"+port)
	require.Equal(t, target.ID, again.h.ID())

	// A plain dial is refused by the swarm's backoff: the case is real.
	plainCtx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	_, err = sender.Network().DialPeer(plainCtx, target.ID)
	require.ErrorIs(t, err, swarm.ErrDialBackoff)

	s, err := d.Dial(dialCtx(t), target)
	require.NoError(t, err)
	ss := again.accept(t)
	writeLines(t, s, lines(t, 1))
	require.Equal(t, lines(t, 1), readN(t, ss, len(lines(t, 1))))
	require.NoError(t, s.Close())
	_ = ss.Close()
}

func TestLibp2pDialTimeout(t *testing.T) {
	checkLeaks(t)
	e := newLibp2pEnv(t, 0).(*libp2pEnv)
	target, dialing := e.Hanging(t)
	// A deadline, never a pace: the test does not wait for it to pass
	// unless the dial hangs, which is the case under test.
	d := newLibp2pDialer(t, e.sender, transport.WithDialTimeout(stallTimeout))
	dialed := result(func() error {
		_, err := d.Dial(context.Background(), target)
		return err
	})
	dialing(t)
	err := await(t, "Dial", dialed, func() {})
	require.ErrorIs(t, err, transport.ErrDialFailed)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestLibp2pDialRejectsTargetWithoutID(t *testing.T) {
	checkLeaks(t)
	sender := newHost(t, nil, loopback)
	_, err := newLibp2pDialer(t, sender).Dial(dialCtx(t), peer.AddrInfo{})
	require.ErrorIs(t, err, transport.ErrDialFailed)
}

// Unused options keep their defaults rather than disabling the bound.
func TestLibp2pNonPositiveOptionsKeepDefaults(t *testing.T) {
	checkLeaks(t)
	e := newLibp2pEnv(t, 0).(*libp2pEnv)
	d := newLibp2pDialer(t, e.sender, transport.WithDialTimeout(0), transport.WithWriteTimeout(-time.Second))
	s, err := d.Dial(dialCtx(t), e.target)
	require.NoError(t, err)
	ss := e.agg.accept(t)
	// A write with a zero deadline would fail at once.
	writeLines(t, s, lines(t, 1))
	require.Equal(t, lines(t, 1), readN(t, ss, len(lines(t, 1))))
	require.NoError(t, s.Close())
	_ = ss.Close()
}

// An invalid protocols setting fails at construction, naming the setting,
// before the host is touched.
func TestLibp2pRejectsBadProtocols(t *testing.T) {
	for name, c := range map[string]struct {
		ids  []protocol.ID
		want string
	}{
		"empty":    {nil, "transport: protocols: empty list"},
		"unknown":  {[]protocol.ID{"/fil/heartbeat/2.0.0", "/fil/heartbeat/1.0.0"}, `transport: protocols: unknown protocol id "/fil/heartbeat/1.0.0"`},
		"repeated": {[]protocol.ID{wire.ProtocolIDV2, wire.ProtocolIDV2}, `transport: protocols: "/fil/heartbeat/2.0.0" listed twice`},
	} {
		t.Run(name, func(t *testing.T) {
			d, err := transport.NewLibp2p(nil, transport.WithProtocols(c.ids...))
			require.Nil(t, d)
			require.ErrorContains(t, err, c.want)
		})
	}
}
