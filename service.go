package heartbeat

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/transport"
	"github.com/p2pbeat/heartbeat/wire"
	"github.com/p2pbeat/heartbeat/wire2"
)

// Observation is what the Service did with one event: a plain value for
// tests, metrics and traces.
type Observation struct {
	// At is the Service clock's time the event was handled at.
	At    time.Time
	Event fsm.Event
	// Row is the fsm.Table row that handled it, -1 if it was rejected.
	Row      int
	From, To fsm.State
	// Effects are the effects carried out, in order (a copy).
	Effects []fsm.Effect
	// Err is the state machine's rejection, if any (a bug, never expected).
	Err error
}

// Status is a snapshot of a Service.
type Status struct {
	Name   string
	Target peer.ID
	// BeatPeriod and ReconnectPeriod are the validated config.
	BeatPeriod, ReconnectPeriod time.Duration
	State                       fsm.State
	Since                       time.Time
	Attempt                     uint64
	Failures                    uint64
	LastError                   error
	// NextRetry is when the next attempt is due, zero unless in Backoff.
	NextRetry time.Time
	BeatsSent uint64
	// Protocol is the protocol id the current (or the last) stream
	// negotiated, "" before the first: ProtocolID or ProtocolIDV2.
	Protocol protocol.ID
	// v2 only, zero until the first Ack: RTT is the last round trip (a Beat
	// written to its Ack read), SmoothedRTT its RFC 6298 average (7/8 of the
	// previous plus 1/8 of the new), ClockSkew how far the aggregator's clock
	// is ahead of this node's (negative: behind), estimated from the last
	// Ack as its receive time minus the Beat's send time plus RTT/2.
	RTT, SmoothedRTT, ClockSkew time.Duration
	// Seq is the seq of the last v2 Beat written (1, 2, 3… across the
	// streams of this Service), Acks how many Acks came back.
	Seq, Acks uint64
	// StreamBeatPeriod is the period the current (or the last) stream
	// beats at: BeatPeriod, or what a v2 aggregator asked for in its
	// Welcome, within [BeatPeriod, fsm.MaxPeriodFactor×BeatPeriod].
	StreamBeatPeriod time.Duration
}

// ErrAlreadyRunning is returned by Run on a Service that is (or was) running.
var ErrAlreadyRunning = errors.New("heartbeat: service already running")

// ErrClosed is returned by Run and Start on a Service that was closed.
var ErrClosed = errors.New("heartbeat: service closed")

// Service sends heartbeats to one aggregator. Create it with New, run it
// with Run (blocking) or Start, and end it with Close or by cancelling the
// context. All its methods are safe for concurrent use.
type Service struct {
	cfg     settings
	opts    options
	log     hclog.Logger
	dialer  transport.Dialer
	head    HeadFunc
	machine *fsm.Machine

	// bootID is this Service's v2 boot id, drawn in New; hello is the
	// Hello every v2 stream starts with, but for the miner address.
	bootID wire2.BootID
	hello  wire2.Hello

	// Owned by the actor goroutine.
	timer    *clockwork.Timer // armed at the machine's NextDeadline
	streams  map[uint64]*stream
	proto    protocol.ID // of the last adopted stream
	dials    map[uint64]context.CancelFunc
	lastHead ChainHead // the last head sent (the getter's, and its line fitted)
	headDown bool
	// headTooLong: the last head made a line over wire.MaxLineBytes.
	headTooLong bool
	runCtx      context.Context

	results chan result
	stopped chan struct{} // closed once the actor no longer reads results
	ops     sync.WaitGroup

	closeOnce sync.Once
	closing   chan struct{}
	started   atomic.Bool
	done      chan struct{} // closed when Run returns

	mu     sync.Mutex
	status Status
}

// result is the outcome of an operation, handed to the actor.
type result struct {
	ev     fsm.Event
	stream transport.Stream // a dial's stream
}

// stream is a stream the Service holds. Its fields are the actor's but for
// ended and endErr (the v2 reader's) and the frame buffer while a write of
// it is in flight (the writer's).
type stream struct {
	st transport.Stream
	v2 bool
	// quit is closed when the Service ends the stream: from then on what
	// its reader or watcher sees is not news (and is not posted).
	quit   chan struct{}
	quitOK bool
	// v2: ended is closed by the reader when the stream ended, endErr
	// (set before) says how: io.EOF for an orderly end.
	ended  chan struct{}
	endErr error
	// v2: the frames of the stream, encoded with one Encoder into one
	// buffer (no allocation once warm); hello says the Hello was written.
	enc   wire2.Encoder
	buf   []byte
	beat  wire2.Beat
	hello bool
}

