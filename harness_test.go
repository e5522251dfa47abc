package heartbeat_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/internal/scenario"
	"github.com/p2pbeat/heartbeat/transport"
	"github.com/p2pbeat/heartbeat/wire"
	"github.com/p2pbeat/heartbeat/wire2"
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
	// closeOnEOF makes the memory aggregator close a stream in turn once
	// it read the sender's EOF, as ours does (default true).
	closeOnEOF bool

	// faults are the network's faults toward the aggregator (setFaults).
	faults transport.Faults
	// aggMu guards mode, srv and aggChanged: how the memory aggregator
	// answers v2 streams, and every stream it accepted, in accept order,
	// with what it read and wrote and how it ended. aggChanged is closed
	// (and replaced) when they change.
	aggMu      sync.Mutex
	mode       scenario.Aggregator
	srv        []*srvStream
	aggChanged chan struct{}
}

// srvStream is the memory aggregator's side of one stream.
type srvStream struct {
	s  *transport.ServerStream
	v2 bool
	// wmu serialises the aggregator's writes (its reader's answers and the
	// test's commands).
	wmu sync.Mutex
	// Guarded by harness.aggMu: the Hello read; Beats read (each answered
	// as the mode says before it is counted); frames written to the
	// sender; Acks held for the ack command; whether a Bye was read.
	hello   wire2.Hello
	beats   int
	frames  int
	unacked []wire2.Ack
	bye     bool
	// ended says the aggregator's reader ended, err how (io.EOF after an
	// orderly close).
	ended bool
	err   error
}

