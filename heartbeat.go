// Package heartbeat keeps a libp2p node reporting its state to an
// aggregator: a Service opens a stream with protocol fil/heartbeat/1.0.0 to
// the aggregator named by a /p2p/ multiaddr and writes one JSON Heartbeat
// per line every BeatPeriod, reconnecting every ReconnectPeriod when it
// cannot, with the legacy go-filecoin WARN/DEBUG/ERROR log policy.
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
	"unicode/utf8"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/wire"
)

// Heartbeat is one report on the wire (see wire.Heartbeat and docs/protocol.md).
type Heartbeat = wire.Heartbeat

// ProtocolID is the heartbeat protocol, "fil/heartbeat/1.0.0" with no
// leading slash, byte for byte the legacy id.
const ProtocolID = wire.ProtocolID

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
	// BeatPeriod is the time between heartbeats; default "3s".
	BeatPeriod string `json:"beatPeriod"`
	// ReconnectPeriod is the time between connection attempts; default "10s".
	ReconnectPeriod string `json:"reconnectPeriod"`
	// Nickname labels the node in the aggregator's views.
	Nickname string `json:"nickname"`
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
}

// ConfigError says which field of Config is invalid and why.
type ConfigError struct {
	Field string // the JSON name: beatTarget, beatPeriod, reconnectPeriod, nickname
	Value string
	Err   error
}

func (e *ConfigError) Error() string {
	v := e.Value
	if len(v) > maxShownValue {
		// A value that is wrong for its size is shown by its size.
		cut := maxShownValue
		for cut > 0 && !utf8.RuneStart(v[cut]) {
			cut--
		}
		return fmt.Sprintf("heartbeat: config %s %q… (%d bytes): %v", e.Field, v[:cut], len(v), e.Err)
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
	return s, nil
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
	return d, nil
}

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
