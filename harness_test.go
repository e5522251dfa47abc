package heartbeat_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/transport"
	"github.com/p2pbeat/heartbeat/wire"
)

// start is the virtual time every harness starts at. The mock clock would
// otherwise start in 1970; any fixed instant works.
var start = time.Date(2019, 6, 1, 12, 0, 0, 0, time.UTC)

// guard bounds every wait on the Service's goroutine. It is never slept
// on: it only turns a hang into a failure.
const guard = 30 * time.Second

// rowsHit collects the fsm.Table rows the Service handled across this
// package's tests (see TestMain in fsm_test.go).
var rowsHit sync.Map // int -> struct{}

func testPeerID(t testing.TB, seed int64) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(rand.New(rand.NewSource(seed)))
	require.NoError(t, err)
	id, err := peer.IDFromPublicKey(pub)
	require.NoError(t, err)
	return id
}

// logLine is one line the Service logged, parsed from hclog's JSON output.
type logLine struct {
	At      time.Duration // since start, from @timestamp (the mock clock's time)
	Level   string
	Message string
	Fields  map[string]any
}

// logSink is an io.Writer for hclog's JSON output.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *logSink) lines(t testing.TB) []logLine {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []logLine
	sc := bufio.NewScanner(bytes.NewReader(s.buf.Bytes()))
	for sc.Scan() {
		var m map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &m), sc.Text())
		ts, err := time.Parse(time.RFC3339Nano, m["@timestamp"].(string))
		require.NoError(t, err)
		l := logLine{At: ts.Sub(start), Level: strings.ToUpper(m["@level"].(string)), Message: m["@message"].(string), Fields: m}
		out = append(out, l)
	}
	return out
}

// harness runs one Service on the memory transport and a mock clock, and
// steps virtual time only when the Service is quiescent.
type harness struct {
	t      *testing.T
	clk    *clockwork.Mock
	net    *transport.Network
	aggID  peer.ID
	svc    *heartbeat.Service
	sink   *logSink
	cancel context.CancelFunc
	runErr chan error

	mu       sync.Mutex
	obs      []heartbeat.Observation
	obsReady chan struct{}

	listener *transport.Listener
	received chan received
	accepts  sync.WaitGroup
	streams  chan *transport.ServerStream
	// accepted gets every accepted stream in accept order, and ends how
	// each stream's reader ended (io.EOF after an orderly close).
	accepted chan *transport.ServerStream
	ends     chan streamEnd
	// closeOnEOF makes the memory aggregator close a stream in turn once
	// it read the sender's EOF, as ours does (default true).
	closeOnEOF bool
}

// streamEnd is how the memory aggregator's reader of one stream ended.
type streamEnd struct {
	stream *transport.ServerStream
	err    error
}

// received is one line the memory aggregator read.
type received struct {
	hb     wire.Heartbeat
	stream *transport.ServerStream
}

type harnessConfig struct {
	cfg  heartbeat.Config
	opts []heartbeat.Option
	head heartbeat.HeadFunc
}

func newHarness(t *testing.T, hc harnessConfig) *harness {
	t.Helper()
	h := &harness{
		t:          t,
		clk:        clockwork.NewMock(start),
		net:        transport.NewNetwork(),
		aggID:      testPeerID(t, 1),
		sink:       &logSink{},
		obsReady:   make(chan struct{}, 1),
		received:   make(chan received, 1024),
		streams:    make(chan *transport.ServerStream, 64),
		accepted:   make(chan *transport.ServerStream, 64),
		ends:       make(chan streamEnd, 64),
		closeOnEOF: true,
		runErr:     make(chan error, 1),
	}
	cfg := hc.cfg
	if cfg.BeatTarget == "" {
		cfg.BeatTarget = "/ip4/127.0.0.1/tcp/4001/p2p/" + h.aggID.String()
	}
	if cfg.Nickname == "" {
		cfg.Nickname = "BobHoblaw"
	}
	head := hc.head
	if head == nil {
		head = func() (heartbeat.ChainHead, error) {
			return heartbeat.ChainHead{Head: "{ bafy2bzaceabc }", Height: 444}, nil
		}
	}
	logger := hclog.New(&hclog.LoggerOptions{
		Level: hclog.Debug, JSONFormat: true, Output: h.sink, TimeFn: h.clk.Now,
	})
	opts := append([]heartbeat.Option{
		heartbeat.WithClock(h.clk),
		heartbeat.WithTransport(h.net.Dialer(testPeerID(t, 2))),
		heartbeat.WithLogger(logger),
		heartbeat.WithSeed(1),
		heartbeat.WithBackoff(heartbeat.Backoff{}), // no jitter: exact seconds
		heartbeat.WithObserver(h.observe),
	}, hc.opts...)
	svc, err := heartbeat.New(nil, cfg, head, opts...)
	require.NoError(t, err)
	h.svc = svc
	t.Cleanup(h.close)
	return h
}

func (h *harness) run() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.runErr <- h.svc.Run(ctx) }()
	h.waitFor(0, fsm.Start)
	h.settle()
}

