package wire

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
	"github.com/stretchr/testify/require"
)

// The three example lines of wire-v1.md, byte for byte.
const (
	example1 = `{"Head":"{ bafy2bzaceabc bafy2bzacedef }","Height":444,"Nickname":"BobHoblaw","MinerAddress":"t01234"}`
	example2 = `{"Head":"{ }","Height":0,"Nickname":"","MinerAddress":""}`
	example3 = `{"Head":"{ bafy2bzaceabc }","Height":12,"Nickname":"n1","MinerAddress":"","GenesisCID":{"/":"bafy2bzacegenesis"}}`
)

// realGenesis is a valid CIDv1 (dag-cbor, blake2b-256 of "genesis"). The
// "bafy2bzacegenesis" of wire-v1.md's third example is illustrative: it does
// not parse as a CID (its multihash is truncated), so the encoding golden
// test uses this one in the same position.
func realGenesis(t testing.TB) cid.Cid {
	t.Helper()
	h, err := mh.Sum([]byte("genesis"), mh.BLAKE2B_MIN+31, -1)
	require.NoError(t, err)
	return cid.NewCidV1(cid.DagCBOR, h)
}

func TestDecodeGoldenExamples(t *testing.T) {
	tests := []struct {
		name string
		line string
		want Heartbeat
	}{
		{"2019 example", example1, Heartbeat{Head: "{ bafy2bzaceabc bafy2bzacedef }", Height: 444, Nickname: "BobHoblaw", MinerAddress: "t01234"}},
		{"2019 empty example", example2, Heartbeat{Head: "{ }"}},
		// The illustrative CID is kept as text; it does not parse.
		{"GenesisCID example", example3, Heartbeat{Head: "{ bafy2bzaceabc }", Height: 12, Nickname: "n1", Genesis: "bafy2bzacegenesis"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range decoders {
				var hb Heartbeat
				require.NoError(t, path.fn([]byte(tc.line), &hb), path.name)
				requireSameHeartbeat(t, tc.want, hb, path.name)
			}
		})
	}
	_, err := cid.Decode("bafy2bzacegenesis")
	require.Error(t, err, "wire-v1.md's genesis CID is expected to be illustrative")
}

func TestAppendLineGolden(t *testing.T) {
	for _, line := range []string{example1, example2} {
		var hb Heartbeat
		require.NoError(t, DecodeLine([]byte(line), &hb))
		got, err := AppendLine(nil, hb)
		require.NoError(t, err)
		require.Equal(t, line+"\n", string(got))
	}

	g := realGenesis(t)
	line := strings.Replace(example3, "bafy2bzacegenesis", g.String(), 1)
	var hb Heartbeat
	require.NoError(t, DecodeLine([]byte(line), &hb))
	require.NotNil(t, hb.GenesisCID)
	require.True(t, hb.GenesisCID.Equals(g))
	require.Equal(t, g.String(), hb.Genesis)
	got, err := AppendLine([]byte("prefix:"), hb)
	require.NoError(t, err)
	require.Equal(t, "prefix:"+line+"\n", string(got))

	// AppendLine is what json.Encoder writes (the 2019 sender).
	var sb strings.Builder
	require.NoError(t, json.NewEncoder(&sb).Encode(hb))
	require.Equal(t, line+"\n", sb.String())
}

