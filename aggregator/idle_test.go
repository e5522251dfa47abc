package aggregator

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/sec"
	"github.com/libp2p/go-libp2p/core/transport"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	basicconnmgr "github.com/libp2p/go-libp2p/p2p/net/connmgr"
	tptu "github.com/libp2p/go-libp2p/p2p/net/upgrader"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/clockwork"
)

// dialIdle opens n libp2p connections (noise, yamux) to the peer id at
// addr, each with an identity of its own, and never opens a stream on
// them: what a flood of throwaway identities looks like. They are closed
// when t ends. Each dial has guard to itself: n handshakes in a row under
// -race on a loaded machine may together take longer than one guard.
func dialIdle(t *testing.T, addr ma.Multiaddr, id peer.ID, n int) []transport.CapableConn {
	t.Helper()
	muxers := []tptu.StreamMuxer{{ID: yamux.ID, Muxer: yamux.DefaultTransport}}
	rm := &network.NullResourceManager{}
	conns := make([]transport.CapableConn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for range n {
		key, _, err := crypto.GenerateEd25519Key(nil)
		require.NoError(t, err)
		st, err := noise.New(noise.ID, key, muxers)
		require.NoError(t, err)
		upg, err := tptu.New([]sec.SecureTransport{st}, muxers, nil, rm, nil)
		require.NoError(t, err)
		tr, err := tcp.NewTCPTransport(upg, rm, nil)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		c, err := tr.Dial(ctx, addr, id)
		cancel()
		require.NoError(t, err)
		conns = append(conns, c)
	}
	return conns
}

// connEvents counts a host's connection events by peer, for waiting on
// them without sleeping.
type connEvents struct {
	mu      sync.Mutex
	up      map[peer.ID]int
	down    map[peer.ID]int
	changed chan struct{}
}

func watchConns(h interface{ Network() network.Network }) *connEvents {
	ev := &connEvents{up: map[peer.ID]int{}, down: map[peer.ID]int{}, changed: make(chan struct{})}
	bump := func(m map[peer.ID]int, p peer.ID) {
		ev.mu.Lock()
		m[p]++
		close(ev.changed)
		ev.changed = make(chan struct{})
		ev.mu.Unlock()
	}
	h.Network().Notify(&network.NotifyBundle{
		ConnectedF:    func(_ network.Network, c network.Conn) { bump(ev.up, c.RemotePeer()) },
		DisconnectedF: func(_ network.Network, c network.Conn) { bump(ev.down, c.RemotePeer()) },
	})
	return ev
}

// waitCount waits until count(peers) reaches n.
func (ev *connEvents) waitCount(t *testing.T, what string, peers []peer.ID, down bool, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	for {
		ev.mu.Lock()
		m := ev.up
		if down {
			m = ev.down
		}
		got := 0
		for _, p := range peers {
			got += m[p]
		}
		ch := ev.changed
		ev.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			require.FailNowf(t, "timed out", "waiting for %s: %d of %d", what, got, n)
		}
	}
}

