package wire2_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/p2pbeat/heartbeat/wire2"
)

// FuzzDecodeFrame feeds arbitrary streams to the frame Reader and Decode.
// They must never panic, every failure must be a *wire2.Error (the
// aggregator counts it by reason) and a frame that decodes must encode back
// to a frame that decodes to the same message. The committed corpus in
// testdata/fuzz/FuzzDecodeFrame holds the golden vectors and the bad frames
// of TestBadFrames (go test ./wire2 -run TestFuzzCorpus -update rewrites it).
func FuzzDecodeFrame(f *testing.F) {
	var enc wire2.Encoder
	for _, v := range vectors {
		b, err := enc.Append(nil, v.msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		r := wire2.NewReader(bytes.NewReader(stream), make([]byte, 512))
		var fr, again wire2.Frame
		for {
			p, err := r.Next()
			if err == io.EOF {
				return
			}
			if err == nil {
				// The fast paths must agree with the library on every
				// input: same error reason, same message.
				var lib wire2.Frame
				errLib := lib.DecodeLibrary(p)
				err = fr.Decode(p)
				if reasonOf(err) != reasonOf(errLib) {
					t.Fatalf("fast path: %v; library: %v", err, errLib)
				}
				if err == nil && fmt.Sprintf("%+v", decoded(&fr)) != fmt.Sprintf("%+v", decoded(&lib)) {
					t.Fatalf("fast path %+v, library %+v", decoded(&fr), decoded(&lib))
				}
			}
			if err != nil {
				var we *wire2.Error
				if !errors.As(err, &we) {
					t.Fatalf("error %v is not a *wire2.Error", err)
				}
				return
			}
			m := decoded(&fr)
			b, err := enc.Append(nil, m)
			if err != nil {
				t.Fatalf("decoded %+v does not encode: %v", m, err)
			}
			if lb, err := enc.AppendLibrary(nil, m); err != nil || !bytes.Equal(lb, b) {
				t.Fatalf("fast encoding %x, library %x (%v)", b, lb, err)
			}
			p2, _, err := wire2.SplitFrame(b, wire2.MaxFrameBytes)
			if err != nil {
				t.Fatal(err)
			}
			if err := again.Decode(p2); err != nil {
				t.Fatalf("re-encoded %+v does not decode: %v", m, err)
			}
			if got, want := fmt.Sprintf("%+v", decoded(&again)), fmt.Sprintf("%+v", m); got != want {
				t.Fatalf("round trip: %s, want %s", got, want)
			}
		}
	})
}

// TestFuzzCorpus keeps the committed seed corpus in step with the vectors
// and the bad frames: with -update it rewrites it, otherwise it checks that
// every seed is there.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeFrame")
	seeds := map[string][]byte{}
	var enc wire2.Encoder
	for i, v := range vectors {
		b, err := enc.Append(nil, v.msg)
		if err != nil {
			t.Fatal(err)
		}
		seeds[fmt.Sprintf("vector-%02d", i)] = b
	}
	for i, c := range badFrames {
		seeds[fmt.Sprintf("bad-%02d", i)] = mustHex(t, c.stream)
	}
	if *update {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, b := range seeds {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		path := filepath.Join(dir, name)
		if *update {
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Errorf("seed %s missing or stale (go test ./wire2 -run TestFuzzCorpus -update): %v", path, err)
		}
	}
}

func reasonOf(err error) wire2.Reason {
	var we *wire2.Error
	if errors.As(err, &we) {
		return we.Reason
	}
	if err != nil {
		return "other"
	}
	return ""
}