func TestDecodeAccepts(t *testing.T) {
	g := realGenesis(t)
	gs := g.String()
	tests := []struct {
		name string
		line string
		want Heartbeat
	}{
		{"unknown fields ignored", `{"Head":"h","Version":"1.2","Extra":{"a":[1,{"b":null}]},"Height":3,"Ok":true,"F":-1.5e3}`, Heartbeat{Head: "h", Height: 3}},
		{"any order", `{"MinerAddress":"t01","Nickname":"n","Height":7,"Head":"h"}`, Heartbeat{Head: "h", Height: 7, Nickname: "n", MinerAddress: "t01"}},
		{"missing fields are zero", `{"Height":5}`, Heartbeat{Height: 5}},
		{"empty object", `{}`, Heartbeat{}},
		{"whitespace and CR", " \t{ \"Head\" : \"h\" , \"Height\" :\t9 }\r", Heartbeat{Head: "h", Height: 9}},
		{"null fields", `{"Head":null,"Height":null,"Nickname":null,"MinerAddress":null,"GenesisCID":null}`, Heartbeat{}},
		{"null keeps an earlier value", `{"Head":"a","Head":null}`, Heartbeat{Head: "a"}},
		{"last duplicate wins", `{"Height":1,"Height":2,"Head":"a","head":"b"}`, Heartbeat{Head: "b", Height: 2}},
		{"case-insensitive names", `{"HEAD":"h","height":4,"nickName":"n","mineraddress":"m","genesiscid":{"/":"` + gs + `"}}`, Heartbeat{Head: "h", Height: 4, Nickname: "n", MinerAddress: "m", Genesis: gs, GenesisCID: &g}},
		{"escaped strings", `{"Head":"a\"b\\c\u00e9\n","Nickname":"\u003cx\u003e"}`, Heartbeat{Head: "a\"b\\c\u00e9\n", Nickname: "<x>"}},
		{"utf-8 nickname", `{"Nickname":"Bob Höblaw ✓"}`, Heartbeat{Nickname: "Bob Höblaw ✓"}},
		{"max height", `{"Height":18446744073709551615}`, Heartbeat{Height: 1<<64 - 1}},
		{"genesis with extra members", `{"GenesisCID":{"x":1,"/":"` + gs + `"}}`, Heartbeat{Genesis: gs, GenesisCID: &g}},
		{"genesis without slash", `{"GenesisCID":{}}`, Heartbeat{}},
		{"genesis then null", `{"GenesisCID":{"/":"` + gs + `"},"GenesisCID":null}`, Heartbeat{}},
		{"repeated genesis object keeps its text", `{"GenesisCID":{"/":"` + gs + `"},"GenesisCID":{"/":null}}`, Heartbeat{Genesis: gs, GenesisCID: &g}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range decoders {
				hb := Heartbeat{Head: "stale", Height: 99, Nickname: "stale", MinerAddress: "stale", Genesis: "stale"}
				err := path.fn([]byte(tc.line), &hb)
				if errors.Is(err, errBail) {
					continue
				}
				require.NoError(t, err, path.name)
				requireSameHeartbeat(t, tc.want, hb, path.name)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	tests := []struct {
		name   string
		line   string
		reason Reason
		field  string
	}{
		{"empty", ``, ReasonNotJSON, ""},
		{"blank", "  \r", ReasonNotJSON, ""},
		{"garbage", `hello`, ReasonNotJSON, ""},
		{"truncated", `{"Head":"h","Height":1`, ReasonNotJSON, ""},
		{"trailing data", `{"Head":"h"} {}`, ReasonNotJSON, ""},
		{"trailing comma", `{"Head":"h",}`, ReasonNotJSON, ""},
		{"leading zero", `{"Height":01}`, ReasonNotJSON, ""},
		{"array", `[1,2]`, ReasonNotJSON, ""},
		{"null", `null`, ReasonNotJSON, ""},
		{"string", `"x"`, ReasonNotJSON, ""},
		{"number", `5`, ReasonNotJSON, ""},
		{"syntax beats type", `{"Height":"x",}`, ReasonNotJSON, ""},
		{"height as string", `{"Height":"5"}`, ReasonBadType, "Height"},
		{"negative height", `{"Height":-1}`, ReasonBadType, "Height"},
		{"minus zero height", `{"Height":-0}`, ReasonBadType, "Height"},
		{"fractional height", `{"Height":1.5}`, ReasonBadType, "Height"},
		{"exponent height", `{"Height":1e3}`, ReasonBadType, "Height"},
		{"overflowing height", `{"Height":18446744073709551616}`, ReasonBadType, "Height"},
		{"bool height", `{"Height":true}`, ReasonBadType, "Height"},
		{"object height", `{"Height":{}}`, ReasonBadType, "Height"},
		{"numeric head", `{"Head":5}`, ReasonBadType, "Head"},
		{"array nickname", `{"Nickname":[]}`, ReasonBadType, "Nickname"},
		{"bool miner", `{"MinerAddress":false}`, ReasonBadType, "MinerAddress"},
		{"genesis as string", `{"GenesisCID":"bafy"}`, ReasonBadType, "GenesisCID"},
		{"genesis slash number", `{"GenesisCID":{"/":5}}`, ReasonBadType, "GenesisCID"},
		{"first bad type wins", `{"Head":1,"Height":"x"}`, ReasonBadType, "Head"},
		{"invalid utf-8", "{\"Head\":\"\xff\"}", ReasonInvalidUTF8, ""},
		{"invalid utf-8 beats syntax", "\xc3(", ReasonInvalidUTF8, ""},
		{"surrogate bytes", "{\"Nickname\":\"\xed\xa0\x80\"}", ReasonInvalidUTF8, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range decoders {
				orig := Heartbeat{Head: "keep", Height: 1, Nickname: "keep"}
				hb := orig
				err := path.fn([]byte(tc.line), &hb)
				if errors.Is(err, errBail) {
					continue
				}
				var de *DecodeError
				require.ErrorAs(t, err, &de, path.name)
				require.Equal(t, tc.reason, de.Reason, path.name)
				if path.name != "fast" || tc.field != "" {
					require.Equal(t, tc.field, de.Field, path.name)
				}
				require.Equal(t, orig, hb, "%s: hb must be unchanged on error", path.name)
				switch tc.reason {
				case ReasonNotJSON:
					require.ErrorIs(t, err, ErrNotJSON)
				case ReasonBadType:
					require.ErrorIs(t, err, ErrBadType)
				case ReasonInvalidUTF8:
					require.ErrorIs(t, err, ErrInvalidUTF8)
				}
				if len(tc.line) > 8 {
					require.NotContains(t, err.Error(), tc.line[1:], "errors must not quote the input")
				}
			}
		})
	}
}

// TestDecodeFastPathCoversCanonical makes sure the shapes senders write
// never fall back to encoding/json.
func TestDecodeFastPathCoversCanonical(t *testing.T) {
	g := realGenesis(t)
	for _, line := range []string{example1, example2, example3, strings.Replace(example3, "bafy2bzacegenesis", g.String(), 1),
		`{"Head":"{ bafy2bzaceabc }","Height":12,"Nickname":"n1","MinerAddress":"","GenesisCID":null}`} {
		var hb Heartbeat
		require.NoError(t, decodeFast([]byte(line), &hb), line)
	}
}

func TestDecodeLineZeroAlloc(t *testing.T) {
	g := realGenesis(t)
	lines := [][]byte{
		[]byte(example1),
		[]byte(strings.Replace(example3, "bafy2bzacegenesis", g.String(), 1)),
	}
	for _, line := range lines {
		var hb Heartbeat
		require.NoError(t, DecodeLine(line, &hb))
		allocs := testing.AllocsPerRun(100, func() {
			if err := DecodeLine(line, &hb); err != nil {
				panic(err)
			}
		})
		require.Zero(t, allocs, "steady-state decode of %s", line)
	}
}

func BenchmarkDecodeLine(b *testing.B) {
	line := []byte(example1)
	var hb Heartbeat
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		if err := DecodeLine(line, &hb); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeLineEncodingJSON(b *testing.B) {
	line := []byte(example1)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		var hb Heartbeat
		if err := json.Unmarshal(line, &hb); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzDecodeLine: DecodeLine never panics, and wherever the fast path
// decides, it agrees with the encoding/json fallback on accept/reject, the
// reason and the values; on acceptance encoding/json itself agrees too.
func FuzzDecodeLine(f *testing.F) {
	f.Add([]byte(example1))
	f.Add([]byte(example2))
	f.Add([]byte(example3))
	f.Fuzz(func(t *testing.T, line []byte) {
		stale := Heartbeat{Head: "stale", Height: 7, Nickname: "stale", MinerAddress: "stale", Genesis: "stale"}
		fast, slow, top := stale, stale, stale
		errF := decodeFast(line, &fast)
		errS := decodeFallback(line, &slow)
		errD := DecodeLine(line, &top)
		requireSameOutcome(t, errS, slow, errD, top, "DecodeLine vs fallback")
		if errF != errBail {
			requireSameOutcome(t, errS, slow, errF, fast, "fast vs fallback")
		}
		if errS != nil {
			return
		}
		// Decoding into a zero Heartbeat gives the same values as into a
		// reused one.
		var fresh Heartbeat
		require.NoError(t, DecodeLine(line, &fresh))
		requireSameHeartbeat(t, fresh, top, "fresh vs reused")

		// Oracle: plain encoding/json into a struct with the legacy field
		// types agrees on the legacy fields (it rejects the GenesisCID
		// shapes we are lenient about, so that field is left out).
		var legacy struct {
			Head         string
			Height       uint64
			Nickname     string
			MinerAddress string
		}
		require.NoError(t, json.Unmarshal(line, &legacy))
		require.Equal(t, legacy.Head, top.Head)
		require.Equal(t, legacy.Height, top.Height)
		require.Equal(t, legacy.Nickname, top.Nickname)
		require.Equal(t, legacy.MinerAddress, top.MinerAddress)
	})
}

// TestSeedCorpusPresent keeps the committed corpus from silently vanishing:
// plain `go test` runs it as FuzzDecodeLine's seeds.
func TestSeedCorpusPresent(t *testing.T) {
	entries, err := os.ReadDir(filepath.Join("testdata", "fuzz", "FuzzDecodeLine"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(entries), 40)
}

var decoders = []struct {
	name string
	fn   func([]byte, *Heartbeat) error
}{
	{"DecodeLine", DecodeLine},
	{"fast", decodeFast},
	{"fallback", decodeFallback},
}

func requireSameOutcome(t *testing.T, wantErr error, want Heartbeat, gotErr error, got Heartbeat, what string) {
	t.Helper()
	if wantErr == nil {
		require.NoError(t, gotErr, what)
		requireSameHeartbeat(t, want, got, what)
		return
	}
	require.Error(t, gotErr, what)
	var we, ge *DecodeError
	require.ErrorAs(t, wantErr, &we, what)
	require.ErrorAs(t, gotErr, &ge, what)
	require.Equal(t, we.Reason, ge.Reason, "%s: %v vs %v", what, wantErr, gotErr)
	require.Equal(t, want, got, "%s: hb must be unchanged on error", what)
}

func requireSameHeartbeat(t *testing.T, want, got Heartbeat, what string) {
	t.Helper()
	require.Equal(t, want.Head, got.Head, what)
	require.Equal(t, want.Height, got.Height, what)
	require.Equal(t, want.Nickname, got.Nickname, what)
	require.Equal(t, want.MinerAddress, got.MinerAddress, what)
	require.Equal(t, want.Genesis, got.Genesis, what)
	require.Equal(t, want.GenesisCID == nil, got.GenesisCID == nil, "%s: GenesisCID presence", what)
	if want.GenesisCID != nil {
		require.True(t, want.GenesisCID.Equals(*got.GenesisCID), what)
	}
	// The text of a parsed CID round-trips.
	if got.GenesisCID != nil {
		c, err := cid.Decode(got.Genesis)
		require.NoError(t, err)
		require.True(t, c.Equals(*got.GenesisCID), what)
	}
}

// Golden vectors for the zero miner address: each spelling real senders
// write decodes to its raw text, and MinerAddressOf maps it to "" (no
// address); a real address and look-alikes stay as they are.
func TestNoMinerAddressGolden(t *testing.T) {
	tests := []struct {
		sender, line, raw, addr string
	}{
		{"go-filecoin Jan–Mar 2019", `{"Head":"{ bafy2bzaceabc }","Height":7,"Nickname":"n","MinerAddress":""}`, "", ""},
		{"go-filecoin from Mar 2019", `{"Head":"{ bafy2bzaceabc }","Height":7,"Nickname":"n","MinerAddress":"empty"}`, "empty", ""},
		{"venus", `{"Head":"{ bafy2bzaceabc }","Height":7,"Nickname":"n","MinerAddress":"<empty>"}`, "<empty>", ""},
		{"venus, HTML-escaped by json.Encoder", `{"Head":"{ bafy2bzaceabc }","Height":7,"Nickname":"n","MinerAddress":"\u003cempty\u003e"}`, "<empty>", ""},
		{"real address", `{"Head":"{ bafy2bzaceabc }","Height":7,"Nickname":"n","MinerAddress":"t01234"}`, "t01234", "t01234"},
		{"not a zero spelling", `{"Head":"{ bafy2bzaceabc }","Height":7,"Nickname":"n","MinerAddress":"Empty"}`, "Empty", "Empty"},
	}
	for _, tc := range tests {
		t.Run(tc.sender, func(t *testing.T) {
			for _, path := range decoders {
				var hb Heartbeat
				err := path.fn([]byte(tc.line), &hb)
				if errors.Is(err, errBail) {
					continue // the fast path leaves escapes to the fallback
				}
				require.NoError(t, err, path.name)
				require.Equal(t, tc.raw, hb.MinerAddress, path.name)
				require.Equal(t, tc.addr, MinerAddressOf(hb.MinerAddress), path.name)
			}
		})
	}
}