// Issue 9 (d): 300 connections that never open a heartbeat stream are
// closed once older than IdleTimeout (go-libp2p's connection manager may
// keep one, its low water mark), while senders with a heartbeat stream keep
// theirs and new senders still get in. The connection manager runs on a
// mock clock; the trim that its ticker would run is triggered directly.
func TestIdleConnectionsClosed(t *testing.T) {
	checkLeaks(t)
	const idle = 300
	mock := clockwork.NewMock(t0)
	cfg := Config{}
	hopts, err := HostOptions(cfg, nil, WithClock(mock))
	require.NoError(t, err)
	h := newHost(t, hopts...)
	events := watchConns(h)
	rec := newRecorder()
	a, err := New(h, cfg, withHooks(rec.hooks()))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, a.Close()) })
	e := &env{a: a, h: h, rec: rec, log: &logBuffer{}}

	cm, ok := h.ConnManager().(*basicconnmgr.BasicConnMgr)
	require.True(t, ok, "HostOptions installs go-libp2p's connection manager")
	info := cm.GetInfo()
	require.Equal(t, DefaultIdleTimeout, info.GracePeriod)
	require.Equal(t, 1, info.LowWater)

	beat := func(s *sender, st network.Stream, n int) {
		encode(t, st, legacyHeartbeat{Head: "{ h }", Height: uint64(n)})
		rec.waitBeats(t, s.id(), n)
	}
	early := newSender(t)
	earlySt := early.open(t, e)
	beat(early, earlySt, 1)

	conns := dialIdle(t, h.Addrs()[0], h.ID(), idle)
	idlePeers := make([]peer.ID, len(conns))
	for i, c := range conns {
		idlePeers[i] = c.LocalPeer() // the flooder's identity

	}
	events.waitCount(t, "idle connections", idlePeers, false, idle)

	during := newSender(t) // a sender arriving during the flood
	duringSt := during.open(t, e)
	beat(during, duringSt, 1)

	// Not yet: every idle connection is within its grace period.
	clockwork.Advance(mock, cfg.withDefaultsMust(t).IdleTimeout-1)
	cm.TrimOpenConns(context.Background())
	require.Len(t, h.Network().Conns(), idle+2)

	clockwork.Advance(mock, 2)
	cm.TrimOpenConns(context.Background())
	events.waitCount(t, "idle connections closed", idlePeers, true, idle-1)
	left := 0
	for _, p := range idlePeers {
		if h.Network().Connectedness(p) == network.Connected {
			left++
		}
	}
	// The connection manager keeps its low water mark, one connection, when
	// a single trim runs; its ticker's trim may race ours and take that one.
	require.LessOrEqual(t, left, 1)

	// The senders with a stream kept their connections and go on beating;
	// a new sender gets in.
	for _, s := range []*sender{early, during} {
		require.Equal(t, network.Connected, h.Network().Connectedness(s.id()))
	}
	beat(early, earlySt, 2)
	beat(during, duringSt, 2)
	late := newSender(t)
	beat(late, late.open(t, e), 1)
}

// withDefaultsMust is cfg with its defaults, for tests.
func (c Config) withDefaultsMust(t *testing.T) Config {
	t.Helper()
	c, err := c.withDefaults()
	require.NoError(t, err)
	return c
}

// Resource-manager refusals reach go-libp2p's own counter on the
// aggregator's registry and a WARN line at most once per
// RejectLogInterval, with the number suppressed in between. A real
// resource manager with a one-connection limit refuses the second.
func TestResourceManagerRefusalsLoggedAndCounted(t *testing.T) {
	checkLeaks(t)
	mock := clockwork.NewMock(t0)
	logs := &logBuffer{}
	logger := hclog.New(&hclog.LoggerOptions{Output: logs, JSONFormat: true, Level: hclog.Debug})
	rl := newRefusalLog(logger, mock, time.Minute)
	limits := rcmgr.PartialLimitConfig{
		System: rcmgr.ResourceLimits{ConnsInbound: 1, Conns: 1},
	}.Build(rcmgr.InfiniteLimits)
	mgr, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits), rcmgr.WithTraceReporter(rl))
	require.NoError(t, err)
	defer mgr.Close()

	a, err := New(newHost(t), Config{})
	require.NoError(t, err)
	defer a.Close()
	blocked := func() float64 {
		mfs, err := a.Registry().Gather()
		require.NoError(t, err)
		sum := 0.0
		for _, mf := range mfs {
			if mf.GetName() == "libp2p_rcmgr_blocked_resources" {
				for _, m := range mf.GetMetric() {
					if labelValue(m, "resource") == "connection" {
						sum += m.GetGauge().GetValue()
					}
				}
			}
		}
		return sum
	}
	before := blocked()

	addr := ma.StringCast("/ip4/10.1.2.3/tcp/4001")
	c, err := mgr.OpenConnection(network.DirInbound, true, addr)
	require.NoError(t, err)
	defer c.Done()
	for range 3 {
		_, err = mgr.OpenConnection(network.DirInbound, true, addr)
		require.Error(t, err)
	}
	lines := logs.entries(t, "resource manager refused")
	require.Len(t, lines, 1, "rate-limited")
	require.Equal(t, "connection", lines[0]["resource"])
	require.Equal(t, "system", lines[0]["scope"])
	require.Equal(t, "warn", lines[0]["@level"])
	require.Equal(t, 3.0, blocked()-before, "go-libp2p's reporter counts every refusal")

	clockwork.Advance(mock, time.Minute)
	_, err = mgr.OpenConnection(network.DirInbound, true, addr)
	require.Error(t, err)
	lines = logs.entries(t, "resource manager refused")
	require.Len(t, lines, 2)
	require.Equal(t, 2.0, lines[1]["suppressed"])
}