// received is one line (v1) or Beat (v2) the memory aggregator read; hb
// is the v1 line, or the Beat with the Hello's nickname.
type received struct {
	hb     wire.Heartbeat
	stream *transport.ServerStream
	beat   wire2.Beat // v2 only
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
		received:   make(chan received, 1<<16),
		closeOnEOF: true,
		runErr:     make(chan error, 1),
		aggChanged: make(chan struct{}),
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
// After a failure the aggregator goes first: a test that failed mid-stall
// leaves the Service waiting, on the mock clock nobody moves any more, for a
// stalled write or the aggregator's close in turn; resetting the
// aggregator's streams frees it. Close is bounded by guard either way.
func (h *harness) close() {
	if h.t.Failed() {
		h.stopAggregator()
	}
	closed := make(chan error, 1)
	go func() { closed <- h.svc.Close() }()
	select {
	case err := <-closed:
		require.NoError(h.t, err)
	case <-time.After(guard):
		h.t.Fatalf("Close did not return: %+v, %d operations parked", h.svc.Status(), h.net.Blocked())
	}
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

// setFaults replaces the network's faults toward the aggregator; settle
// relies on knowing them.
func (h *harness) setFaults(f transport.Faults) {
	h.mu.Lock()
	h.faults = f
	h.mu.Unlock()
	h.net.SetFaults(h.aggID, f)
}

// settle waits until the Service is quiescent: every dial and write it has
// in flight is handled or parked in the memory network (a hang or a
// stall), the reader of every v2 stream it holds is parked with every frame
// the aggregator wrote handled, and the aggregator read and answered every
// Beat written. Only then can moving the clock not race the Service. The
// counts come from what an embedder sees too: the observations and
// Network.Blocked. Operations that no fault can park must be done, not
// just counted: otherwise a dial whose result is on its way and a write
// already parked after it would add up to the same count.
func (h *harness) settle() {
	h.t.Helper()
	deadline := time.After(guard)
	for {
		changed := h.aggChange() // before looking: a change after it wakes us
		ok, why := h.quiescent()
		if ok {
			return
		}
		select {
		case <-h.obsReady:
		case <-h.net.Changed():
		case <-changed:
		case <-deadline:
			h.t.Fatalf("not quiescent: %s", why)
		}
	}
}

// tally is what the observations say about the Service's operations.
type tally struct {
	dials, writes int      // in flight: started, result not handled yet
	adopted       []uint64 // attempts whose stream was adopted, in order
	v2, released  map[uint64]bool
	written       map[uint64]int // Beats written, by attempt
	frames        map[uint64]int // frame events handled, by attempt
}

func (h *harness) tally() tally {
	t := tally{v2: map[uint64]bool{}, released: map[uint64]bool{}, written: map[uint64]int{}, frames: map[uint64]int{}}
	for _, o := range h.observations() {
		for _, e := range o.Effects {
			switch e.Kind {
			case fsm.Dial:
				t.dials++
			case fsm.Send:
				t.writes++
			case fsm.ResetStream, fsm.CloseStream:
				t.released[e.Attempt] = true
			}
		}
		ev := o.Event
		switch ev.Kind {
		case fsm.DialSucceeded:
			t.dials--
			if o.From == fsm.Connecting && o.To == fsm.Beating {
				t.adopted = append(t.adopted, ev.Attempt)
				t.v2[ev.Attempt] = ev.Protocol == fsm.V2
			}
		case fsm.DialFailed:
			t.dials--
		case fsm.WriteSucceeded:
			t.writes--
			t.written[ev.Attempt]++
		case fsm.WriteFailed:
			t.writes--
		case fsm.WelcomeReceived, fsm.AckReceived, fsm.GoAwayReceived, fsm.BadFrame:
			t.frames[ev.Attempt]++
		}
	}
	return t
}

// readers is how many v2 streams the Service holds: each has a reader,
// parked in Read when quiescent.
func (t tally) readers() int {
	n := 0
	for _, a := range t.adopted {
		if t.v2[a] && !t.released[a] {
			n++
		}
	}
	return n
}

// liveReaders is tally().readers().
func (h *harness) liveReaders() int { return h.tally().readers() }

// quiescent reports whether the Service is quiescent, or why not.
func (h *harness) quiescent() (bool, string) {
	t := h.tally()
	dials, writes, adopted, v2, released, written, frames := t.dials, t.writes, t.adopted, t.v2, t.released, t.written, t.frames
	h.mu.Lock()
	faults := h.faults
	h.mu.Unlock()
	if dials > 0 && !faults.HangDials {
		return false, fmt.Sprintf("%d dials in flight", dials)
	}
	if writes > 0 && !faults.StallWrites {
		return false, fmt.Sprintf("%d writes in flight", writes)
	}
	readers := 0
	h.aggMu.Lock()
	defer h.aggMu.Unlock()
	for k, a := range adopted {
		if !v2[a] || released[a] {
			continue
		}
		readers++
		if k >= len(h.srv) {
			return false, fmt.Sprintf("attempt %d's stream not accepted yet", a)
		}
		ss := h.srv[k]
		if ss.beats != written[a] || ss.frames != frames[a] {
			return false, fmt.Sprintf("attempt %d: %d Beats written, %d read; %d frames written, %d handled", a, written[a], ss.beats, ss.frames, frames[a])
		}
	}
	if n := dials + writes + readers; n != h.net.Blocked() {
		return false, fmt.Sprintf("%d dials, %d writes and %d readers, %d parked", dials, writes, readers, h.net.Blocked())
	}
	return true, ""
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

// startAggregator listens on the target's peer id, v1 only, and reads every
// stream, decoding lines the way the legacy aggregator did (json.Decoder).
func (h *harness) startAggregator() { h.startAggregatorWith(scenario.Aggregator{Up: true}) }

// startAggregatorWith starts the aggregator as mode says: with V2 it
// speaks v2 and v1, and answers v2 streams as the mode says (setMode
// changes that later).
func (h *harness) startAggregatorWith(mode scenario.Aggregator) {
	h.t.Helper()
	protos := []protocol.ID{heartbeat.ProtocolID}
	if mode.V2 {
		protos = []protocol.ID{heartbeat.ProtocolIDV2, heartbeat.ProtocolID}
	}
	h.setMode(mode)
	l, err := h.net.Listen(h.aggID, protos...)
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
			ss := &srvStream{s: s, v2: s.Protocol() == heartbeat.ProtocolIDV2}
			h.aggMu.Lock()
			h.srv = append(h.srv, ss)
			h.aggMu.Unlock()
			h.accepts.Add(1)
			if ss.v2 {
				go func() {
					defer h.accepts.Done()
					h.serveV2(ss)
				}()
				continue
			}
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
						h.ended(ss, err)
						return
					}
					h.received <- received{hb: hb, stream: s}
				}
			}()
		}
	}()
}

// setMode changes how the aggregator answers v2 streams from now on.
func (h *harness) setMode(m scenario.Aggregator) {
	h.aggMu.Lock()
	h.mode = m
	h.aggMu.Unlock()
}

// pokeAgg wakes whoever waits on the aggregator's state.
func (h *harness) pokeAgg() {
	h.aggMu.Lock()
	close(h.aggChanged)
	h.aggChanged = make(chan struct{})
	h.aggMu.Unlock()
}

// aggChange is closed at the aggregator's next change.
func (h *harness) aggChange() <-chan struct{} {
	h.aggMu.Lock()
	defer h.aggMu.Unlock()
	return h.aggChanged
}

// ended records how the aggregator's reader of ss ended.
func (h *harness) ended(ss *srvStream, err error) {
	h.aggMu.Lock()
	ss.ended, ss.err = true, err
	h.aggMu.Unlock()
	h.pokeAgg()
}

