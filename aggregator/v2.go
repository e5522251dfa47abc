package aggregator

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/aggregator/metrics"
	"github.com/p2pbeat/heartbeat/aggregator/pacing"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/wire"
	"github.com/p2pbeat/heartbeat/wire2"
)

// Errors that end a v2 stream, besides the frame decoder's (*wire2.Error).
// ServeFrames wraps them; match with errors.Is.
var (
	// ErrBeatBeforeHello: the first frame of a v2 stream is not a Hello.
	ErrBeatBeforeHello = errors.New("heartbeat v2 stream does not start with Hello")
	// ErrSecondHello: a second Hello on one stream.
	ErrSecondHello = errors.New("second Hello on a heartbeat v2 stream")
	// ErrSeqBackwards: a Beat whose seq is not above the previous one.
	ErrSeqBackwards = errors.New("heartbeat v2 Beat seq did not grow")
	// ErrUnexpectedMessage: a sender sent an aggregator's message.
	ErrUnexpectedMessage = errors.New("heartbeat v2 message only an aggregator sends")
	// ErrPaced: a new v2 stream past Config.AcceptRate, sent GoAway.
	ErrPaced = errors.New("heartbeat v2 stream paced: accept rate exceeded")
)

// The protocol names of Config.Protocols.
const (
	ProtocolV1 = "v1"
	ProtocolV2 = "v2"
)

// Impl is the implementation name the aggregator puts in Welcome.
const Impl = "p2pbeat/heartbeat"

// v2Reserve is the memory a v2 stream reserves: the frame buffer, the
// reader's read-ahead and the write buffer of a Welcome or an Ack.
const v2Reserve = wire2.MaxFrameBytes + 512

// v2Buffers are one v2 stream's buffers, pooled across streams.
type v2Buffers struct {
	frame []byte
	out   []byte
	enc   wire2.Encoder
	f     wire2.Frame
	hb    wire.Heartbeat
	ack   wire2.Ack // here, not on the stack: it escapes through Append
}

// pacer serialises the aggregator's pacing.Pacer: the stream handlers run
// concurrently.
type pacer struct {
	mu sync.Mutex
	p  *pacing.Pacer
}

// admit decides on a new v2 stream at now (read under the lock, so that
// the times the Pacer sees do not go backwards): ok, or the retry-after of
// its slot.
func (p *pacer) admit(now func() time.Time) (bool, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.p.Admit(now())
}

// spread is a retry-after drawn uniformly from [0, min(PacingWindow, within)).
func (p *pacer) spread(within time.Duration) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.p.SpreadWithin(within)
}

// handleStreamV2 is the libp2p stream handler for wire2.ProtocolID.
func (a *Aggregator) handleStreamV2(s network.Stream) {
	if !a.enter() {
		s.Close()
		return
	}
	defer a.wg.Done()
	id := s.Conn().RemotePeer()
	if err := s.Scope().SetService(wire.ServiceName); err != nil {
		a.reject(id, metrics.ReasonResourceLimit, fmt.Errorf("attach stream to service %s: %w", wire.ServiceName, err))
		s.Reset()
		return
	}
	if !a.gater.Allows(id) {
		a.reject(id, metrics.ReasonNotAllowed, ErrNotAllowed)
		s.Reset()
		return
	}
	if err := s.Scope().ReserveMemory(v2Reserve, network.ReservationPriorityAlways); err != nil {
		a.reject(id, metrics.ReasonResourceLimit, fmt.Errorf("reserve %d bytes for the frame buffers: %w", v2Reserve, err))
		s.Reset()
		return
	}
	defer s.Scope().ReleaseMemory(v2Reserve)
	if a.knownLive(id) {
		// Beating moments ago in this process (a reset storm, a NAT
		// rebinding): pacing it would only turn it Suspect. After a
		// restart the restored nodes are Unknown, so that storm is paced.
		a.obs.StreamUnpaced()
	} else if ok, after := a.pace.admit(a.clock.Now); !ok {
		// Counted before the sender can see the GoAway.
		a.reject(id, metrics.ReasonPaced, ErrPaced)
		a.goAway(s, after, "busy")
		return
	}
	ls := &liveStream{s: s, v2: true}
	if !a.register(id, ls) {
		s.Close()
		return
	}
	err := a.serveV2(id, s, ls)
	a.unregister(id, ls)
	// A full tracker's refusal went out as GoAway and an orderly close.
	if err != nil && !errors.Is(err, ErrClosed) && !errors.Is(err, tracker.ErrFull) {
		s.Reset()
		return
	}
	s.Close()
}

