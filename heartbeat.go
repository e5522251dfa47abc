// Package heartbeat keeps a libp2p node reporting its state to an
// aggregator: a Service opens a stream to the aggregator named by a /p2p/
// multiaddr and reports the node's head every BeatPeriod, reconnecting every
// ReconnectPeriod when it cannot, with the legacy go-filecoin WARN/DEBUG/ERROR
// log policy. It offers protocol v2 (/fil/heartbeat/2.0.0: a Hello,
// acknowledged Beats, a Bye) then v1 (fil/heartbeat/1.0.0: one JSON
// Heartbeat per line, the 2019 format byte for byte), and speaks whichever
// the aggregator picks (docs/protocol.md).
//
// The Service is an actor: one goroutine runs the pure state machine of
// package fsm and carries out the effects it returns against a transport,
// a clock and a logger, all injectable. See docs/embedding.md.
package heartbeat

//go:generate go run ./internal/gendocs docs/state-machine.md

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/internal/safetext"
	"github.com/p2pbeat/heartbeat/wire"
	"github.com/p2pbeat/heartbeat/wire2"
)

// Heartbeat is one report on the wire (see wire.Heartbeat and docs/protocol.md).
type Heartbeat = wire.Heartbeat

// ProtocolID is the heartbeat protocol v1, "fil/heartbeat/1.0.0" with no
// leading slash, byte for byte the legacy id.
const ProtocolID = wire.ProtocolID

// ProtocolIDV2 is the heartbeat protocol v2, "/fil/heartbeat/2.0.0".
const ProtocolIDV2 = wire.ProtocolIDV2

// The values of Config.Protocol.
const (
	// ProtocolAuto offers v2, then v1, in one stream negotiation, so the
	// aggregator picks: the default.
	ProtocolAuto = "auto"
	// ProtocolV1 offers v1 only: the 2019 lines, byte for byte.
	ProtocolV1 = "v1"
	// ProtocolV2 offers v2 only: an aggregator that speaks only v1 refuses
	// the stream (a failed attempt).
	ProtocolV2 = "v2"
)

// The legacy defaults, owned by package fsm.
const (
	DefaultBeatPeriod      = fsm.DefaultBeatPeriod
	DefaultReconnectPeriod = fsm.DefaultReconnectPeriod
)

// Config is the node's "heartbeat" config section, with the legacy JSON
// names. Durations are Go duration strings ("3s"); empty means the default.
type Config struct {
	// BeatTarget is the aggregator's multiaddr ending in /p2p/<peer-id>.
	// Empty means no primary sender (see StartNodeSenders).
	BeatTarget string `json:"beatTarget"`
	// BeatPeriod is the time between heartbeats; default "3s", at least
	// "10ms" (wire2.MinPeriod) for either protocol.
	BeatPeriod string `json:"beatPeriod"`
	// ReconnectPeriod is the time between connection attempts; default
	// "10s", at least "10ms".
	ReconnectPeriod string `json:"reconnectPeriod"`
	// Nickname labels the node in the aggregator's views.
	Nickname string `json:"nickname"`
	// Protocol is which heartbeat protocols the sender offers: "auto" (v2,
	// then v1; the default, also for ""), "v1" or "v2". With auto, a
	// beatPeriod or reconnectPeriod outside v2's bounds (docs/protocol.md:
	// beat period in [10ms, 1h], reconnect period within 24h) offers v1 only;
	// with v2 it is a ConfigError. It applies to the Service's own libp2p
	// transport; a WithTransport dialer decides its own offer.
	Protocol string `json:"protocol,omitempty"`
}

// DefaultConfig is the legacy default section: no target, 3 s beats, 10 s reconnects.
func DefaultConfig() Config {
	return Config{BeatPeriod: DefaultBeatPeriod.String(), ReconnectPeriod: DefaultReconnectPeriod.String()}
}

// settings is a validated Config.
type settings struct {
	target          peer.AddrInfo
	beatPeriod      time.Duration
	reconnectPeriod time.Duration
	nickname        string
	// protocols is what the Service's libp2p dialer offers, in preference order.
	protocols []protocol.ID
}

// ConfigError says which field of Config is invalid and why.
type ConfigError struct {
	Field string // the JSON name: beatTarget, beatPeriod, reconnectPeriod, nickname, protocol
	Value string
	Err   error
}

func (e *ConfigError) Error() string {
	v := e.Value
	if len(v) > maxShownValue {
		// A value that is wrong for its size is shown by its size.
		return fmt.Sprintf("heartbeat: config %s %q… (%d bytes): %v", e.Field, safetext.Prefix(v, maxShownValue), len(v), e.Err)
	}
	return fmt.Sprintf("heartbeat: config %s %q: %v", e.Field, v, e.Err)
}

// maxShownValue bounds the bytes of a value a ConfigError quotes.
const maxShownValue = 64

func (e *ConfigError) Unwrap() error { return e.Err }

// errNotPositive is the cause of a ConfigError for a zero or negative period.
var errNotPositive = errors.New("must be positive")

// errSelfTarget is the cause of a ConfigError for a target that is the
// sender's own host: libp2p refuses to dial itself, so it could only fail.
var errSelfTarget = errors.New("is this host's own peer id: a node cannot beat to itself")

