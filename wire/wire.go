// Package wire is the v1 heartbeat wire format (protocol fil/heartbeat/1.0.0):
// one JSON object per line, exactly as go-filecoin's 2019 sender wrote it with
// json.Encoder. See docs/protocol.md.
package wire

import (
	"encoding/json"
	"fmt"

	"github.com/ipfs/go-cid"
)

// ProtocolID is the libp2p protocol id of the heartbeat stream. It has no
// leading slash: that is the exact string the 2019 go-filecoin nodes
// registered, and peers match protocol ids byte for byte.
const ProtocolID = "fil/heartbeat/1.0.0"

// ProtocolIDV2 is the libp2p protocol id of heartbeat protocol v2
// (package wire2: length-prefixed CBOR frames, acknowledged beats). It has
// the leading slash of libp2p's convention; v1 keeps its exact slash-less id
// above. A sender offers both in one NewStream call, v2 first, and
// multistream-select picks.
const ProtocolIDV2 = "/fil/heartbeat/2.0.0"

// MaxLineBytes is the longest heartbeat line, without its '\n', that a
// receiver accepts by default (the aggregator's DefaultMaxLineBytes): a
// sender must not write a longer one, or every stream it opens is reset
// as line_too_long. A 2019 heartbeat is about 150 bytes; a tipset key of a
// dozen CIDs in Head stays under 1 KiB.
const MaxLineBytes = 8 << 10

// ServiceName names the heartbeat service in libp2p's resource manager scopes.
const ServiceName = "fil.heartbeat"

// Heartbeat is one report of a node's state, the body of one line on the wire.
// Field names and order are the legacy ones: do not rename or reorder them.
type Heartbeat struct {
	// Head is the heaviest tipset the node is on, as text. Opaque: compare
	// as a string.
	Head string
	// Height is the chain height of Head.
	Height uint64
	// Nickname is the operator's label for the node; it may be empty and is
	// never an identity (the libp2p peer id is).
	Nickname string
	// MinerAddress is the node's miner address in text form, as the sender
	// wrote it. The zero address ("no miner") has three spellings on the
	// wire: "" (go-filecoin builds of January–March 2019), "empty"
	// (go-filecoin from March 2019) and "<empty>" (venus); DecodeLine keeps
	// the text as received, and MinerAddressOf maps all three to "".
	MinerAddress string
	// GenesisCID is the node's genesis block, when known. Later senders
	// appended it; nil omits the field, which gives exactly the 2019 line.
	GenesisCID *cid.Cid `json:",omitempty"`
	// Genesis is the text of GenesisCID's "/" member exactly as received,
	// set by DecodeLine whether or not it parses as a CID ("" when the
	// field is absent or null). A receiver keeps it because the genesis is
	// only a label and some senders (and wire-v1.md's own example) carry an
	// illustrative, unparseable CID; GenesisCID is then nil. It is never
	// encoded: AppendLine writes GenesisCID only, so a sender sets that.
	Genesis string `json:"-"`
}

// The spellings of the zero miner address ("no miner") that real senders
// write in MinerAddress (see wire-v1.md): go-filecoin's address.Undef
// printed "empty" from March 2019 and venus prints "<empty>"; builds of
// January–March 2019 wrote "".
const (
	NoMinerAddress2019       = ""
	NoMinerAddressGoFilecoin = "empty"
	NoMinerAddressVenus      = "<empty>"
)

// MinerAddressOf returns raw, a MinerAddress as received, with every
// spelling of the zero address (NoMinerAddress2019, NoMinerAddressGoFilecoin,
// NoMinerAddressVenus) mapped to "": "" means "no address" whatever the
// sender's vintage. Any other text is returned unchanged.
func MinerAddressOf(raw string) string {
	switch raw {
	case NoMinerAddressGoFilecoin, NoMinerAddressVenus:
		return ""
	}
	return raw
}

// AppendLine appends hb as one JSON line (with its trailing '\n') to dst,
// byte for byte what json.Encoder.Encode writes.
func AppendLine(dst []byte, hb Heartbeat) ([]byte, error) {
	b, err := json.Marshal(hb)
	if err != nil {
		return dst, fmt.Errorf("encode heartbeat: %w", err)
	}
	dst = append(dst, b...)
	return append(dst, '\n'), nil
}
