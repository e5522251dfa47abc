// Package wire2 is heartbeat protocol v2 (/fil/heartbeat/2.0.0): frames
// prefixed by an unsigned varint length, as libp2p's own protocols frame
// their messages (go-msgio, protodelim), each carrying one CBOR message.
// The sender writes Hello, then Beats, then Bye on a clean stop; the
// aggregator answers Welcome, an Ack for every Beat, and GoAway when it
// refuses or sheds load. docs/protocol.md gives every field's type, unit
// and bounds, with hex test vectors that this package's golden tests match
// byte for byte.
//
// A frame's payload is a CBOR array of two items: the message type (an
// unsigned integer, Type) and the message body, a map from small unsigned
// integer keys to values. Keys are integers to keep frames small; a
// receiver ignores keys it does not know, so a later minor version can add
// optional fields. Encoding is CBOR Core Deterministic (RFC 8949 §4.2.1:
// shortest forms, sorted keys), so equal messages give equal bytes.
package wire2

import (
	"errors"
	"time"

	"github.com/p2pbeat/heartbeat/wire"
)

// ProtocolID is the libp2p protocol id of v2. Its owner is package wire,
// next to v1's.
const ProtocolID = wire.ProtocolIDV2

// MaxFrameBytes is the largest payload, without its length prefix, that a
// Reader accepts by default and that Append writes: a length prefix above
// it ends the stream before anything is allocated. A Beat is about 100
// bytes; a Hello with 256-byte labels stays under 1 KiB. It matches v1's
// wire.MaxLineBytes.
const MaxFrameBytes = wire.MaxLineBytes

// MaxVarintBytes is the longest length prefix: a uvarint of a uint64 (go-varint's
// limit; longer or non-minimal prefixes are malformed).
const MaxVarintBytes = 9

// Bounds on the periods a Hello or Welcome carries (nanoseconds on the
// wire). A receiver rejects a message outside them as ReasonBadField.
const (
	// MinPeriod and MaxBeatPeriod bound Hello.BeatPeriod and a non-zero
	// Welcome.BeatPeriod.
	MinPeriod     = 10 * time.Millisecond
	MaxBeatPeriod = time.Hour
	// MaxReconnectPeriod bounds Hello.ReconnectPeriod (from MinPeriod).
	MaxReconnectPeriod = 24 * time.Hour
	// MaxRetryAfter bounds GoAway.RetryAfter; a sender waits at most this
	// long, whatever the aggregator asks.
	MaxRetryAfter = time.Hour
	// MaxRTT bounds Beat.RTT (0 = not measured yet).
	MaxRTT = time.Minute
)

// Type is a message's type, the first item of a frame's payload.
type Type uint8

// Message types. Sender → aggregator: 1–15; aggregator → sender: 16–31.
// Each fits CBOR's one-byte unsigned integer form (0x00–0x17).
const (
	TypeHello   Type = 1
	TypeBeat    Type = 2
	TypeBye     Type = 3
	TypeWelcome Type = 16
	TypeAck     Type = 17
	TypeGoAway  Type = 18
)

// String returns the message's name ("Hello", ...), or "Type(n)".
func (t Type) String() string {
	switch t {
	case TypeHello:
		return "Hello"
	case TypeBeat:
		return "Beat"
	case TypeBye:
		return "Bye"
	case TypeWelcome:
		return "Welcome"
	case TypeAck:
		return "Ack"
	case TypeGoAway:
		return "GoAway"
	}
	return "Type(" + itoa(uint64(t)) + ")"
}

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

// Message is one of Hello, Beat, Bye, Welcome, Ack, GoAway (as values or
// pointers).
type Message interface {
	MessageType() Type
}

// BootID identifies one run of a sender: 128 random bits drawn when its
// Service starts. A new BootID from a known peer is a restart. On the wire:
// a byte string of exactly 16 bytes.
type BootID [16]byte

// IsZero reports whether id is all zeros (not a valid boot id).
func (id BootID) IsZero() bool { return id == BootID{} }

// Hello is the sender's first frame on a stream.
type Hello struct {
	// BootID: required, non-zero.
	BootID BootID `cbor:"1,keyasint"`
	// Impl and Version name the sender's implementation ("p2pbeat/heartbeat",
	// "v0.4.0"); labels, at most 256 bytes each.
	Impl    string `cbor:"2,keyasint,omitempty"`
	Version string `cbor:"3,keyasint,omitempty"`
	// BeatPeriod is the time between Beats, in [MinPeriod, MaxBeatPeriod];
	// the aggregator judges the node by it. Nanoseconds on the wire.
	BeatPeriod time.Duration `cbor:"4,keyasint"`
	// ReconnectPeriod is the sender's retry period, in [MinPeriod,
	// MaxReconnectPeriod], or 0 if not told. Nanoseconds on the wire.
	ReconnectPeriod time.Duration `cbor:"5,keyasint,omitempty"`
	// Nickname, MinerAddress and Genesis are v1's labels (see package
	// wire): text, at most 256 bytes each, "" when unknown.
	Nickname     string `cbor:"6,keyasint,omitempty"`
	MinerAddress string `cbor:"7,keyasint,omitempty"`
	Genesis      string `cbor:"8,keyasint,omitempty"`
}

