package loadgen_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/internal/loadgen"
)

// guard bounds every wait; a healthy run never reaches it.
const guard = 2 * time.Minute

// upCounter counts the aggregator's "node state changed ... to=up" lines
// and signals each one, so the test waits on the aggregator's own events.
type upCounter struct {
	mu      sync.Mutex
	ups     map[string]bool // peer ids seen going Up
	changed chan struct{}
}

func (u *upCounter) watch(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		l := sc.Text()
		if strings.Contains(l, "node state changed") && strings.Contains(l, "to=up") {
			_, id, _ := strings.Cut(l, "peer_id=")
			id, _, _ = strings.Cut(id, " ")
			u.mu.Lock()
			u.ups[id] = true
			close(u.changed)
			u.changed = make(chan struct{})
			u.mu.Unlock()
		}
	}
}

func (u *upCounter) state() (int, <-chan struct{}) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.ups), u.changed
}

// testAggregator is a real aggregator on loopback for n senders, with an
// upCounter following its log.
type testAggregator struct {
	agg     *aggregator.Aggregator
	h       host.Host
	target  string
	ups     *upCounter
	pw      *io.PipeWriter
	watched chan struct{}
}

func startAggregator(t *testing.T, n int) *testAggregator {
	t.Helper()
	pr, pw := io.Pipe()
	a := &testAggregator{ups: &upCounter{ups: map[string]bool{}, changed: make(chan struct{})}, pw: pw, watched: make(chan struct{})}
	go func() { defer close(a.watched); a.ups.watch(pr) }()
	log := hclog.New(&hclog.LoggerOptions{Output: pw, Level: hclog.Info})
	cfg := aggregator.Config{MaxNodes: 2 * n}
	var err error
	a.h, err = aggregator.NewHost(cfg, nil, nil, libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	require.NoError(t, err)
	a.agg, err = aggregator.New(a.h, cfg, aggregator.WithLogger(log))
	require.NoError(t, err)
	a.target = a.h.Addrs()[0].String() + "/p2p/" + a.h.ID().String()
	return a
}

// close stops the aggregator and its host, then the log watcher.
func (a *testAggregator) close(t *testing.T) {
	t.Helper()
	require.NoError(t, a.agg.Close())
	require.NoError(t, a.h.Close())
	a.pw.Close()
	<-a.watched
}

// 200 sender identities over real libp2p against a real aggregator on
// loopback: every one is Up at the aggregator and connected at the
// generator, with no write error, and everything stops cleanly.
func TestLoad200NodesAllUp(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	const n = 200

	a := startAggregator(t, n)
	agg, target, ups := a.agg, a.target, a.ups

	g, err := loadgen.New(loadgen.Config{Target: target, Nodes: n, DialConcurrency: 32})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- g.Run(ctx) }()

	deadline := time.After(guard)
	for {
		up, aggChanged := ups.state()
		st := g.Stats()
		genChanged := g.Changed()
		if up >= n && st.Connected == n && st.Beaten == n {
			break
		}
		select {
		case <-aggChanged:
		case <-genChanged:
		case <-deadline:
			t.Fatalf("after %v: %d Up at the aggregator, generator %+v", guard, up, g.Stats())
		}
	}
	sum := agg.Tracker().Summary()
	require.Equal(t, n, sum.ByState[tracker.Up], "every node Up: %+v", sum)

	cancel()
	require.NoError(t, <-ran)
	st := g.Stats()
	require.Equal(t, n, st.Started)
	require.Zero(t, st.WriteErrors, "last error: %v", st.LastError)
	require.Zero(t, st.HostErrors)
	require.Zero(t, st.Reconnects, "last error: %v", st.LastError)
	require.GreaterOrEqual(t, st.BeatsWritten, uint64(n))
	require.Zero(t, st.Connected, "Run stopped every sender")

	a.close(t)
	goleak.VerifyNone(t, ignore)
}

