package heartbeat_test

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/aggregator/metrics"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/wire"
)

// legacyReceiver is an aggregator as the 2018 one was written: a stream
// handler that decodes JSON with a json.Decoder until the stream ends.
type legacyReceiver struct {
	host  host.Host
	beats chan wire.Heartbeat
}

func startLegacyReceiver(t *testing.T, key crypto.PrivKey, listen string) *legacyReceiver {
	t.Helper()
	h, err := libp2p.New(libp2p.Identity(key), libp2p.ListenAddrStrings(listen))
	require.NoError(t, err)
	r := &legacyReceiver{host: h, beats: make(chan wire.Heartbeat, 128)}
	h.SetStreamHandler(protocol.ID(heartbeat.ProtocolID), func(s network.Stream) {
		defer s.Close()
		dec := json.NewDecoder(s)
		for {
			var hb wire.Heartbeat
			if err := dec.Decode(&hb); err != nil {
				_ = s.Reset()
				return
			}
			select {
			case r.beats <- hb:
			default: // the test stopped listening; drop
			}
		}
	})
	return r
}

func (r *legacyReceiver) target(t *testing.T) string {
	t.Helper()
	addrs := r.host.Addrs()
	require.NotEmpty(t, addrs)
	return addrs[0].String() + "/p2p/" + r.host.ID().String()
}

func (r *legacyReceiver) next(t *testing.T) wire.Heartbeat {
	t.Helper()
	select {
	case hb := <-r.beats:
		return hb
	case <-time.After(guard):
		t.Fatal("the legacy receiver got no heartbeat")
		return wire.Heartbeat{}
	}
}

// End to end over real libp2p hosts on loopback: our sender, a receiver
// written the way the legacy aggregator was, and a restart of that receiver
// with the same key and address, which the sender must reconnect to.
func TestEndToEndWithLegacyReceiver(t *testing.T) {
	noLeaks(t)
	key, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	recv := startLegacyReceiver(t, key, "/ip4/127.0.0.1/tcp/0")
	target := recv.target(t)

	node, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	require.NoError(t, err)
	defer node.Close()

	states := make(chan fsm.State, 1024)
	svc, err := heartbeat.New(node, heartbeat.Config{
		BeatTarget:      target,
		BeatPeriod:      "50ms",
		ReconnectPeriod: "100ms",
		Nickname:        "BobHoblaw",
	}, func() (heartbeat.ChainHead, error) {
		return heartbeat.ChainHead{Head: "{ bafy2bzaceabc bafy2bzacedef }", Height: 444}, nil
	},
		heartbeat.WithMinerAddress(func() string { return "t01234" }),
		heartbeat.WithObserver(func(o heartbeat.Observation) {
			if o.From != o.To {
				select {
				case states <- o.To:
				default:
				}
			}
		}),
	)
	require.NoError(t, err)
	require.NoError(t, svc.Start(t.Context()))
	defer func() { require.NoError(t, svc.Close()) }()

	for range 3 {
		hb := recv.next(t)
		require.Equal(t, wire.Heartbeat{Head: "{ bafy2bzaceabc bafy2bzacedef }", Height: 444, Nickname: "BobHoblaw", MinerAddress: "t01234"}, hb)
	}

	// Restart the receiver with the same identity on the same address.
	listen := recv.host.Addrs()[0].String()
	require.NoError(t, recv.host.Close())
	waitState(t, states, fsm.Backoff)
	recv2 := startLegacyReceiver(t, key, listen)
	defer recv2.host.Close()
	waitState(t, states, fsm.Beating)
	require.Equal(t, "BobHoblaw", recv2.next(t).Nickname)
	require.GreaterOrEqual(t, svc.Status().Attempt, uint64(2))
}

func waitState(t *testing.T, states <-chan fsm.State, want fsm.State) {
	t.Helper()
	deadline := time.After(guard)
	for {
		select {
		case s := <-states:
			if s == want {
				return
			}
		case <-deadline:
			t.Fatalf("the sender never reached %s", want)
		}
	}
}