// acceptedStream waits for the k-th stream the aggregator accepted (from 0).
func (h *harness) acceptedStream(k int) *srvStream {
	h.t.Helper()
	deadline := time.After(guard)
	for {
		changed := h.aggChange()
		h.aggMu.Lock()
		if k < len(h.srv) {
			ss := h.srv[k]
			h.aggMu.Unlock()
			return ss
		}
		h.aggMu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			h.t.Fatalf("the aggregator never accepted stream %d", k)
		}
	}
}

// streamEnd waits until the aggregator's reader of ss ended, and returns how.
func (h *harness) streamEnd(ss *srvStream) error {
	h.t.Helper()
	deadline := time.After(guard)
	for {
		changed := h.aggChange()
		h.aggMu.Lock()
		ended, err := ss.ended, ss.err
		h.aggMu.Unlock()
		if ended {
			return err
		}
		select {
		case <-changed:
		case <-deadline:
			h.t.Fatal("the aggregator's reader never ended")
		}
	}
}

// serveV2 is the memory aggregator's v2 reader of one stream: it answers a
// Hello with a Welcome (asking for the mode's period) and each Beat with an
// Ack now, on the ack command or never, stamped with its clock (the mock
// clock plus the mode's skew); hung, it answers nothing. It ends as the v1
// reader does.
func (h *harness) serveV2(ss *srvStream) {
	r := wire2.NewReader(ss.s, make([]byte, wire2.MaxFrameBytes))
	var f wire2.Frame
	for {
		p, err := r.Next()
		if err == nil {
			err = f.Decode(p)
		}
		if err != nil {
			if errors.Is(err, io.EOF) && h.closeOnEOF {
				_ = ss.s.Close()
			}
			h.ended(ss, err)
			return
		}
		h.aggMu.Lock()
		mode := h.mode
		h.aggMu.Unlock()
		switch f.Type {
		case wire2.TypeHello:
			h.aggMu.Lock()
			ss.hello = f.Hello
			h.aggMu.Unlock()
			if !mode.Hung {
				h.writeFrame(ss, &wire2.Welcome{Impl: "memory-aggregator", BeatPeriod: mode.Period})
			}
		case wire2.TypeBeat:
			ack := wire2.Ack{Seq: f.Beat.Seq, Time: h.clk.Now().Add(mode.Skew).UnixNano()}
			h.aggMu.Lock()
			nick := ss.hello.Nickname
			h.aggMu.Unlock()
			h.received <- received{hb: wire.Heartbeat{Head: f.Beat.Head, Height: f.Beat.Height, Nickname: nick}, stream: ss.s, beat: f.Beat}
			switch {
			case mode.Hung, mode.Acks == scenario.AcksNever:
			case mode.Acks == scenario.AcksAuto:
				h.writeFrame(ss, &ack)
			case mode.Acks == scenario.AcksManual:
				h.aggMu.Lock()
				ss.unacked = append(ss.unacked, ack)
				h.aggMu.Unlock()
			}
			h.aggMu.Lock()
			ss.beats++
			h.aggMu.Unlock()
			h.pokeAgg()
		case wire2.TypeBye:
			h.aggMu.Lock()
			ss.bye = true
			h.aggMu.Unlock()
		}
	}
}

// writeFrame writes m on ss and counts it; it fails the test only for an
// encoding error (a write on a stream the sender ended is no news).
func (h *harness) writeFrame(ss *srvStream, m wire2.Message) {
	var enc wire2.Encoder
	b, err := enc.Append(nil, m)
	if err != nil {
		h.t.Errorf("encode %T: %v", m, err)
		return
	}
	ss.wmu.Lock()
	_, err = ss.s.Write(b)
	ss.wmu.Unlock()
	if err == nil {
		h.aggMu.Lock()
		ss.frames++
		h.aggMu.Unlock()
		h.pokeAgg()
	}
}

// srvStreamOf is the aggregator's side of s.
func (h *harness) srvStreamOf(s *transport.ServerStream) *srvStream {
	h.aggMu.Lock()
	defer h.aggMu.Unlock()
	for _, ss := range h.srv {
		if ss.s == s {
			return ss
		}
	}
	h.t.Fatalf("stream not accepted")
	return nil
}

func (h *harness) stopAggregator() {
	if h.listener == nil {
		return
	}
	_ = h.listener.Close()
	h.aggMu.Lock()
	srv := append([]*srvStream(nil), h.srv...)
	h.aggMu.Unlock()
	for _, ss := range srv { // reset what was accepted, so the readers end
		_ = ss.s.Reset()
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