// Bad configs fail New naming the field.
func TestConfigErrorsNameTheField(t *testing.T) {
	const target = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWGBoUWJ7rLvGGJ5oFvNMqfKaHXAEMnp8WdXkbjiD9Aqzc"
	for _, c := range []struct {
		cfg  loadgen.Config
		want string
	}{
		{loadgen.Config{Nodes: 1}, "Target"},
		{loadgen.Config{Target: "/ip4/127.0.0.1/tcp/1", Nodes: 1}, "Target"},
		{loadgen.Config{Target: target}, "Nodes"},
		{loadgen.Config{Target: target, Nodes: 1, Period: -time.Second}, "Period"},
		{loadgen.Config{Target: target, Nodes: 1, Ramp: -time.Second}, "Ramp"},
		{loadgen.Config{Target: target, Nodes: 1, DialConcurrency: -1}, "DialConcurrency"},
		{loadgen.Config{Target: target, Nodes: 1, Protocol: "v3"}, "Protocol"},
	} {
		_, err := loadgen.New(c.cfg)
		require.ErrorContains(t, err, c.want, "%+v", c.cfg)
	}
}

// The open-files limit ends at least where it started: soft == hard after
// a raise the kernel allowed.
func TestRaiseOpenFiles(t *testing.T) {
	soft, hard, err := loadgen.RaiseOpenFiles()
	require.NoError(t, err)
	require.Equal(t, hard, soft)
}

// Over QUIC: 50 senders dial the aggregator's quic-v1 address through one
// shared UDP socket and are all Up; the trace has one "up" line per sender
// (and a "lost" line each when Run stops them), keyed by their peer ids.
func TestLoadOverQUICTraced(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	const n = 50
	cfg := aggregator.Config{MaxNodes: 2 * n}
	h, err := aggregator.NewHost(cfg, nil, nil, libp2p.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1"))
	require.NoError(t, err)
	agg, err := aggregator.New(h, cfg)
	require.NoError(t, err)
	target := h.Addrs()[0].String() + "/p2p/" + h.ID().String()
	require.Contains(t, target, "/quic-v1/")

	var trace syncBuffer
	g, err := loadgen.New(loadgen.Config{Target: target, Nodes: n, DialConcurrency: 16, Trace: &trace})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- g.Run(ctx) }()
	deadline := time.After(guard)
	for {
		changed := g.Changed()
		if st := g.Stats(); st.Beaten == n {
			break
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("after %v: %+v", guard, g.Stats())
		}
	}
	cancel()
	require.NoError(t, <-ran)
	st := g.Stats()
	require.Zero(t, st.WriteErrors, "last error: %v", st.LastError)
	require.Zero(t, st.HostErrors)
	require.Equal(t, n, agg.Tracker().Summary().Nodes)

	ups, losts := map[string]bool{}, map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(trace.String()), "\n") {
		f := strings.Fields(l)
		require.Len(t, f, 3, "no late beat in so short a run: %q", l)
		_, known := agg.Tracker().Node(peerID(t, f[1]))
		require.True(t, known, "the trace names the senders' peer ids: %q", l)
		switch f[2] {
		case "up":
			ups[f[1]] = true
		case "lost":
			losts[f[1]] = true
		default:
			t.Fatalf("trace line %q", l)
		}
	}
	require.Len(t, ups, n)
	require.Len(t, losts, n)

	require.NoError(t, agg.Close())
	require.NoError(t, h.Close())
	goleak.VerifyNone(t, ignore)
}

func peerID(t *testing.T, s string) peer.ID {
	id, err := peer.Decode(s)
	require.NoError(t, err)
	return id
}

// syncBuffer is a bytes.Buffer safe for the generator's writes and the
// test's read.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// With Protocol v2 every sender speaks v2 (the aggregator records protocol
// 2 and the period each declared in its Hello), over TCP.
func TestLoadV2(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	const n = 20
	a := startAggregator(t, n)
	agg, target, ups := a.agg, a.target, a.ups
	g, err := loadgen.New(loadgen.Config{Target: target, Nodes: n, Period: 2 * time.Second, Protocol: heartbeat.ProtocolV2, DialConcurrency: 8})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- g.Run(ctx) }()
	deadline := time.After(guard)
	for {
		up, changed := ups.state()
		if up >= n {
			break
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("after %v: %d Up, generator %+v", guard, up, g.Stats())
		}
	}
	nodes := agg.Tracker().Nodes(nil)
	require.Len(t, nodes, n)
	for _, nd := range nodes {
		require.Equal(t, uint8(2), nd.Protocol, nd.Nickname)
		require.Equal(t, 2*time.Second, nd.Period, "%s: declared in the Hello", nd.Nickname)
	}
	cancel()
	require.NoError(t, <-ran)
	require.Zero(t, g.Stats().WriteErrors, "last error: %v", g.Stats().LastError)
	a.close(t)
	goleak.VerifyNone(t, ignore)
}
