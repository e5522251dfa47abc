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
	// MinerAddress is the node's miner address in text form; "" when unset.
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