func newStream(st transport.Stream) *stream {
	return &stream{st: st, v2: st.Protocol() == ProtocolIDV2, quit: make(chan struct{}), ended: make(chan struct{})}
}

// release marks the stream ended by the Service (actor only).
func (ss *stream) release() {
	if !ss.quitOK {
		ss.quitOK = true
		close(ss.quit)
	}
}

// New returns a Service that will send heartbeats to cfg.BeatTarget from
// host h, reporting the head that head returns. It validates cfg and the
// options, naming the bad field; it starts nothing.
func New(h host.Host, cfg Config, head HeadFunc, opts ...Option) (*Service, error) {
	s, err := cfg.parse()
	if err != nil {
		return nil, err
	}
	if head == nil {
		return nil, errors.New("heartbeat: head func is nil")
	}
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, fmt.Errorf("heartbeat: %w", err)
		}
	}
	if !o.seedSet {
		var b [8]byte
		_, _ = crand.Read(b[:])
		o.policy.Seed = binary.LittleEndian.Uint64(b[:])
	}
	machine, err := fsm.New(o.machineConfig(s))
	if err != nil {
		return nil, fmt.Errorf("heartbeat: %w", err)
	}
	if err := s.fits(o.genesis); err != nil {
		return nil, &ConfigError{Field: "nickname", Value: cfg.Nickname, Err: err}
	}
	if h != nil && s.target.ID == h.ID() {
		return nil, &ConfigError{Field: "beatTarget", Value: cfg.BeatTarget, Err: errSelfTarget}
	}
	if o.dialer == nil {
		if h == nil {
			return nil, errors.New("heartbeat: nil host and no WithTransport")
		}
		// The machine's timers own the timeouts; the transport's wall-clock
		// deadlines are only a backstop, clearly longer so they never race.
		// The Service speaks both protocols; Config.Protocol says which to offer.
		d, err := transport.NewLibp2p(h,
			transport.WithDialTimeout(transport.BackstopFactor*o.policy.DialTimeout),
			transport.WithWriteTimeout(transport.BackstopFactor*o.policy.WriteTimeout),
			transport.WithProtocols(s.protocols...))
		if err != nil {
			return nil, fmt.Errorf("heartbeat: %w", err)
		}
		o.dialer = d
	}
	if o.logger == nil {
		o.logger = hclog.New(&hclog.LoggerOptions{Name: "heartbeat", Level: hclog.Info, TimeFn: o.clock.Now})
	} else {
		o.logger = o.logger.Named("heartbeat")
	}
	// Every line names this node (peer_id, nickname) and the aggregator
	// (target): docs/logging.md has the key scheme.
	ids := []any{"target", s.target.ID.String(), "nickname", s.nickname}
	if h != nil {
		ids = append(ids, "peer_id", h.ID().String())
	}
	svc := &Service{
		cfg:     s,
		opts:    o,
		log:     o.logger.Named(o.name).With(ids...),
		dialer:  o.dialer,
		head:    head,
		machine: machine,
		streams: make(map[uint64]*stream),
		dials:   make(map[uint64]context.CancelFunc),
		results: make(chan result),
		stopped: make(chan struct{}),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
		status: Status{Name: o.name, Target: s.target.ID,
			BeatPeriod: s.beatPeriod, ReconnectPeriod: s.reconnectPeriod},
	}
	svc.bootID = newBootID()
	svc.hello = svc.newHello()
	return svc, nil
}

// Run connects at once and sends heartbeats until ctx is done or Close is
// called. It returns nil after Close, ctx.Err() after ctx ended it, and
// ErrAlreadyRunning on a second call. No goroutine of the Service outlives it.
func (s *Service) Run(ctx context.Context) error {
	if err := s.claim(); err != nil {
		return err
	}
	return s.run(ctx)
}

// Start runs the Service in a goroutine of its own, as Run does; Close ends it.
func (s *Service) Start(ctx context.Context) error {
	if err := s.claim(); err != nil {
		return err
	}
	go func() { _ = s.run(ctx) }()
	return nil
}

// claim makes the caller the Service's only runner.
func (s *Service) claim() error {
	if s.started.CompareAndSwap(false, true) {
		return nil
	}
	select {
	case <-s.closing:
		return ErrClosed
	default:
		return ErrAlreadyRunning
	}
}