func (c Config) parse() (settings, error) {
	s := settings{nickname: c.Nickname}
	var err error
	if s.beatPeriod, err = parsePeriod("beatPeriod", c.BeatPeriod, DefaultBeatPeriod); err != nil {
		return s, err
	}
	if s.reconnectPeriod, err = parsePeriod("reconnectPeriod", c.ReconnectPeriod, DefaultReconnectPeriod); err != nil {
		return s, err
	}
	if s.target, err = ParseTarget(c.BeatTarget); err != nil {
		return s, &ConfigError{Field: "beatTarget", Value: c.BeatTarget, Err: err}
	}
	if s.protocols, err = s.parseProtocol(c.Protocol); err != nil {
		return s, err
	}
	return s, nil
}

// parseProtocol turns Config.Protocol into the ids to offer. v2 needs the
// periods within what a Hello carries.
func (s settings) parseProtocol(value string) ([]protocol.ID, error) {
	v2fits := s.fitsV2()
	switch value {
	case "", ProtocolAuto:
		if v2fits != nil {
			return []protocol.ID{ProtocolID}, nil
		}
		return []protocol.ID{ProtocolIDV2, ProtocolID}, nil
	case ProtocolV1:
		return []protocol.ID{ProtocolID}, nil
	case ProtocolV2:
		if v2fits != nil {
			return nil, v2fits
		}
		return []protocol.ID{ProtocolIDV2}, nil
	}
	return nil, &ConfigError{Field: "protocol", Value: value, Err: errors.New(`want "auto", "v1" or "v2"`)}
}

// fitsV2 reports the first period a v2 Hello cannot carry (wire2's bounds).
func (s settings) fitsV2() error {
	if s.beatPeriod < wire2.MinPeriod || s.beatPeriod > wire2.MaxBeatPeriod {
		return &ConfigError{Field: "beatPeriod", Value: s.beatPeriod.String(),
			Err: fmt.Errorf("protocol v2 carries a beat period in [%s, %s]", wire2.MinPeriod, wire2.MaxBeatPeriod)}
	}
	if s.reconnectPeriod < wire2.MinPeriod || s.reconnectPeriod > wire2.MaxReconnectPeriod {
		return &ConfigError{Field: "reconnectPeriod", Value: s.reconnectPeriod.String(),
			Err: fmt.Errorf("protocol v2 carries a reconnect period in [%s, %s]", wire2.MinPeriod, wire2.MaxReconnectPeriod)}
	}
	return nil
}

// fits checks that every heartbeat of s can be sent: the line with the
// largest height, the genesis CID and an empty head and miner address (the
// parts a node supplies at run time) must stay within wire.MaxLineBytes, the
// limit of a default aggregator, which resets a longer line's stream.
func (s settings) fits(genesis *cid.Cid) error {
	line, err := wire.AppendLine(nil, Heartbeat{Height: math.MaxUint64, Nickname: s.nickname, GenesisCID: genesis})
	if err != nil {
		return err
	}
	if n := len(line) - 1; n > wire.MaxLineBytes {
		return fmt.Errorf("makes every heartbeat line %d bytes, over the aggregator's limit of %d (wire.MaxLineBytes)", n, wire.MaxLineBytes)
	}
	return nil
}

func parsePeriod(field, value string, def time.Duration) (time.Duration, error) {
	if value == "" {
		return def, nil
	}
	d, err := time.ParseDuration(value)
	if err != nil {
		return 0, &ConfigError{Field: field, Value: value, Err: err}
	}
	if d <= 0 {
		return 0, &ConfigError{Field: field, Value: value, Err: errNotPositive}
	}
	if d < wire2.MinPeriod {
		return 0, &ConfigError{Field: field, Value: value, Err: errTooFast}
	}
	return d, nil
}

// errTooFast is the cause of a ConfigError for a period under
// wire2.MinPeriod (10 ms), the floor of protocol v2 kept for v1 too: a
// sender that fast only floods the aggregator (1ns gave 2,000 beats in 3 s),
// whose detector takes no period under a second anyway.
var errTooFast = fmt.Errorf("must be at least %s", wire2.MinPeriod)

// ParseTarget splits an aggregator multiaddr ending in /p2p/<peer-id> into
// the peer id and its addresses, as go-libp2p does everywhere.
func ParseTarget(s string) (peer.AddrInfo, error) {
	if s == "" {
		return peer.AddrInfo{}, errors.New("empty target")
	}
	addr, err := ma.NewMultiaddr(s)
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("parse multiaddr: %w", err)
	}
	info, err := peer.AddrInfoFromP2pAddr(addr)
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("want a multiaddr ending in /p2p/<peer-id>: %w", err)
	}
	return *info, nil
}

// ChainHead is what the node reports about its chain.
type ChainHead struct {
	// Head is the heaviest tipset as text (the legacy "{ cid1 cid2 }" or a tipset key).
	Head string
	// Height is Head's chain height.
	Height uint64
}

// HeadFunc returns the node's current head. It is called from the Service's
// goroutine once per heartbeat, so it must be quick and must not block. When
// it fails, the heartbeat carries the last head it returned.
type HeadFunc func() (ChainHead, error)

// genesisOf is the optional genesis CID, copied so the caller's value is not shared.
func genesisOf(c cid.Cid) *cid.Cid {
	if !c.Defined() {
		return nil
	}
	return &c
}
