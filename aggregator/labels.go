package aggregator

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/p2pbeat/heartbeat/aggregator/metrics"
	"github.com/p2pbeat/heartbeat/internal/safetext"
	"github.com/p2pbeat/heartbeat/wire"
)

// MaxLabelBytes caps every node-supplied string the aggregator stores
// (Nickname, Head, MinerAddress, Genesis): a longer value is cut where it
// enters the aggregator, before the tracker stores it, so memory per node
// and the size of an /api/nodes page are bounded by it, not by the line
// limit. A 2019 heartbeat's labels are tens of bytes; a head of four CIDs
// fits.
const MaxLabelBytes = 256

// Truncation: a value over MaxLabelBytes becomes its longest prefix that
// ends on a UTF-8 boundary and leaves room for the mark, then the mark
// "…" (U+2026), then 16 hex digits of the SHA-256 of the whole value, at
// most MaxLabelBytes in all. The digest keeps two long heads that share a
// prefix apart, so consensus never merges them.
const (
	truncMark   = "…"
	digestHex   = 16
	truncPrefix = MaxLabelBytes - len(truncMark) - digestHex
)

// capLabels truncates hb's over-long strings in place and counts each
// truncated field. It costs nothing for a heartbeat within the cap.
func (a *Aggregator) capLabels(hb *wire.Heartbeat) {
	if len(hb.Nickname) > MaxLabelBytes {
		hb.Nickname = truncateLabel(hb.Nickname)
		a.obs.Truncated(metrics.FieldNickname)
	}
	if len(hb.Head) > MaxLabelBytes {
		hb.Head = truncateLabel(hb.Head)
		a.obs.Truncated(metrics.FieldHead)
	}
	if len(hb.MinerAddress) > MaxLabelBytes {
		hb.MinerAddress = truncateLabel(hb.MinerAddress)
		a.obs.Truncated(metrics.FieldMinerAddress)
	}
	if len(hb.Genesis) > MaxLabelBytes {
		// No CID is that long as text; keep the cut text as the label only.
		hb.Genesis, hb.GenesisCID = truncateLabel(hb.Genesis), nil
		a.obs.Truncated(metrics.FieldGenesis)
	}
}

// truncateLabel cuts s (longer than MaxLabelBytes) as described above.
func truncateLabel(s string) string {
	sum := sha256.Sum256([]byte(s))
	return safetext.Prefix(s, truncPrefix) + truncMark + hex.EncodeToString(sum[:digestHex/2])
}

// logText is a node-supplied string as the aggregator logs it
// (safetext.ForLog): a nickname cannot add lines to the log or send
// terminal escapes to whoever reads it.
func logText(s string) string { return safetext.ForLog(s) }