// End to end with our own aggregator: senders on real libp2p hosts appear
// Up with their fields; the aggregator restarts with the same key and
// address, and every sender reconnects and is Up again.
//
// The aggregator runs on an injected clock that the test never advances:
// what is checked is the path of a heartbeat (stream, line, tracker fields),
// not silence detection, which real time on a loaded machine would turn
// into a race between 50 ms beats and the sweeper (a node seen Suspect
// between two beats). Silence detection is tested on the injected clock in
// package aggregator and over virtual time in package sim.
func TestEndToEndWithOurAggregator(t *testing.T) {
	noLeaks(t)
	key, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	beats := make(beatLog, 4096)
	startAgg := func(listen string) (host.Host, *aggregator.Aggregator) {
		return startKeyedAggregator(t, key, listen, beats)
	}
	aggHost, agg := startAgg("/ip4/127.0.0.1/tcp/0")
	listen := aggHost.Addrs()[0].String()
	target := listen + "/p2p/" + aggHost.ID().String()

	const n = 3
	states := make(chan fsm.State, 1024)
	var ids []peer.ID
	for i := range n {
		node, err := libp2p.New(libp2p.NoListenAddrs)
		require.NoError(t, err)
		defer node.Close()
		ids = append(ids, node.ID())
		svc, err := heartbeat.New(node, heartbeat.Config{
			BeatTarget: target, BeatPeriod: "50ms", ReconnectPeriod: "100ms", Nickname: fmt.Sprintf("n%d", i),
		}, func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{Head: "{ h }", Height: 7}, nil },
			heartbeat.WithObserver(func(o heartbeat.Observation) {
				if o.From != o.To && o.To == fsm.Beating {
					states <- o.To
				}
			}))
		require.NoError(t, err)
		require.NoError(t, svc.Start(t.Context()))
		defer func() { require.NoError(t, svc.Close()) }()
	}
	waitUp := func(a *aggregator.Aggregator) {
		t.Helper()
		for range n {
			waitState(t, states, fsm.Beating)
		}
		waitBeats(t, beats, ids, 2)
		for _, id := range ids {
			node, ok := a.Tracker().Node(id)
			require.True(t, ok)
			require.Equal(t, tracker.Up, node.State)
			require.Equal(t, "{ h }", node.Head)
			require.Equal(t, uint64(7), node.Height)
		}
		require.Equal(t, n, a.Tracker().Summary().InConsensus)
	}
	waitUp(agg)

	require.NoError(t, agg.Close())
	require.NoError(t, aggHost.Close())
	for len(beats) > 0 { // beats logged before the restart do not count after it
		<-beats
	}
	aggHost, agg = startAgg(listen)
	defer aggHost.Close()
	defer agg.Close()
	waitUp(agg)
}

// beatLog is an hclog output that reports each per-heartbeat log line of
// the aggregator (WithBeatLog), logged after the tracker counted the beat.
type beatLog chan string

func (b beatLog) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["@message"] == "heartbeat" {
			b <- fmt.Sprint(m["peer_id"])
		}
	}
	return len(p), nil
}

// waitBeats waits until the aggregator logged want heartbeats from each of ids.
func waitBeats(t *testing.T, beats beatLog, ids []peer.ID, want int) {
	t.Helper()
	seen := map[string]int{}
	deadline := time.After(guard)
	for {
		done := true
		for _, id := range ids {
			done = done && seen[id.String()] >= want
		}
		if done {
			return
		}
		select {
		case id := <-beats:
			seen[id]++
		case <-deadline:
			t.Fatalf("the aggregator did not log %d beats from each sender: %v", want, seen)
		}
	}
}

// fleet is our aggregator and senders on real libp2p hosts on loopback,
// every one of them on one injected clock that only the test moves, so
// that silence detection is exercised without a race against real time:
// the test moves the clock only once the network is quiet (see settle).
type fleet struct {
	t       *testing.T
	mock    *clockwork.Mock
	aggHost host.Host
	agg     *aggregator.Aggregator
	target  string
	log     *logSink
	poke    chan struct{} // something happened: a sender's step, a beat counted
	svcs    []*heartbeat.Service
	hosts   []host.Host
	ids     []peer.ID
	writes  []atomic.Int64 // heartbeats each sender wrote
	wrote   []atomic.Int64 // the clock's time (Unix ns) each sender issued its last write at
	lost    []atomic.Int64 // streams each sender saw end (RemoteReset, RemoteClosed)
	// v2: the seq of the last Beat each sender issued, and of the last Ack
	// it took in.
	seq, acked []atomic.Uint64
	// protocol is the senders' Config.Protocol ("": auto, v2 with ours).
	protocol string
}

func newFleet(t *testing.T) *fleet { return newFleetWith(t, aggregator.Config{}) }