// knownLive reports whether the tracker holds id Up or Suspect: a node
// this process saw beating within its Suspect/Down thresholds, whose new
// stream is not paced.
func (a *Aggregator) knownLive(id peer.ID) bool {
	st, ok := a.tracker.State(id)
	return ok && (st == tracker.Up || st == tracker.Suspect)
}

// goAway answers a stream it will not serve with GoAway (retry after the
// given delay) and closes it: an orderly end, so the sender reads the
// frame before the EOF.
func (a *Aggregator) goAway(s network.Stream, retryAfter time.Duration, reason string) {
	var enc wire2.Encoder
	b, err := enc.Append(nil, &wire2.GoAway{RetryAfter: retryAfter, Reason: reason})
	if err == nil {
		_ = s.SetWriteDeadline(time.Now().Add(a.cfg.IdleTimeout))
		_, err = s.Write(b)
	}
	if err != nil {
		s.Reset()
		return
	}
	s.Close()
}

// deadliner is the part of network.Stream the v2 loop needs for deadlines.
type deadliner interface {
	SetDeadline(time.Time) error
}

// ServeFrames runs one v2 stream from the authenticated peer id over rw
// until it ends: Hello (answered with Welcome), Beats (each answered with
// an Ack), until Bye (the node is Left at once), EOF, or an error. It
// returns nil after a Bye or a clean EOF, and otherwise the error that
// ended the stream (a *wire2.Error, ErrBeatBeforeHello, ErrSecondHello,
// ErrSeqBackwards, ErrUnexpectedMessage, ErrIdleTimeout, tracker.ErrFull,
// or the stream's error), wrapped; rejections are counted and logged. If
// rw has a SetDeadline method (a network.Stream does), the idle timeout is
// enforced with it. Tests and benchmarks call it with in-memory streams.
func (a *Aggregator) ServeFrames(id peer.ID, rw io.ReadWriter) error {
	return a.serveV2(id, rw, nil)
}

func (a *Aggregator) serveV2(id peer.ID, rw io.ReadWriter, ls *liveStream) (err error) {
	if a.hooks != nil && a.hooks.ended != nil {
		defer func() { a.hooks.ended(id, err) }()
	}
	if err := a.tracker.StreamOpened(id, a.clock.Now()); err != nil {
		if errors.Is(err, tracker.ErrFull) {
			a.reject(id, metrics.ReasonTooManyNodes, err)
			if s, ok := rw.(network.Stream); ok {
				// No slot: the capacity short is the tracker's, not the rate.
				a.goAway(s, a.pace.spread(a.cfg.PacingWindow), metrics.ReasonTooManyNodes)
			}
		}
		return fmt.Errorf("heartbeat v2 stream from %s refused: %w", id, err)
	}
	a.obs.StreamOpened()

	b := a.v2bufs.Get().(*v2Buffers)
	var w io.Writer = rw
	if ls != nil {
		w = ls // serialised with Close's GoAway
	}
	err = a.frameLoop(id, rw, w, ls, b)
	a.v2bufs.Put(b)

	how := metrics.ClosedEOF
	switch {
	case ls != nil && ls.isDraining():
		if err == nil {
			err = io.EOF
		}
		err, how = fmt.Errorf("%w: %w", ErrClosed, err), metrics.ClosedError
	case err == nil:
	case ls != nil && ls.superseded.Load():
		err, how = ErrSuperseded, metrics.ClosedError
	default:
		how, err = a.classifyV2(id, err)
	}
	if ch, ok := a.tracker.StreamEnded(id, how == metrics.ClosedEOF, a.clock.Now()); ok {
		a.logChange(ch)
	}
	a.obs.StreamClosedHow(how)
	if err != nil {
		return fmt.Errorf("heartbeat v2 stream from %s: %w", id, err)
	}
	return nil
}