func (s *Service) run(ctx context.Context) error {
	defer close(s.done)
	select {
	case <-s.closing:
		return nil
	default:
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.runCtx = runCtx
	s.timer = clockwork.NewTimer(s.opts.clock)
	defer s.timer.Close()

	s.publish(s.step(fsm.Event{Kind: fsm.Start}))
	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			err = ctx.Err()
			break loop
		case <-s.closing:
			break loop
		case <-s.timer.C():
			s.fireTimers()
			s.timer.Ack()
		case r := <-s.results:
			s.handle(r)
		}
	}
	s.shutdown(cancel)
	return err
}

// Close stops the Service: it closes the stream in order (or cancels the
// dial), and returns once every goroutine of the Service has ended. It is
// idempotent and safe to call before, during or after Run.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		if s.started.CompareAndSwap(false, true) {
			// Never run: no actor to stop, so stop the machine here.
			s.publish(s.step(fsm.Event{Kind: fsm.Stop}))
			close(s.done)
		}
	})
	<-s.done
	return nil
}

// Status returns a snapshot of the Service's state.
func (s *Service) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// shutdown steps Stop, then waits for every operation goroutine, resetting
// whatever stream arrives late, so nothing outlives Run.
func (s *Service) shutdown(cancel context.CancelFunc) {
	s.finishWrite()
	s.publish(s.step(fsm.Event{Kind: fsm.Stop}))
	close(s.stopped)
	cancel()
	s.ops.Wait()
	for a, ss := range s.streams {
		ss.release()
		_ = ss.st.Reset()
		delete(s.streams, a)
	}
}

// finishWrite lets a heartbeat write that is in flight when the stop comes
// end, for at most the close timeout, so that the stream can still be
// closed in order: the machine resets a stream whose write is in flight
// (nothing else frees a writer blocked on a stalled aggregator), and a stop
// often lands on a beat (SIGTERM right after one). Other results that
// arrive meanwhile are handled as usual; timers wait.
func (s *Service) finishWrite() {
	if !s.machine.Writing() {
		return
	}
	t := clockwork.NewTimer(s.opts.clock)
	defer t.Close()
	t.ResetAt(s.opts.clock.Now().Add(s.opts.closeTimeout))
	for s.machine.Writing() {
		select {
		case r := <-s.results:
			s.handle(r)
		case <-t.C():
			t.Ack()
			return
		}
	}
}

// post hands r to the actor, or, once the actor has stopped, resets the
// stream r carries so that nothing leaks.
func (s *Service) post(r result) {
	select {
	case s.results <- r:
	case <-s.stopped:
		if r.stream != nil {
			_ = r.stream.Reset()
		}
	}
}

func (s *Service) handle(r result) {
	switch r.ev.Kind {
	case fsm.DialSucceeded, fsm.DialFailed:
		if cancel, ok := s.dials[r.ev.Attempt]; ok {
			cancel()
			delete(s.dials, r.ev.Attempt)
		}
		if r.stream != nil {
			s.streams[r.ev.Attempt] = newStream(r.stream)
		}
	}
	o := s.step(r.ev)
	if r.ev.Kind == fsm.DialSucceeded {
		// The machine adopted the stream unless it reset it: read its
		// frames (v2) or watch its end (v1).
		if ss, ok := s.streams[r.ev.Attempt]; ok {
			s.proto = ss.st.Protocol()
			if ss.v2 {
				s.read(r.ev.Attempt, ss)
			} else {
				s.watch(r.ev.Attempt, ss)
			}
		}
	}
	s.publish(o)
}

// fireTimers steps every timer that is due, earliest first. The machine
// holds the deadlines (and clears one as its event is stepped); the Service
// only asks it. The loop is bounded by the number of timers, so a timer the
// machine rejects (a bug, logged by step) cannot trap the actor in it.
func (s *Service) fireTimers() {
	now := s.opts.clock.Now()
	for range fsm.NumTimers {
		tm, at, ok := s.machine.NextDeadline()
		if !ok || at.After(now) {
			break
		}
		s.publish(s.step(fsm.Event{Kind: tm.Event()}))
	}
	s.rearm()
}

// rearm points the one clock timer at the machine's earliest deadline.
func (s *Service) rearm() {
	if s.timer == nil {
		return // stopped before it ran
	}
	_, at, ok := s.machine.NextDeadline()
	if !ok {
		s.timer.Stop()
		return
	}
	if cur, armed := s.timer.Deadline(); !armed || !cur.Equal(at) {
		s.timer.ResetAt(at)
	}
}

