package wire2_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/wire2"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.txt")

// vectors are the test vectors of docs/protocol.md, in its order.
var vectors = []struct {
	name string
	msg  wire2.Message
}{
	{"Hello", &wire2.Hello{
		BootID:          wire2.BootID{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
		Impl:            "p2pbeat/heartbeat",
		Version:         "v0.4.0",
		BeatPeriod:      3 * time.Second,
		ReconnectPeriod: 10 * time.Second,
		Nickname:        "BobHoblaw",
		MinerAddress:    "t01234",
		Genesis:         "bafy2bzaceabc",
	}},
	{"Hello, minimal", &wire2.Hello{
		BootID:     wire2.BootID{0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x01},
		BeatPeriod: 10 * time.Second,
	}},
	{"Beat, first (no RTT yet)", &wire2.Beat{Seq: 1, Time: 1_700_000_000_000_000_000, Head: "{ bafy2bzaceabc }", Height: 444}},
	{"Beat", &wire2.Beat{Seq: 2, Time: 1_700_000_003_000_000_000, Head: "{ bafy2bzaceabc }", Height: 445, RTT: 1500 * time.Microsecond}},
	{"Bye", &wire2.Bye{Reason: "shutdown"}},
	{"Welcome", &wire2.Welcome{Impl: "p2pbeat/heartbeat", Version: "v0.4.0"}},
	{"Welcome, asking for a 10 s period", &wire2.Welcome{Impl: "p2pbeat/heartbeat", Version: "v0.4.0", BeatPeriod: 10 * time.Second}},
	{"Ack", &wire2.Ack{Seq: 2, Time: 1_700_000_003_000_800_000}},
	{"GoAway", &wire2.GoAway{RetryAfter: 7500 * time.Millisecond, Reason: "busy"}},
}

// renderVectors renders every vector as docs/protocol.md shows it.
func renderVectors(t *testing.T) string {
	t.Helper()
	var enc wire2.Encoder
	var sb strings.Builder
	for _, v := range vectors {
		frame, err := enc.Append(nil, v.msg)
		if err != nil {
			t.Fatalf("%s: %v", v.name, err)
		}
		payload, rest, err := wire2.SplitFrame(frame, wire2.MaxFrameBytes)
		if err != nil || len(rest) != 0 {
			t.Fatalf("%s: split: %v, %d bytes left", v.name, err, len(rest))
		}
		diag, err := cbor.Diagnose(payload)
		if err != nil {
			t.Fatalf("%s: diagnose: %v", v.name, err)
		}
		fmt.Fprintf(&sb, "%s\ndiag: %s\nframe: %s\n\n", v.name, diag, hex.EncodeToString(frame))
	}
	return sb.String()
}

// TestVectors: encoding every vector gives testdata/vectors.txt byte for
// byte, decoding each frame gives the message back, and docs/protocol.md
// shows every vector.
func TestVectors(t *testing.T) {
	got := renderVectors(t)
	path := filepath.Join("testdata", "vectors.txt")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatalf("vectors differ from %s (go test ./wire2 -run TestVectors -update):\n%s", path, got)
	}
	doc, err := os.ReadFile(filepath.Join("..", "docs", "protocol.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, block := range strings.Split(strings.TrimSpace(got), "\n\n") {
		lines := strings.Split(block, "\n")
		for _, l := range lines[1:] {
			if !bytes.Contains(doc, []byte(l)) {
				t.Errorf("docs/protocol.md lacks the %s vector line %q", lines[0], l)
			}
		}
	}
}

// TestVectorsDecode: each golden frame, read from hex, decodes to the
// message that produced it.
func TestVectorsDecode(t *testing.T) {
	want, err := os.ReadFile(filepath.Join("testdata", "vectors.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var frames [][]byte
	for _, l := range strings.Split(string(want), "\n") {
		if h, ok := strings.CutPrefix(l, "frame: "); ok {
			b, err := hex.DecodeString(h)
			if err != nil {
				t.Fatal(err)
			}
			frames = append(frames, b)
		}
	}
	if len(frames) != len(vectors) {
		t.Fatalf("%d frames in testdata, %d vectors", len(frames), len(vectors))
	}
	var f wire2.Frame
	for i, v := range vectors {
		r := wire2.NewReader(bytes.NewReader(frames[i]), make([]byte, wire2.MaxFrameBytes))
		p, err := r.Next()
		if err != nil {
			t.Fatalf("%s: %v", v.name, err)
		}
		if err := f.Decode(p); err != nil {
			t.Fatalf("%s: %v", v.name, err)
		}
		if f.Type != v.msg.MessageType() {
			t.Fatalf("%s: type %v", v.name, f.Type)
		}
		got := decoded(&f)
		if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", v.msg) {
			t.Errorf("%s: decoded %+v, want %+v", v.name, got, v.msg)
		}
		if _, err := r.Next(); err != io.EOF {
			t.Errorf("%s: after the frame: %v, want io.EOF", v.name, err)
		}
	}
}

func decoded(f *wire2.Frame) wire2.Message {
	switch f.Type {
	case wire2.TypeHello:
		return &f.Hello
	case wire2.TypeBeat:
		return &f.Beat
	case wire2.TypeBye:
		return &f.Bye
	case wire2.TypeWelcome:
		return &f.Welcome
	case wire2.TypeAck:
		return &f.Ack
	case wire2.TypeGoAway:
		return &f.GoAway
	}
	return nil
}

// payload returns the hex of a frame carrying the payload given in hex.
func payload(h string) string {
	n := len(strings.ReplaceAll(h, " ", "")) / 2
	return hex.EncodeToString(binary.AppendUvarint(nil, uint64(n))) + h
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBadFrames: each kind of bad input is a *wire2.Error with its reason,
// from the Reader or from Decode.
var badFrames = []struct {
	name   string
	stream string // hex
	reason wire2.Reason
}{
	{"empty frame", "00", wire2.ReasonMalformed},
	{"non-minimal prefix", "8100", wire2.ReasonMalformed},
	{"prefix over 9 bytes", "ffffffffffffffffff01", wire2.ReasonMalformed},
	{"prefix ends", "80", wire2.ReasonMalformed},
	{"length over the bound", "818001", wire2.ReasonFrameTooLong}, // 16385
	{"huge length", "ffffffffffffffff7f", wire2.ReasonFrameTooLong},
	{"truncated payload", "05820201", wire2.ReasonMalformed},
	{"not an array", payload("a0"), wire2.ReasonMalformed},
	{"type not an int", payload("826141a0"), wire2.ReasonMalformed},
	{"unknown type", payload("8207a0"), wire2.ReasonUnknownType},
	{"unknown type, 1-byte int", payload("82181fa0"), wire2.ReasonUnknownType},
	{"unknown type, bad body", payload("8207ff"), wire2.ReasonMalformed},
	{"body not a map", payload("820201"), wire2.ReasonMalformed},
	{"trailing bytes", payload("820201a0"), wire2.ReasonMalformed},
	{"Beat seq wrong type", payload("8202a1016161"), wire2.ReasonMalformed},
	{"Beat head not text", payload("8202a3010102010341ff"), wire2.ReasonMalformed},
	{"Beat head invalid UTF-8", payload("8202a3010102010361ff"), wire2.ReasonMalformed},
	{"duplicate key", payload("8202a3010102010102"), wire2.ReasonMalformed},
	{"indefinite map", payload("8202bf01010201ff"), wire2.ReasonMalformed},
	{"tag", payload("8202a201c1010201"), wire2.ReasonMalformed},
	{"Beat without seq", payload("8202a10201"), wire2.ReasonBadField},
	{"Beat without time", payload("8202a10101"), wire2.ReasonBadField},
	{"Hello zero boot id", payload("8201a2015000000000000000000000000000000000041a3b9aca00"), wire2.ReasonBadField},
	{"Hello short boot id", payload("8201a20143010203041a3b9aca00"), wire2.ReasonMalformed},
	{"Hello period too short", payload("8201a201500102030405060708090a0b0c0d0e0f100401"), wire2.ReasonBadField},
	{"Hello without period", payload("8201a101500102030405060708090a0b0c0d0e0f10"), wire2.ReasonBadField},
	{"deep nesting in an unknown key", payload("8202a3010102010981818181818100"), wire2.ReasonMalformed},
}

func TestBadFrames(t *testing.T) {
	for _, c := range badFrames {
		t.Run(c.name, func(t *testing.T) {
			r := wire2.NewReader(bytes.NewReader(mustHex(t, c.stream)), make([]byte, wire2.MaxFrameBytes))
			p, err := r.Next()
			if err == nil {
				var f wire2.Frame
				err = f.Decode(p)
			}
			var we *wire2.Error
			if !errors.As(err, &we) {
				t.Fatalf("error %v, want a *wire2.Error", err)
			}
			if we.Reason != c.reason {
				t.Fatalf("reason %s (%v), want %s", we.Reason, err, c.reason)
			}
		})
	}
}

// TestEncodeRejectsInvalid: a sender cannot write what a receiver rejects.
func TestEncodeRejectsInvalid(t *testing.T) {
	var enc wire2.Encoder
	for _, m := range []wire2.Message{
		&wire2.Hello{BeatPeriod: time.Second},
		&wire2.Hello{BootID: wire2.BootID{1}, BeatPeriod: 2 * time.Hour},
		&wire2.Hello{BootID: wire2.BootID{1}, BeatPeriod: time.Second, Nickname: strings.Repeat("x", 257)},
		&wire2.Beat{Time: 1},
		&wire2.Beat{Seq: 1, Time: 1, RTT: -1},
		&wire2.Beat{Seq: 1, Time: 1, Head: strings.Repeat("x", wire2.MaxFrameBytes)},
		&wire2.Ack{Time: 1},
		&wire2.GoAway{RetryAfter: 2 * time.Hour},
		&wire2.Welcome{BeatPeriod: time.Millisecond},
	} {
		if _, err := enc.Append(nil, m); !errors.Is(err, wire2.ErrBadField) {
			t.Errorf("%T %+v: %v, want ErrBadField", m, m, err)
		}
	}
}

// TestHeadReuse: a Beat with the same Head keeps the old string (what makes
// steady decoding allocation-free); a different Head replaces it.
func TestHeadReuse(t *testing.T) {
	var enc wire2.Encoder
	var f wire2.Frame
	decode := func(b wire2.Beat) {
		t.Helper()
		fr, err := enc.Append(nil, &b)
		if err != nil {
			t.Fatal(err)
		}
		p, _, err := wire2.SplitFrame(fr, wire2.MaxFrameBytes)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Decode(p); err != nil {
			t.Fatal(err)
		}
	}
	decode(wire2.Beat{Seq: 1, Time: 1, Head: "a"})
	decode(wire2.Beat{Seq: 2, Time: 1, Head: "b"})
	if f.Beat.Head != "b" {
		t.Fatalf("head %q", f.Beat.Head)
	}
	decode(wire2.Beat{Seq: 3, Time: 1})
	if f.Beat.Head != "" || f.Beat.Seq != 3 {
		t.Fatalf("beat %+v: an absent Head must decode as empty", f.Beat)
	}
	allocs := testing.AllocsPerRun(100, func() { decode(wire2.Beat{Seq: 4, Time: 1, Head: "{ bafy }"}) })
	_ = allocs // encoding nil-dst allocates; the benchmarks measure the hot path
}

// TestFastPathsMatchLibrary: the hand-written Beat decoder and Ack encoder
// give what fxamacker/cbor gives, over many values of every width
// (FuzzDecodeFrame checks arbitrary inputs).
func TestFastPathsMatchLibrary(t *testing.T) {
	var enc wire2.Encoder
	var fast, lib wire2.Frame
	vals := []uint64{1, 23, 24, 255, 256, 65535, 65536, 1<<32 - 1, 1 << 32, 1<<63 - 1}
	for _, v := range vals {
		ack := wire2.Ack{Seq: v, Time: int64(v)}
		a, err := enc.Append(nil, &ack)
		require.NoError(t, err)
		b, err := enc.AppendLibrary(nil, &ack)
		require.NoError(t, err)
		require.Equal(t, b, a, "Ack %+v", ack)
		for _, head := range []string{"", "h", strings.Repeat("x", 23), strings.Repeat("y", 24), strings.Repeat("z", 300), "é"} {
			beat := wire2.Beat{Seq: v, Time: int64(v), Head: head, Height: v, RTT: time.Duration(v % uint64(wire2.MaxRTT))}
			fr, err := enc.AppendLibrary(nil, &beat)
			require.NoError(t, err)
			p, _, err := wire2.SplitFrame(fr, wire2.MaxFrameBytes)
			require.NoError(t, err)
			require.NoError(t, fast.Decode(p))
			require.NoError(t, lib.DecodeLibrary(p))
			require.Equal(t, lib.Beat, fast.Beat)
			require.Equal(t, beat, fast.Beat)
		}
	}
}