func newFleetWith(t *testing.T, cfg aggregator.Config) *fleet {
	t.Helper()
	f := &fleet{t: t, mock: clockwork.NewMock(time.Date(2025, time.January, 1, 0, 0, 0, 0, time.UTC)),
		log: &logSink{}, poke: make(chan struct{}, 1)}
	opts, err := aggregator.HostOptions(cfg, nil, aggregator.WithClock(f.mock))
	require.NoError(t, err)
	f.aggHost, err = libp2p.New(append([]libp2p.Option{libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0")}, opts...)...)
	require.NoError(t, err)
	out := io.MultiWriter(f.log, pokeWriter(f.poke))
	f.agg, err = aggregator.New(f.aggHost, cfg, aggregator.WithClock(f.mock), aggregator.WithBeatLog(true),
		aggregator.WithLogger(hclog.New(&hclog.LoggerOptions{JSONFormat: true, Output: out, Level: hclog.Info})))
	require.NoError(t, err)
	t.Cleanup(func() {
		require.NoError(t, f.agg.Close())
		require.NoError(t, f.aggHost.Close())
	})
	f.target = f.aggHost.Addrs()[0].String() + "/p2p/" + f.aggHost.ID().String()
	f.writes = make([]atomic.Int64, 8)
	f.wrote = make([]atomic.Int64, 8)
	f.lost = make([]atomic.Int64, 8)
	f.seq = make([]atomic.Uint64, 8)
	f.acked = make([]atomic.Uint64, 8)
	return f
}

// pokeWriter signals on every write: the aggregator logged a line (with
// WithBeatLog, one per heartbeat, after the tracker counted it).
type pokeWriter chan struct{}

func (p pokeWriter) Write(b []byte) (int, error) {
	select {
	case p <- struct{}{}:
	default:
	}
	return len(b), nil
}

// add starts a sender on a fresh host (with key, if not nil) on the fleet's
// clock.
func (f *fleet) add(key crypto.PrivKey) {
	t := f.t
	t.Helper()
	i := len(f.svcs)
	require.Less(t, i, len(f.writes))
	opts := []libp2p.Option{libp2p.NoListenAddrs}
	if key != nil {
		opts = append(opts, libp2p.Identity(key))
	}
	h, err := libp2p.New(opts...)
	require.NoError(t, err)
	svc, err := heartbeat.New(h, heartbeat.Config{BeatTarget: f.target, Nickname: fmt.Sprintf("n%d", i), Protocol: f.protocol},
		func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{Head: "{ h }", Height: 7}, nil },
		heartbeat.WithClock(f.mock), heartbeat.WithSeed(uint64(i+1)),
		heartbeat.WithLogger(hclog.NewNullLogger()),
		heartbeat.WithObserver(func(o heartbeat.Observation) {
			switch o.Event.Kind {
			case fsm.WriteSucceeded:
				f.writes[i].Add(1)
			case fsm.RemoteReset, fsm.RemoteClosed:
				f.lost[i].Add(1)
			case fsm.AckReceived:
				f.acked[i].Store(o.Event.Seq)
			}
			for _, e := range o.Effects {
				if e.Kind == fsm.Send {
					f.wrote[i].Store(o.At.UnixNano())
					f.seq[i].Store(e.Seq)
				}
			}
			select {
			case f.poke <- struct{}{}:
			default:
			}
		}))
	require.NoError(t, err)
	require.NoError(t, svc.Start(t.Context()))
	t.Cleanup(func() {
		require.NoError(t, svc.Close())
		require.NoError(t, h.Close())
	})
	f.svcs = append(f.svcs, svc)
	f.ids = append(f.ids, h.ID())
	f.hosts = append(f.hosts, h)
}

// waitFor blocks until cond holds, re-checking it whenever a sender steps
// or the aggregator logs, and every 20ms for what has no event (the end of
// a stream at the aggregator); it fails after guard.
func (f *fleet) waitFor(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.After(guard)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-f.poke:
		case <-tick.C:
		case <-deadline:
			f.t.Fatalf("timed out waiting for %s at %s: %s", what, f.mock.Now(), f.describe())
		}
	}
}

// describe says where each sender and its node stand, for a failure.
func (f *fleet) describe() string {
	var b strings.Builder
	for i, svc := range f.svcs {
		n, _ := f.agg.Tracker().Node(f.ids[i])
		fmt.Fprintf(&b, "\n  sender %d: %s, %d writes, last issued at %s; node %s, %d beats, last seen %s, %d streams, stream %s",
			i, svc.Status().State, f.writes[i].Load(), time.Unix(0, f.wrote[i].Load()).UTC(), n.State, n.Beats, n.LastSeen, n.Streams, n.Stream)
	}
	return b.String()
}