// close ends the Service and the aggregator and waits for all goroutines.
func (h *harness) close() {
	require.NoError(h.t, h.svc.Close())
	if h.cancel != nil {
		h.cancel()
		select {
		case err := <-h.runErr:
			require.NoError(h.t, err)
		case <-time.After(guard):
			h.t.Fatal("Run did not return after Close")
		}
	}
	h.stopAggregator()
}

func (h *harness) observe(o heartbeat.Observation) {
	rowsHit.Store(o.Row, struct{}{})
	h.mu.Lock()
	h.obs = append(h.obs, o)
	h.mu.Unlock()
	select {
	case h.obsReady <- struct{}{}:
	default:
	}
}

func (h *harness) observations() []heartbeat.Observation {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]heartbeat.Observation(nil), h.obs...)
}

// settle waits until every dial and write the Service has in flight is
// either handled or parked in the memory network (a hang or a stall): only
// then can moving the clock not race the Service. Both counts come from
// what an embedder sees too: the observations and Network.Blocked.
func (h *harness) settle() {
	h.t.Helper()
	deadline := time.After(guard)
	for h.inflight() != h.net.Blocked() {
		select {
		case <-h.obsReady:
		case <-h.net.Changed():
		case <-deadline:
			h.t.Fatalf("not quiescent: in flight=%d blocked=%d", h.inflight(), h.net.Blocked())
		}
	}
}

// inflight counts the dials and writes the Service started (Dial and Send
// effects) whose result it has not handled and published yet.
func (h *harness) inflight() int {
	n := 0
	for _, o := range h.observations() {
		for _, e := range o.Effects {
			if e.Kind == fsm.Dial || e.Kind == fsm.Send {
				n++
			}
		}
		switch o.Event.Kind {
		case fsm.DialSucceeded, fsm.DialFailed, fsm.WriteSucceeded, fsm.WriteFailed:
			n--
		}
	}
	return n
}

// waitFor waits until the Service has handled an event of kind k since
// observation index from, and returns its index.
func (h *harness) waitFor(from int, k fsm.EventKind) int {
	h.t.Helper()
	deadline := time.After(guard)
	for {
		for i, o := range h.observations()[from:] {
			if o.Event.Kind == k {
				return from + i
			}
		}
		select {
		case <-h.obsReady:
		case <-deadline:
			h.t.Fatalf("the Service never handled %s", k)
		}
	}
}

// advance moves virtual time to the next deadline, lets the Service handle
// it and settle, and returns the new time since start.
func (h *harness) advance() time.Duration {
	h.t.Helper()
	at, ok := clockwork.AdvanceToNext(h.clk)
	require.True(h.t, ok, "no timer armed")
	h.settle()
	return at.Sub(start)
}

// advanceUntil advances while the next deadline is before end.
func (h *harness) advanceUntil(end time.Duration) {
	h.t.Helper()
	for {
		at, ok := clockwork.NextDeadline(h.clk)
		if !ok || !at.Before(start.Add(end)) {
			return
		}
		h.advance()
	}
}

// now is the virtual time since start.
func (h *harness) now() time.Duration { return h.clk.Now().Sub(start) }

// startAggregator listens on the target's peer id and reads every stream,
// decoding lines the way the legacy aggregator did (json.Decoder).
func (h *harness) startAggregator() {
	h.t.Helper()
	l, err := h.net.Listen(h.aggID)
	require.NoError(h.t, err)
	h.listener = l
	h.accepts.Add(1)
	go func() {
		defer h.accepts.Done()
		for {
			s, err := l.Accept(context.Background())
			if err != nil {
				return
			}
			h.streams <- s
			h.accepted <- s
			h.accepts.Add(1)
			go func() {
				defer h.accepts.Done()
				dec := json.NewDecoder(s)
				for {
					var hb wire.Heartbeat
					if err := dec.Decode(&hb); err != nil {
						if err == io.EOF && h.closeOnEOF {
							// The sender ended in order: close in turn, as
							// our aggregator does.
							_ = s.Close()
						}
						h.ends <- streamEnd{s, err}
						return
					}
					h.received <- received{hb: hb, stream: s}
				}
			}()
		}
	}()
}

func (h *harness) stopAggregator() {
	if h.listener == nil {
		return
	}
	_ = h.listener.Close()
	for len(h.streams) > 0 { // reset what was accepted, so the readers end
		_ = (<-h.streams).Reset()
	}
	h.accepts.Wait()
	h.listener = nil
}

// nextLine waits for the next heartbeat the aggregator read.
func (h *harness) nextLine() received {
	h.t.Helper()
	select {
	case r := <-h.received:
		return r
	case <-time.After(guard):
		h.t.Fatal("the aggregator received no heartbeat")
		return received{}
	}
}

func seconds(ns ...int) []time.Duration {
	out := make([]time.Duration, len(ns))
	for i, n := range ns {
		out[i] = time.Duration(n) * time.Second
	}
	return out
}

func every(from, to, step int) []time.Duration {
	var out []time.Duration
	for s := from; s <= to; s += step {
		out = append(out, time.Duration(s)*time.Second)
	}
	return out
}