// Beat is one heartbeat.
type Beat struct {
	// Seq numbers the Beats of one boot from 1, with no gaps: the
	// aggregator counts a gap as lost beats and rejects a Seq that does
	// not grow.
	Seq uint64 `cbor:"1,keyasint"`
	// Time is the sender's clock when it wrote the Beat, in nanoseconds
	// since the Unix epoch; required (non-zero).
	Time int64 `cbor:"2,keyasint"`
	// Head and Height are the node's chain head, as in v1: Head is opaque
	// text.
	Head   string `cbor:"3,keyasint,omitempty"`
	Height uint64 `cbor:"4,keyasint,omitempty"`
	// RTT is the sender's last measured round trip (Beat written → its Ack
	// read), in [0, MaxRTT]; 0 = none yet. Nanoseconds on the wire.
	RTT time.Duration `cbor:"5,keyasint,omitempty"`
}

// Bye is the sender's last frame on a clean stop, before it half-closes
// the stream: the node is leaving, not failing.
type Bye struct {
	// Reason is a short snake_case word ("shutdown"); at most 256 bytes.
	Reason string `cbor:"1,keyasint,omitempty"`
}

// Welcome answers a Hello.
type Welcome struct {
	// Impl and Version name the aggregator's implementation.
	Impl    string `cbor:"1,keyasint,omitempty"`
	Version string `cbor:"2,keyasint,omitempty"`
	// BeatPeriod, if non-zero, is the period the aggregator asks for, in
	// [MinPeriod, MaxBeatPeriod]; the sender clamps it to its own bounds.
	// Nanoseconds on the wire.
	BeatPeriod time.Duration `cbor:"3,keyasint,omitempty"`
}

// Ack acknowledges one Beat.
type Ack struct {
	// Seq is the acknowledged Beat's Seq.
	Seq uint64 `cbor:"1,keyasint"`
	// Time is the aggregator's clock when it read the Beat, in nanoseconds
	// since the Unix epoch: with the Beat's send time and the RTT the
	// sender estimates the clock skew.
	Time int64 `cbor:"2,keyasint"`
}

// GoAway refuses or ends a stream: the sender closes it and waits
// RetryAfter (bounded by MaxRetryAfter, jittered) before it dials again.
type GoAway struct {
	// RetryAfter is in [0, MaxRetryAfter]. Nanoseconds on the wire.
	RetryAfter time.Duration `cbor:"1,keyasint,omitempty"`
	// Reason is a short snake_case word ("busy", "too_many_nodes").
	Reason string `cbor:"2,keyasint,omitempty"`
}

// MessageType implementations.
func (Hello) MessageType() Type   { return TypeHello }
func (Beat) MessageType() Type    { return TypeBeat }
func (Bye) MessageType() Type     { return TypeBye }
func (Welcome) MessageType() Type { return TypeWelcome }
func (Ack) MessageType() Type     { return TypeAck }
func (GoAway) MessageType() Type  { return TypeGoAway }

// MaxLabelBytes bounds every text field but Beat.Head (bounded by the frame).
const MaxLabelBytes = 256

// Reason classifies why a frame was rejected: stable snake_case words, the
// label values of the aggregator's rejection counter.
type Reason string

// The reasons this package reports.
const (
	// ReasonMalformed: a bad length prefix, a truncated frame, or a payload
	// that is not a well-formed [type, {body}] CBOR array of the expected
	// types (invalid UTF-8 text included).
	ReasonMalformed Reason = "malformed_frame"
	// ReasonFrameTooLong: a length prefix above the reader's bound.
	ReasonFrameTooLong Reason = "frame_too_long"
	// ReasonUnknownType: a well-formed frame of a type this version does
	// not know.
	ReasonUnknownType Reason = "unknown_message"
	// ReasonBadField: a field missing or out of its bounds.
	ReasonBadField Reason = "bad_field"
)

// Sentinel errors, one per Reason: every error this package returns for bad
// input is a *Error matching exactly one with errors.Is.
var (
	ErrMalformed    = errors.New("malformed heartbeat v2 frame")
	ErrFrameTooLong = errors.New("heartbeat v2 frame too long")
	ErrUnknownType  = errors.New("unknown heartbeat v2 message type")
	ErrBadField     = errors.New("heartbeat v2 field missing or out of bounds")
)

// Error is a rejected frame. It never quotes the input.
type Error struct {
	Reason Reason
	// Detail says what was wrong ("length 9000 > 8192", "Hello.BeatPeriod").
	Detail string
	// Err is the underlying cause (a CBOR or varint error), or nil.
	Err error
}

func (e *Error) Error() string {
	msg := "heartbeat v2: " + string(e.Reason)
	if e.Detail != "" {
		msg += " (" + e.Detail + ")"
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap lets errors.Is match the Reason's sentinel and the cause.
func (e *Error) Unwrap() []error {
	var s error
	switch e.Reason {
	case ReasonMalformed:
		s = ErrMalformed
	case ReasonFrameTooLong:
		s = ErrFrameTooLong
	case ReasonUnknownType:
		s = ErrUnknownType
	case ReasonBadField:
		s = ErrBadField
	}
	if e.Err == nil {
		return []error{s}
	}
	return []error{s, e.Err}
}

func badField(detail string) error { return &Error{Reason: ReasonBadField, Detail: detail} }
