package aggregator

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/wire2"
)

// fuzzStream is a v2 stream from arbitrary bytes; what the aggregator
// writes is checked to be whole, valid frames.
type fuzzStream struct {
	io.Reader
	out bytes.Buffer
}

func (s *fuzzStream) Write(p []byte) (int, error) { return s.out.Write(p) }

// FuzzServeFrames: whatever a peer sends on a v2 stream, the aggregator
// never panics, ends the stream with nil (EOF, Bye) or an error it
// classifies (a *wire2.Error or one of its session errors), and writes only
// valid aggregator frames (Welcome, Ack).
func FuzzServeFrames(f *testing.F) {
	var enc wire2.Encoder
	seed := func(ms ...wire2.Message) []byte {
		var out []byte
		for _, m := range ms {
			out, _ = enc.Append(out, m)
		}
		return out
	}
	hello := &wire2.Hello{BootID: wire2.BootID{1}, BeatPeriod: time.Second}
	f.Add(seed(hello, &wire2.Beat{Seq: 1, Time: 1}, &wire2.Beat{Seq: 3, Time: 2, Head: "h"}, &wire2.Bye{}))
	f.Add(seed(hello, hello))
	f.Add(seed(&wire2.Beat{Seq: 1, Time: 1}))
	f.Add(seed(hello, &wire2.Ack{Seq: 1, Time: 1}))
	f.Add([]byte{0xff, 0xff, 0x01})

	a, err := New(newHost(f), Config{MaxNodes: 16})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = a.Close() })
	ids := make([]peer.ID, 8)
	for i := range ids {
		ids[i] = randomPeer(f)
	}
	n := 0
	f.Fuzz(func(t *testing.T, in []byte) {
		n++
		s := &fuzzStream{Reader: bytes.NewReader(in)}
		err := a.ServeFrames(ids[n%len(ids)], s)
		var we *wire2.Error
		switch {
		case err == nil, errors.As(err, &we), errors.Is(err, ErrBeatBeforeHello), errors.Is(err, ErrSecondHello),
			errors.Is(err, ErrSeqBackwards), errors.Is(err, ErrUnexpectedMessage), errors.Is(err, tracker.ErrFull):
		default:
			t.Fatalf("unclassified error: %v", err)
		}
		r := wire2.NewReader(&s.out, make([]byte, wire2.MaxFrameBytes))
		var fr wire2.Frame
		for {
			p, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("aggregator wrote a bad frame: %v", err)
			}
			if err := fr.Decode(p); err != nil || (fr.Type != wire2.TypeWelcome && fr.Type != wire2.TypeAck) {
				t.Fatalf("aggregator wrote %v (%v)", fr.Type, err)
			}
		}
	})
}