// step hands ev to the machine and carries out its effects in order. The
// caller publishes the returned observation once its own bookkeeping is done.
func (s *Service) step(ev fsm.Event) Observation {
	now := s.opts.clock.Now()
	from := s.machine.State()
	effects, err := s.machine.Step(now, ev)
	if err != nil {
		// A rejected event is a bug in this shell; say so loudly, keep going.
		s.log.Error("state machine rejected an event", "event", ev.Kind.String(), "state", from.String(), "error", err)
	}
	for _, e := range effects {
		s.execute(e)
	}
	s.rearm()
	return Observation{
		At: now, Event: ev, Row: s.machine.LastRow(), From: from, To: s.machine.State(),
		Effects: append([]fsm.Effect(nil), effects...), Err: err,
	}
}

func (s *Service) execute(e fsm.Effect) {
	switch e.Kind {
	case fsm.Dial:
		s.dial(e.Attempt)
	case fsm.CancelDial:
		if cancel, ok := s.dials[e.Attempt]; ok {
			cancel()
			delete(s.dials, e.Attempt)
		}
	case fsm.Send:
		s.send(e)
	case fsm.ResetStream:
		if ss, ok := s.streams[e.Attempt]; ok {
			ss.release()
			_ = ss.st.Reset()
			delete(s.streams, e.Attempt)
		}
	case fsm.CloseStream:
		if ss, ok := s.streams[e.Attempt]; ok {
			ss.release()
			if ss.v2 {
				s.closeStreamV2(ss, e.Bye)
			} else {
				s.closeStream(ss.st)
			}
			delete(s.streams, e.Attempt)
		}
	case fsm.ArmTimer, fsm.CancelTimer:
		// The machine holds its deadlines: step rearms from NextDeadline.
	case fsm.Log:
		s.emitLog(e.Log)
	case fsm.Transitioned:
		s.log.Debug("state changed", "from", e.From.String(), "to", e.To.String())
	}
}

// closeStream ends st in order: it half-closes it, then waits, at most the
// close timeout on the Service's clock, for the aggregator to close its end
// in turn, and resets it if the aggregator does not. The wait is what makes
// a stop arrive as an orderly end: yamux only queues the half-close, and a
// host closed right after it drops it, so the aggregator would see a reset
// (a node Suspect, then Down, instead of Left). When the aggregator ended
// the stream first (RemoteClosed) it returns at once.
func (s *Service) closeStream(st transport.Stream) {
	if err := st.CloseWrite(); err != nil {
		s.log.Debug("half-close failed, resetting the stream", "error", err)
		_ = st.Reset()
		return
	}
	ended := make(chan error, 1)
	go func() { ended <- st.WaitRemote() }()
	t := clockwork.NewTimer(s.opts.clock)
	defer t.Close()
	t.ResetAt(s.opts.clock.Now().Add(s.opts.closeTimeout))
	select {
	case err := <-ended:
		if err == io.EOF {
			_ = st.Close()
		} else {
			s.log.Debug("stream ended by a reset during the clean stop", "error", err)
			_ = st.Reset()
		}
	case <-t.C():
		t.Ack()
		s.log.Info("aggregator did not close the stream in turn, resetting it", "close_timeout", s.opts.closeTimeout.String())
		_ = st.Reset()
		<-ended
	}
}

func (s *Service) dial(attempt uint64) {
	ctx, cancel := context.WithCancel(s.runCtx)
	s.dials[attempt] = cancel
	s.ops.Add(1)
	go func() {
		defer s.ops.Done()
		st, err := s.dialer.Dial(ctx, s.cfg.target)
		if err != nil {
			s.post(result{ev: fsm.Event{Kind: fsm.DialFailed, Attempt: attempt, Err: err}})
			return
		}
		proto := fsm.V1
		if st.Protocol() == ProtocolIDV2 {
			proto = fsm.V2
		}
		s.post(result{ev: fsm.Event{Kind: fsm.DialSucceeded, Attempt: attempt, Protocol: proto}, stream: st})
	}()
}

func (s *Service) send(e fsm.Effect) {
	attempt := e.Attempt
	ss, ok := s.streams[attempt]
	if !ok {
		// Cannot happen: the machine only sends on the stream it adopted.
		s.log.Error("no stream to send on", "attempt", attempt)
		return
	}
	st := ss.st
	var (
		line []byte
		err  error
	)
	if ss.v2 {
		line, err = s.frames(ss, e)
	} else {
		line, err = s.line()
	}
	s.ops.Add(1)
	go func() {
		defer s.ops.Done()
		if err == nil {
			_, err = st.Write(line)
		}
		if err != nil {
			s.post(result{ev: fsm.Event{Kind: fsm.WriteFailed, Attempt: attempt, Err: err}})
			return
		}
		s.post(result{ev: fsm.Event{Kind: fsm.WriteSucceeded, Attempt: attempt}})
	}()
}

