package wire2_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/p2pbeat/heartbeat/wire2"
)

var benchBeat = wire2.Beat{Seq: 1, Time: 1_700_000_000_000_000_000, Head: "{ bafy2bzaceabc bafy2bzacedef }", Height: 444, RTT: 1500 * time.Microsecond}

// BenchmarkEncodeBeat appends one Beat frame to a reused buffer.
func BenchmarkEncodeBeat(b *testing.B) {
	var enc wire2.Encoder
	beat := benchBeat
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		beat.Seq++
		var err error
		if buf, err = enc.Append(buf[:0], &beat); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeBeat reads one Beat frame from a stream and decodes it into
// a reused Frame.
func BenchmarkDecodeBeat(b *testing.B) {
	var enc wire2.Encoder
	var stream []byte
	beat := benchBeat
	for i := 0; i < 1024; i++ {
		beat.Seq++
		stream, _ = enc.Append(stream, &beat)
	}
	rd := bytes.NewReader(stream)
	r := wire2.NewReader(rd, make([]byte, wire2.MaxFrameBytes))
	var f wire2.Frame
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%1024 == 0 {
			rd.Reset(stream)
		}
		p, err := r.Next()
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Decode(p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAckRoundTrip encodes an Ack and decodes it, as a sender does per
// beat.
func BenchmarkEncodeDecodeAck(b *testing.B) {
	var enc wire2.Encoder
	var f wire2.Frame
	buf := make([]byte, 0, 64)
	ack := wire2.Ack{Seq: 1, Time: 1_700_000_000_000_000_000}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		ack.Seq++
		buf, _ = enc.Append(buf[:0], &ack)
		p, _, err := wire2.SplitFrame(buf, wire2.MaxFrameBytes)
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Decode(p); err != nil {
			b.Fatal(err)
		}
	}
}
