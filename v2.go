package heartbeat

import (
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"time"

	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/internal/safetext"
	"github.com/p2pbeat/heartbeat/wire2"
)

// Protocol v2 on the Service's side (docs/protocol.md, "Rules for a v2
// sender"): a Hello first on every stream (written with the first Beat),
// then a Beat per heartbeat with the machine's seq and last RTT, and a Bye
// before the half-close of a clean stop. One reader per stream turns the
// aggregator's frames into events: Welcome, Ack and GoAway; anything else is
// a BadFrame, and the stream's end a RemoteClosed or RemoteReset, as the
// v1 watcher reports it.

// Impl is the implementation name a v2 Hello carries.
const Impl = "p2pbeat/heartbeat"

// modulePath is this module's path, to find its version in the build info.
const modulePath = "github.com/p2pbeat/heartbeat"

// ErrUnexpectedFrame is matched by the error of a well-formed v2 frame that
// an aggregator may not send: a Hello, Beat or Bye, or a second Welcome.
var ErrUnexpectedFrame = errors.New("heartbeat v2 frame that an aggregator does not send")

// byeReason is the reason of the Bye a clean stop sends.
const byeReason = "shutdown"

// Version is this module's version in the running binary's build info
// (debug.ReadBuildInfo), as `heartbeat version` reports it: a tag such as
// v1.2.0 after go install …@v1.2.0, "(devel)" for a build from a checkout,
// the dependency's version when a program embeds the module, "" without
// build info. A v2 Hello carries it.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	if bi.Main.Path == modulePath {
		return bi.Main.Version
	}
	for _, d := range bi.Deps {
		if d.Path == modulePath {
			if d.Replace != nil && d.Replace.Version != "" {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	return ""
}

// newBootID draws the 128 random bits that tell this run of the sender from
// its earlier ones (never all zeros, which the protocol rejects).
func newBootID() wire2.BootID {
	var id wire2.BootID
	for id.IsZero() {
		_, _ = crand.Read(id[:])
	}
	return id
}

// newHello is the Hello of every v2 stream of s but for the miner address,
// read when a stream opens. Labels longer than the protocol carries are cut
// at a character boundary (v1 lines take longer ones; the aggregator keeps
// 256 bytes of either). Periods outside the protocol's bounds (possible
// only with WithTransport: Config.Protocol keeps the Service's own dialer
// to v1 then) are brought within them.
func (s *Service) newHello() wire2.Hello {
	h := wire2.Hello{
		BootID:          s.bootID,
		Impl:            Impl,
		Version:         label(Version()),
		BeatPeriod:      min(max(s.cfg.beatPeriod, wire2.MinPeriod), wire2.MaxBeatPeriod),
		ReconnectPeriod: s.cfg.reconnectPeriod,
		Nickname:        label(s.cfg.nickname),
	}
	if h.ReconnectPeriod < wire2.MinPeriod || h.ReconnectPeriod > wire2.MaxReconnectPeriod {
		h.ReconnectPeriod = 0 // optional: not told
	}
	if s.opts.genesis != nil {
		h.Genesis = label(s.opts.genesis.String())
	}
	return h
}

// label cuts v to wire2.MaxLabelBytes at a UTF-8 boundary.
func label(v string) string { return safetext.Prefix(v, wire2.MaxLabelBytes) }

// frames encodes what the Send e writes on the v2 stream ss: the Hello
// first on the stream's first write, then the Beat e.Seq, stamped e.At,
// with the last RTT (bounded to what the wire carries). A head that makes
// the frame longer than wire2.MaxFrameBytes is not sent, as in v1: the Beat
// carries the last head that fitted (logged once per run of such heads).
func (s *Service) frames(ss *stream, e fsm.Effect) ([]byte, error) {
	b := ss.buf[:0]
	var err error
	if !ss.hello {
		hello := s.hello
		if s.opts.miner != nil {
			hello.MinerAddress = label(s.opts.miner())
		}
		if b, err = ss.enc.Append(b, &hello); err != nil {
			return nil, fmt.Errorf("encode Hello: %w", err)
		}
		ss.hello = true
	}
	hb, fresh := s.heartbeat()
	ss.beat = wire2.Beat{Seq: e.Seq, Time: e.At.UnixNano(), Head: hb.Head, Height: hb.Height, RTT: min(e.RTT, wire2.MaxRTT)}
	out, err := ss.enc.Append(b, &ss.beat)
	if err == nil {
		if fresh {
			s.lastHead, s.headTooLong = ChainHead{Head: hb.Head, Height: hb.Height}, false
		}
		ss.buf = out
		return out, nil
	}
	if !s.headTooLong {
		s.headTooLong = true
		s.log.Error("heartbeat frame too long, not sent; reporting the last head that fits",
			"limit_bytes", wire2.MaxFrameBytes, "head_bytes", len(hb.Head), "height", s.lastHead.Height, "error", err)
	}
	ss.beat.Head, ss.beat.Height = s.lastHead.Head, s.lastHead.Height
	if out, err = ss.enc.Append(b, &ss.beat); err != nil {
		ss.beat.Head = ""
		if out, err = ss.enc.Append(b, &ss.beat); err != nil {
			return nil, fmt.Errorf("encode Beat: %w", err)
		}
	}
	ss.buf = out
	return out, nil
}

// read runs the reader of attempt's v2 stream: it turns each frame the
// aggregator sends into an event, and the stream's end into RemoteClosed
// or RemoteReset (a malformed frame, or an end inside one, into BadFrame),
// then stops. It goes on reading after the Service ended the stream, so
// that an orderly close sees the aggregator's end, but posts nothing then.
func (s *Service) read(attempt uint64, ss *stream) {
	s.ops.Add(1)
	go func() {
		defer s.ops.Done()
		r := wire2.NewReader(ss.st, make([]byte, wire2.MaxFrameBytes))
		var (
			f        wire2.Frame
			welcomed bool
		)
		for {
			ev := fsm.Event{Attempt: attempt}
			p, err := r.Next()
			if err == nil {
				err = f.Decode(p)
			}
			var ferr *wire2.Error
			switch {
			case err == nil:
				ev = frameEvent(ev, &f, &welcomed)
			case errors.Is(err, io.EOF):
				ev.Kind = fsm.RemoteClosed
			case errors.As(err, &ferr):
				ev.Kind, ev.Err = fsm.BadFrame, err
			default:
				ev.Kind, ev.Err = fsm.RemoteReset, err
			}
			if err != nil {
				ss.endErr = err
				close(ss.ended)
			}
			select {
			case <-ss.quit:
				// Ended by the Service: not news. Read on to its end.
			default:
				s.postFrom(ss, result{ev: ev})
			}
			if err != nil || ev.Kind == fsm.BadFrame {
				if err == nil {
					// The machine resets the stream on a bad frame: stop
					// here, but let an orderly close still see an end.
					ss.endErr = ev.Err
					close(ss.ended)
				}
				return
			}
		}
	}()
}

// frameEvent is the event of the well-formed frame f: Welcome (the first
// one only), Ack or GoAway; anything else is a BadFrame.
func frameEvent(ev fsm.Event, f *wire2.Frame, welcomed *bool) fsm.Event {
	switch f.Type {
	case wire2.TypeWelcome:
		if *welcomed {
			ev.Kind, ev.Err = fsm.BadFrame, fmt.Errorf("%w: a second Welcome", ErrUnexpectedFrame)
			return ev
		}
		*welcomed = true
		ev.Kind, ev.BeatPeriod = fsm.WelcomeReceived, f.Welcome.BeatPeriod
	case wire2.TypeAck:
		ev.Kind, ev.Seq, ev.RemoteTime = fsm.AckReceived, f.Ack.Seq, time.Unix(0, f.Ack.Time)
	case wire2.TypeGoAway:
		ev.Kind, ev.RetryAfter, ev.Reason = fsm.GoAwayReceived, f.GoAway.RetryAfter, f.GoAway.Reason
	default:
		ev.Kind, ev.Err = fsm.BadFrame, fmt.Errorf("%w: %s", ErrUnexpectedFrame, f.Type)
	}
	return ev
}

// postFrom hands r, read from ss, to the actor, unless the Service ended ss
// meanwhile (then r is stale, and the actor may be waiting for ss's end) or
// stopped.
func (s *Service) postFrom(ss *stream, r result) {
	select {
	case s.results <- r:
	case <-ss.quit:
	case <-s.stopped:
	}
}

// closeStreamV2 ends the v2 stream ss in order, as closeStream does a v1
// one: on a clean stop (bye) it writes Bye first, then it half-closes and
// waits, at most the close timeout, for the aggregator's end as the reader
// sees it; an orderly end is then closed, anything else reset. The write
// runs in a goroutine so that a stalled aggregator cannot hold the actor
// past the timeout; the reset frees it.
func (s *Service) closeStreamV2(ss *stream, bye bool) {
	var frame []byte
	if bye {
		var err error
		if frame, err = ss.enc.Append(ss.buf[:0], &wire2.Bye{Reason: byeReason}); err != nil {
			s.log.Error("encode Bye", "error", err) // a constant message: cannot happen
		}
	}
	wrote := make(chan error, 1)
	s.ops.Add(1)
	go func() {
		defer s.ops.Done()
		var err error
		if len(frame) > 0 {
			_, err = ss.st.Write(frame)
		}
		if err == nil {
			err = ss.st.CloseWrite()
		}
		wrote <- err
	}()
	t := clockwork.NewTimer(s.opts.clock)
	defer t.Close()
	t.ResetAt(s.opts.clock.Now().Add(s.opts.closeTimeout))
	ended := ss.ended
	for {
		select {
		case err := <-wrote:
			if err != nil {
				s.log.Debug("half-close failed, resetting the stream", "error", err)
				_ = ss.st.Reset()
				return
			}
			wrote = nil
		case <-ended:
			if !errors.Is(ss.endErr, io.EOF) {
				s.log.Debug("stream ended by a reset during the clean stop", "error", ss.endErr)
				_ = ss.st.Reset()
				return
			}
			ended = nil
		case <-t.C():
			t.Ack()
			s.log.Info("aggregator did not close the stream in turn, resetting it", "close_timeout", s.opts.closeTimeout.String())
			_ = ss.st.Reset()
			return
		}
		if wrote == nil && ended == nil {
			// Both ends closed in order.
			_ = ss.st.Close()
			return
		}
	}
}