// watch reports the end of attempt's v1 stream as soon as the remote closes
// or resets it, without waiting for the next write.
func (s *Service) watch(attempt uint64, ss *stream) {
	s.ops.Add(1)
	go func() {
		defer s.ops.Done()
		err := ss.st.WaitRemote()
		switch {
		case err == nil:
			return // closed by us: nothing to report
		case errors.Is(err, io.EOF):
			s.post(result{ev: fsm.Event{Kind: fsm.RemoteClosed, Attempt: attempt}})
		default:
			s.post(result{ev: fsm.Event{Kind: fsm.RemoteReset, Attempt: attempt, Err: err}})
		}
	}()
}

// line encodes the next heartbeat. A line longer than wire.MaxLineBytes is
// never sent: an aggregator would reset the stream as line_too_long, and the
// sender would reconnect for ever. The first such line of a run of them is
// logged at ERROR; the heartbeat then carries the last head that fitted (and
// no miner address if even that is too long: New checked that the rest
// fits), so the node stays visible.
func (s *Service) line() ([]byte, error) {
	hb, fresh := s.heartbeat()
	line, err := wire.AppendLine(nil, hb)
	if err != nil || len(line)-1 <= wire.MaxLineBytes {
		if err == nil && fresh {
			s.lastHead, s.headTooLong = ChainHead{Head: hb.Head, Height: hb.Height}, false
		}
		return line, err
	}
	if !s.headTooLong {
		s.headTooLong = true
		s.log.Error("heartbeat line too long, not sent; reporting the last head that fits",
			"line_bytes", len(line)-1, "limit_bytes", wire.MaxLineBytes, "head_bytes", len(hb.Head),
			"miner_address_bytes", len(hb.MinerAddress), "height", s.lastHead.Height)
	}
	hb.Head, hb.Height = s.lastHead.Head, s.lastHead.Height
	if line, err = wire.AppendLine(line[:0], hb); err != nil || len(line)-1 <= wire.MaxLineBytes {
		return line, err
	}
	hb.Head, hb.MinerAddress = "", ""
	return wire.AppendLine(line[:0], hb)
}

// heartbeat builds the next report; fresh says whether its head is the one
// the head getter just returned. A failing head getter still yields a
// heartbeat, with the last good head; its error is logged once per outage.
func (s *Service) heartbeat() (hb Heartbeat, fresh bool) {
	h, err := s.head()
	switch {
	case err != nil && !s.headDown:
		s.headDown = true
		s.log.Warn("head unavailable, reporting the last good head", "height", s.lastHead.Height, "error", err)
	case err == nil:
		if s.headDown {
			s.headDown = false
			s.log.Info("head available again", "height", h.Height)
		}
	}
	if err != nil {
		h = s.lastHead
	}
	hb = Heartbeat{
		Head:       h.Head,
		Height:     h.Height,
		Nickname:   s.cfg.nickname,
		GenesisCID: s.opts.genesis,
	}
	if s.opts.miner != nil {
		hb.MinerAddress = s.opts.miner()
	}
	return hb, err == nil
}

func (s *Service) emitLog(r fsm.LogRecord) {
	s.log.Log(hclogLevel(r.Level), r.Message(), logFields(r)...)
}

func hclogLevel(l fsm.Level) hclog.Level {
	switch l {
	case fsm.LevelDebug:
		return hclog.Debug
	case fsm.LevelInfo:
		return hclog.Info
	case fsm.LevelWarn:
		return hclog.Warn
	default:
		return hclog.Error
	}
}

// publish updates the status snapshot and tells the observer.
func (s *Service) publish(o Observation) {
	m := s.machine
	rtt, srtt, skew, _ := m.RTT()
	s.mu.Lock()
	s.status.Protocol = s.proto
	s.status.RTT, s.status.SmoothedRTT, s.status.ClockSkew = rtt, srtt, skew
	s.status.Seq, s.status.Acks, s.status.StreamBeatPeriod = m.Seq(), m.Acks(), m.BeatPeriod()
	s.status.State = m.State()
	s.status.Since = m.Since()
	s.status.Attempt = m.Attempt()
	s.status.Failures = m.Failures()
	s.status.LastError = m.LastError()
	s.status.BeatsSent = m.Beats()
	s.status.NextRetry, _ = m.Deadline(fsm.RetryTimer)
	s.mu.Unlock()
	if s.opts.observer != nil {
		s.opts.observer(o)
	}
}