// quiet reports whether nothing is in flight: every sender waits on its
// clock (Backoff), or beats with its last heartbeat counted by the
// aggregator (the clock stands still meanwhile, so the tracker's LastSeen
// is the time of that write). A write lost on a stream that was just reset
// keeps the sender from quiet until it sees the reset, or until the
// aggregator has no open stream for it (the sender learns of that only at
// its next write). Only then may the test move the clock.
func (f *fleet) quiet() bool {
	for i, svc := range f.svcs {
		switch svc.Status().State {
		case fsm.Backoff:
		case fsm.Beating:
			n, ok := f.agg.Tracker().Node(f.ids[i])
			if !ok || f.writes[i].Load() == 0 {
				return false
			}
			// The aggregator ended the node's stream (a rejoin that went
			// out on the connection being closed): the sender finds out at
			// its next write, which needs the clock.
			dead := n.Stream != tracker.StreamOpen
			// Its last write was counted: the tracker saw a beat at or
			// after the clock's time when the write was issued (a write
			// lost on a reset stream is not).
			seen := n.LastSeen.UnixNano() >= f.wrote[i].Load()
			// v2: and the sender read its Ack (the aggregator writes it
			// after it counted the beat), so that no Ack is on its way
			// when the clock moves.
			acked := f.acked[i].Load() >= f.seq[i].Load()
			if !dead && !(seen && acked) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// run moves the clock one deadline at a time up to d from now, letting the
// fleet settle before each step and calling check after each.
func (f *fleet) run(d time.Duration, check func()) {
	f.t.Helper()
	end := f.mock.Now().Add(d)
	for {
		f.waitFor("the fleet to settle", f.quiet)
		next, ok := clockwork.NextDeadline(f.mock)
		if !ok || next.After(end) {
			break
		}
		clockwork.AdvanceToNext(f.mock)
		f.waitFor("the fleet to settle", f.quiet)
		check()
	}
	clockwork.AdvanceTo(f.mock, end)
}

// Issue 9, real network (a): every connection is reset once while the
// aggregator is up. Each sender rejoins within one BeatPeriod, the tracker
// gives it its reconnect allowance, and no node turns Suspect; each is Up
// on a new stream.
func TestConnectionResetTurnsNoNodeSuspect(t *testing.T) {
	noLeaks(t)
	f := newFleet(t)
	const n = 5
	for range n {
		f.add(nil)
	}
	suspects := 0
	noSuspect := func() {
		for _, id := range f.ids {
			if nd, ok := f.agg.Tracker().Node(id); ok && nd.State != tracker.Up {
				suspects++
				t.Errorf("%s is %s at %s", id, nd.State, f.mock.Now())
			}
		}
	}
	f.waitFor("every sender to beat", func() bool {
		return f.quiet() && f.agg.Tracker().Summary().ByState[tracker.Up] == n
	})
	f.run(30*time.Second, noSuspect) // the periods are learned: 3s

	for _, id := range f.ids {
		require.NoError(t, f.aggHost.Network().ClosePeer(id))
	}
	f.waitFor("every sender to see its stream end", func() bool {
		for i := range f.svcs {
			if f.lost[i].Load() == 0 {
				return false
			}
		}
		return true
	})
	f.run(time.Minute, noSuspect)
	require.Zero(t, suspects)
	for _, id := range f.ids {
		nd, ok := f.agg.Tracker().Node(id)
		require.True(t, ok)
		require.Equal(t, tracker.Up, nd.State)
		// One reconnect, or two when the rejoin went out on the connection
		// being closed (a failed attempt, then a retry after
		// ReconnectPeriod, still within the allowance).
		require.GreaterOrEqual(t, nd.Streams, uint64(2), f.describe())
	}
	changes := 0
	for _, l := range f.log.lines(t) {
		if l.Message == "node state changed" {
			changes++
			require.Equal(t, "up", l.Fields["to"], "only joining>up: %v", l.Fields)
		}
	}
	require.Equal(t, n, changes)
}

// Issue 9, real network (c): two senders with one key (a copied identity)
// supersede each other's streams; the aggregator flags the duplicate
// identity within its window: one WARN naming the peer, counted once as
// rejected{reason="duplicate_identity"}, the node flagged in the tracker.
func TestTwoSendersWithOneKeyAreFlagged(t *testing.T) {
	noLeaks(t)
	f := newFleet(t)
	key, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	f.add(key)
	f.add(key)
	require.Equal(t, f.ids[0], f.ids[1])
	id := f.ids[0]
	f.waitFor("both senders to write", func() bool { return f.writes[0].Load() > 0 && f.writes[1].Load() > 0 })
	start := f.mock.Now()
	var flagged time.Time
	window := f.agg.Tracker().Config().DuplicateWindow
	f.run(window, func() {
		if n, ok := f.agg.Tracker().Node(id); ok && n.DuplicateIdentity && flagged.IsZero() {
			flagged = f.mock.Now()
		}
	})
	require.False(t, flagged.IsZero(), "not flagged within %s: %s", window, f.describe())
	require.LessOrEqual(t, flagged.Sub(start), window)
	var warns []logLine
	for _, l := range f.log.lines(t) {
		if l.Message == "duplicate identity: streams of one peer keep superseding each other" {
			warns = append(warns, l)
		}
	}
	require.Len(t, warns, 1, "once per window")
	require.Equal(t, "WARN", warns[0].Level)
	require.Equal(t, id.String(), warns[0].Fields["peer_id"])
	require.Equal(t, 1.0, rejectedTotal(t, f.agg, metrics.ReasonDuplicateIdentity))
}

// rejectedTotal reads heartbeat_rejected_total for one reason.
func rejectedTotal(t *testing.T, a *aggregator.Aggregator, reason string) float64 {
	t.Helper()
	mfs, err := a.Registry().Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "heartbeat_rejected_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label(m, "reason") == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// Issue 9, real network (e), the lockout case: at MaxNodes 5, five
// senders beat and then vanish (their hosts close: the aggregator sees
// resets, not clean stops, so they turn Down, not Left). A sixth, honest
// sender is refused too_many_nodes until the node Down the longest has been
// Down for DownRetention, then it gets in.
func TestNewcomerGetsInAfterDownRetention(t *testing.T) {
	// v1: refused by a reset, the newcomer retries every ReconnectPeriod
	// (10 s, +20% jitter). v2: refused by a GoAway, it waits the retry-after
	// (up to the aggregator's PacingWindow, +20% jitter).
	for _, tc := range []struct {
		protocol string
		retry    time.Duration
	}{
		{heartbeat.ProtocolV1, 13 * time.Second},
		{heartbeat.ProtocolV2, aggregator.DefaultPacingWindow*12/10 + time.Second},
	} {
		t.Run(tc.protocol, func(t *testing.T) { newcomerGetsIn(t, tc.protocol, tc.retry) })
	}
}

func newcomerGetsIn(t *testing.T, protocol string, retry time.Duration) {
	noLeaks(t)
	const retention = 2 * time.Minute
	f := newFleetWith(t, aggregator.Config{MaxNodes: 5, DownRetention: retention})
	f.protocol = protocol
	for range 5 {
		f.add(nil)
	}
	f.waitFor("five senders to beat", func() bool {
		return f.quiet() && f.agg.Tracker().Summary().ByState[tracker.Up] == 5
	})
	for _, h := range f.hosts {
		require.NoError(t, h.Close())
	}
	f.waitFor("the aggregator to see every stream end", func() bool {
		return f.agg.Tracker().Summary().Connected == 0
	})
	f.add(nil) // the newcomer
	newcomer := f.ids[5]
	var in time.Time
	f.run(30*time.Minute, func() {
		if n, ok := f.agg.Tracker().Node(newcomer); ok && n.State == tracker.Up && in.IsZero() {
			in = f.mock.Now()
		}
	})
	require.False(t, in.IsZero(), "the newcomer never got in: %s", f.describe())
	var firstDown time.Time
	for _, id := range f.ids[:5] {
		if n, ok := f.agg.Tracker().Node(id); ok {
			require.Equal(t, tracker.Down, n.State)
			if firstDown.IsZero() || n.Since.Before(firstDown) {
				firstDown = n.Since
			}
		}
	}
	// One of the five was evicted for it; the others are still Down.
	require.Equal(t, 5, f.agg.Tracker().Len())
	require.True(t, in.After(firstDown.Add(retention)), "in at %s, first Down at %s", in, firstDown)
	require.LessOrEqual(t, in.Sub(firstDown.Add(retention)), retry, "within one retry of the retention's end")
	require.Positive(t, rejectedTotal(t, f.agg, metrics.ReasonTooManyNodes))
}