// frameLoop is the v2 hot path: per Beat one frame read, one decode, one
// tracker update and one Ack written, without allocating for a steady
// sender.
func (a *Aggregator) frameLoop(id peer.ID, rw io.ReadWriter, w io.Writer, ls *liveStream, b *v2Buffers) error {
	var dl deadliner
	if ls != nil {
		dl = ls
	} else if d, ok := rw.(deadliner); ok {
		dl = d
	}
	idle := a.cfg.IdleTimeout
	arm := func() error {
		if dl == nil {
			return nil
		}
		// Wall clock on purpose: the deadline lives inside the transport.
		return dl.SetDeadline(time.Now().Add(idle))
	}
	r := wire2.NewReader(rw, b.frame)
	f := &b.f
	hb := &b.hb
	var (
		hello   bool
		lastSeq uint64
	)
	for {
		if err := arm(); err != nil {
			return err
		}
		p, err := r.Next()
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		now := a.clock.Now()
		if err := f.Decode(p); err != nil {
			return err
		}
		switch f.Type {
		case wire2.TypeHello:
			if hello {
				return ErrSecondHello
			}
			hello = true
			h := &f.Hello
			*hb = wire.Heartbeat{Nickname: h.Nickname, MinerAddress: h.MinerAddress, Genesis: h.Genesis}
			a.capLabels(hb)
			restart, err := a.tracker.Hello(id, tracker.HelloInfo{BootID: h.BootID, Period: h.BeatPeriod}, now)
			if err != nil {
				return err
			}
			// A node declaring a long period must not trip the idle
			// timeout between two of its beats.
			idle = max(a.cfg.IdleTimeout, 3*h.BeatPeriod)
			if restart {
				a.log.Info("node restarted", "peer_id", id.String(), "nickname", logText(hb.Nickname))
			}
			if err := a.write(w, b, &wire2.Welcome{Impl: Impl, Version: a.version}); err != nil {
				return err
			}
		case wire2.TypeBeat:
			if !hello {
				return ErrBeatBeforeHello
			}
			bt := &f.Beat
			if bt.Seq <= lastSeq {
				return fmt.Errorf("%w: %d after %d", ErrSeqBackwards, bt.Seq, lastSeq)
			}
			lastSeq = bt.Seq
			if hb.Head != bt.Head {
				hb.Head = bt.Head
				if len(hb.Head) > MaxLabelBytes {
					hb.Head = truncateLabel(hb.Head)
					a.obs.Truncated(metrics.FieldHead)
				}
			}
			hb.Height = bt.Height
			// Skew: the sender's clock at the midpoint of the round
			// trip, minus ours when the Beat arrived.
			skew := time.Duration(bt.Time) + bt.RTT/2 - time.Duration(now.UnixNano())
			ch, changed, err := a.tracker.BeatV2(id, hb, tracker.BeatInfo{Seq: bt.Seq, RTT: bt.RTT, Skew: skew}, now)
			if err != nil {
				return err
			}
			a.obs.BeatV2(bt.RTT, skew)
			if changed {
				a.logChange(ch)
			}
			if a.beatLog {
				a.logBeat(id, hb, now)
			}
			// Ack.Time must be after 1970: a mock clock may sit at 0.
			b.ack = wire2.Ack{Seq: bt.Seq, Time: max(now.UnixNano(), 1)}
			if err := a.write(w, b, &b.ack); err != nil {
				return err
			}
			if a.hooks != nil && a.hooks.beat != nil {
				a.hooks.beat(id, hb)
			}
		case wire2.TypeBye:
			if !hello {
				return ErrBeatBeforeHello
			}
			// The node is leaving: Left at once, whatever follows.
			return nil
		default:
			return fmt.Errorf("%w: %v", ErrUnexpectedMessage, f.Type)
		}
	}
}

// write sends one frame.
func (a *Aggregator) write(w io.Writer, b *v2Buffers, m wire2.Message) error {
	var err error
	if b.out, err = b.enc.Append(b.out[:0], m); err != nil {
		return err
	}
	if _, err := w.Write(b.out); err != nil {
		return fmt.Errorf("write %v: %w", m.MessageType(), err)
	}
	return nil
}

// classifyV2 is classify for v2 streams: the frame decoder's and the
// session's faults first, then what v1 shares.
func (a *Aggregator) classifyV2(id peer.ID, err error) (string, error) {
	var we *wire2.Error
	reason := ""
	switch {
	case errors.As(err, &we):
		reason = string(we.Reason)
	case errors.Is(err, ErrBeatBeforeHello):
		reason = metrics.ReasonBeatBeforeHello
	case errors.Is(err, ErrSecondHello):
		reason = metrics.ReasonSecondHello
	case errors.Is(err, ErrSeqBackwards):
		reason = metrics.ReasonSeqBackwards
	case errors.Is(err, ErrUnexpectedMessage):
		reason = metrics.ReasonUnexpectedMessage
	default:
		return a.classify(id, err)
	}
	a.reject(id, reason, err)
	return metrics.ClosedError, err
}
