package aggregator

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/gologshim"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/p2pbeat/heartbeat/wire"
)

// TestMain fails the run if any goroutine outlives the tests. No goroutine
// is ignored: closed libp2p hosts leave none behind. libp2p's own logs
// (closing a host logs accept errors) are dropped unless GOLOG_LOG_LEVEL
// asks for them.
func TestMain(m *testing.M) {
	if os.Getenv("GOLOG_LOG_LEVEL") == "" {
		gologshim.SetDefaultHandler(slog.DiscardHandler)
	}
	goleak.VerifyTestMain(m)
}

// guard bounds every wait. It is a failure guard only: a healthy run never
// waits for it, so it is generous for a busy 2-core machine under -race.
const guard = 30 * time.Second

const loopback = "/ip4/127.0.0.1/tcp/0"

// checkLeaks fails t if a goroutine started during t outlives it and its
// cleanups. Call it first: cleanups run last-in first-out.
func checkLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// newHost starts a libp2p host on loopback and closes it when t ends.
func newHost(t testing.TB, opts ...libp2p.Option) host.Host {
	t.Helper()
	h, err := libp2p.New(append([]libp2p.Option{libp2p.ListenAddrStrings(loopback)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// recorder collects the aggregator's test hooks and lets a test wait for a
// condition on them without sleeping or losing events.
type recorder struct {
	mu      sync.Mutex
	beats   map[peer.ID][]wire.Heartbeat
	ends    map[peer.ID][]error
	changed chan struct{} // closed and replaced on every event
}

func newRecorder() *recorder {
	return &recorder{
		beats:   make(map[peer.ID][]wire.Heartbeat),
		ends:    make(map[peer.ID][]error),
		changed: make(chan struct{}),
	}
}

func (r *recorder) hooks() *hooks {
	return &hooks{
		beat: func(id peer.ID, hb *wire.Heartbeat) {
			r.mu.Lock()
			r.beats[id] = append(r.beats[id], *hb)
			r.notifyLocked()
			r.mu.Unlock()
		},
		ended: func(id peer.ID, err error) {
			r.mu.Lock()
			r.ends[id] = append(r.ends[id], err)
			r.notifyLocked()
			r.mu.Unlock()
		},
		// Deterministic local health: only the (mock-clock) sweep
		// lateness counts, not this busy test machine's scheduler.
		runtimeLag: noRuntimeLag,
	}
}

func noRuntimeLag() (time.Duration, time.Duration) { return 0, 0 }

func (r *recorder) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// waitFor blocks until cond (called with r.mu held) is true.
func (r *recorder) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(guard)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ok := cond()
		ch := r.changed
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			require.FailNowf(t, "timed out", "waiting for %s", what)
		}
	}
}

// waitBeats waits until id has sent n heartbeats in total.
func (r *recorder) waitBeats(t *testing.T, id peer.ID, n int) wire.Heartbeat {
	t.Helper()
	var last wire.Heartbeat
	r.waitFor(t, "heartbeats", func() bool {
		b := r.beats[id]
		if len(b) >= n {
			last = b[n-1]
			return true
		}
		return false
	})
	return last
}

// waitEnds waits until n streams of id have ended and returns the n-th
// stream's error.
func (r *recorder) waitEnds(t *testing.T, id peer.ID, n int) error {
	t.Helper()
	var err error
	r.waitFor(t, "stream end", func() bool {
		e := r.ends[id]
		if len(e) >= n {
			err = e[n-1]
			return true
		}
		return false
	})
	return err
}

func (r *recorder) beatCount(id peer.ID) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.beats[id])
}

// env is an aggregator on a real libp2p host.
type env struct {
	a   *Aggregator
	h   host.Host
	rec *recorder
	log *logBuffer
}

// newEnv starts an aggregator with cfg on a host built with HostOptions.
func newEnv(t *testing.T, cfg Config, g *AllowGater, opts ...Option) *env {
	t.Helper()
	hopts, err := HostOptions(cfg, g)
	require.NoError(t, err)
	h := newHost(t, hopts...)
	e := &env{h: h, rec: newRecorder(), log: &logBuffer{}}
	logger := hclog.New(&hclog.LoggerOptions{Output: e.log, JSONFormat: true, Level: hclog.Debug})
	opts = append([]Option{WithLogger(logger), withHooks(e.rec.hooks())}, opts...)
	e.a, err = New(h, cfg, opts...)
	require.NoError(t, err)
	// Registered after the host's cleanup, so it runs before it.
	t.Cleanup(func() { require.NoError(t, e.a.Close()) })
	return e
}

func (e *env) addrInfo() peer.AddrInfo { return peer.AddrInfo{ID: e.h.ID(), Addrs: e.h.Addrs()} }

// sender is a test-side heartbeat sender: a libp2p host of its own.
type sender struct {
	h host.Host
}

func newSender(t *testing.T) *sender {
	t.Helper()
	return &sender{h: newHost(t)}
}

func (s *sender) id() peer.ID { return s.h.ID() }

// open connects to the aggregator and opens one heartbeat stream; the
// stream is reset when t ends.
func (s *sender) open(t *testing.T, e *env) network.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	require.NoError(t, s.h.Connect(ctx, e.addrInfo()))
	st, err := s.h.NewStream(ctx, e.h.ID(), wire.ProtocolID)
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Reset() })
	return st
}

// legacyHeartbeat is the 2019 go-filecoin heartbeat type, field for field.
type legacyHeartbeat struct {
	Head         string
	Height       uint64
	Nickname     string
	MinerAddress string
}

// encode writes v with a plain json.Encoder, as the 2019 sender did.
func encode(t *testing.T, w io.Writer, v any) {
	t.Helper()
	require.NoError(t, json.NewEncoder(w).Encode(v))
}

// requireReset waits for the aggregator's reset of st, seen as a read
// error matching network.ErrReset.
func requireReset(t *testing.T, st network.Stream) {
	t.Helper()
	require.NoError(t, st.SetReadDeadline(time.Now().Add(guard)))
	var buf [64]byte
	for {
		n, err := st.Read(buf[:])
		if err != nil {
			require.ErrorIs(t, err, network.ErrReset)
			return
		}
		require.Zero(t, n, "the aggregator never writes")
	}
}

// requireEOF waits for the aggregator's orderly end of st (its FIN), seen
// as io.EOF, never a reset.
func requireEOF(t *testing.T, st network.Stream) {
	t.Helper()
	require.NoError(t, st.SetReadDeadline(time.Now().Add(guard)))
	n, err := io.Copy(io.Discard, st)
	require.NoError(t, err, "io.Copy returns nil at EOF")
	require.Zero(t, n, "the aggregator never writes")
}

// counter reads a counter from g by name and labels.
func counter(t *testing.T, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if labelValue(m, labels[i]) != labels[i+1] {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	require.FailNowf(t, "no such counter", "%s %v", name, labels)
	return 0
}

func labelValue(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

func rejected(t *testing.T, e *env, reason string) float64 {
	t.Helper()
	return counter(t, e.a.Registry(), "heartbeat_rejected_total", "reason", reason)
}

// logBuffer is a concurrency-safe log sink whose JSON lines a test parses.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// entries returns every JSON log line whose message is msg.
func (b *logBuffer) entries(t *testing.T, msg string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	text := b.buf.String()
	b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), "log line is JSON: %s", line)
		if m["@message"] == msg {
			out = append(out, m)
		}
	}
	return out
}
