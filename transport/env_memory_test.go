package transport_test

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/transport"
)

// Peer ids of the memory tests. The memory network does not parse them.
const (
	senderID      = peer.ID("sender")
	aggregatorID  = peer.ID("aggregator")
	nobodyID      = peer.ID("nobody")
	blackholeID   = peer.ID("blackhole")
	secondAggrID  = peer.ID("aggregator-2")
	thirdSenderID = peer.ID("sender-3")
)

type memoryEnv struct {
	net      *transport.Network
	l        *transport.Listener
	dialer   transport.Dialer
	accepted []*transport.ServerStream
}

// newMemoryEnv builds a memory network on the real clock: the conformance
// suite's only timed case (a stalled reader) needs a wall-clock deadline,
// as on libp2p.
func newMemoryEnv(t *testing.T, writeTimeout time.Duration, opts ...envOption) env {
	cfg := newEnvConfig(opts)
	n := transport.NewNetwork(transport.WithMemoryWriteTimeout(writeTimeout))
	l, err := n.Listen(aggregatorID, cfg.listen...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return &memoryEnv{net: n, l: l, dialer: n.Dialer(senderID, cfg.dial...)}
}

func (e *memoryEnv) Dialer() transport.Dialer { return e.dialer }

func (e *memoryEnv) Target() peer.AddrInfo { return e.l.AddrInfo() }

func (e *memoryEnv) Accept(t *testing.T) serverStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	ss, err := e.l.Accept(ctx)
	require.NoError(t, err)
	require.Equal(t, senderID, ss.RemotePeer())
	e.accepted = append(e.accepted, ss)
	return ss
}

// StopListening closes the listener and resets the streams it accepted: a
// dead aggregator host takes its connections with it.
func (e *memoryEnv) StopListening(t *testing.T) {
	require.NoError(t, e.l.Close())
	for _, ss := range e.accepted {
		require.NoError(t, ss.Reset())
	}
}

func (e *memoryEnv) Unreachable(*testing.T) peer.AddrInfo { return peer.AddrInfo{ID: nobodyID} }

func (e *memoryEnv) Hanging(*testing.T) (peer.AddrInfo, func(t *testing.T)) {
	e.net.SetFaults(blackholeID, transport.Faults{HangDials: true})
	return peer.AddrInfo{ID: blackholeID}, func(t *testing.T) { waitBlocked(t, e.net, 1) }
}

// waitBlocked waits, on Changed and never on time, until want operations
// are parked in n.
func waitBlocked(t *testing.T, n *transport.Network, want int) {
	t.Helper()
	timer := time.NewTimer(patience)
	defer timer.Stop()
	for n.Blocked() != want {
		select {
		case <-n.Changed():
		case <-timer.C:
			t.Fatalf("Blocked() = %d, want %d within %s", n.Blocked(), want, patience)
		}
	}
}
