package wire2

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"
)

// encMode is CBOR Core Deterministic Encoding (RFC 8949 §4.2.1): shortest
// integer and length forms, map keys sorted. Equal messages give equal
// bytes, which the golden vectors in docs/protocol.md pin.
var encMode = func() cbor.UserBufferEncMode {
	m, err := cbor.CoreDetEncOptions().UserBufferEncMode()
	if err != nil {
		panic(err) // static options
	}
	return m
}()

// decMode is strict where strictness costs a hostile peer its stream and
// nothing else: no duplicate map keys, no indefinite lengths, no tags,
// valid UTF-8 only, shallow nesting, small containers. Unknown map keys
// are ignored so that later minor versions can add optional fields.
var decMode = func() cbor.DecMode {
	m, err := cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		UTF8:             cbor.UTF8RejectInvalid,
		MaxNestedLevels:  4,
		MaxArrayElements: 16,
		MaxMapPairs:      32,
	}.DecMode()
	if err != nil {
		panic(err) // static options
	}
	return m
}()

// Encoder appends frames. Keep one per stream: after the first frames it
// reuses its buffer, and appending a frame does not allocate. Not safe for
// concurrent use.
type Encoder struct {
	buf bytes.Buffer
}

// Append validates m (the bounds in this package's docs), encodes it as one
// frame (length prefix and payload) and appends it to dst. Pass a pointer
// (*Beat, ...) on hot paths: a struct value boxed in the interface
// allocates. The error is a *Error with ReasonBadField for an invalid
// message.
func (e *Encoder) Append(dst []byte, m Message) ([]byte, error) {
	return e.append(dst, m, true)
}

func (e *Encoder) append(dst []byte, m Message, fast bool) ([]byte, error) {
	if err := Validate(m); err != nil {
		return dst, err
	}
	if a, ok := m.(*Ack); ok && fast {
		return appendAckFast(dst, a), nil
	}
	e.buf.Reset()
	e.buf.WriteByte(0x82) // array(2)
	e.buf.WriteByte(byte(m.MessageType()))
	if err := encMode.MarshalToBuffer(m, &e.buf); err != nil {
		return dst, fmt.Errorf("encode %v: %w", m.MessageType(), err)
	}
	n := e.buf.Len()
	if n > MaxFrameBytes {
		return dst, badField(m.MessageType().String() + " frame of " + itoa(uint64(n)) + " bytes > MaxFrameBytes")
	}
	dst = binary.AppendUvarint(dst, uint64(n))
	return append(dst, e.buf.Bytes()...), nil
}

// Frame is a reusable decoding target: Decode sets Type and the field of
// that type. Decode a stream's frames into one Frame: a Beat whose Head
// equals the previous one's reuses its string, so a steady stream decodes
// without allocating.
type Frame struct {
	Type    Type
	Hello   Hello
	Beat    Beat
	Bye     Bye
	Welcome Welcome
	Ack     Ack
	GoAway  GoAway

	beat beatWire
}

// beatWire is Beat as decoded: Head goes through internText.
type beatWire struct {
	Seq    uint64     `cbor:"1,keyasint"`
	Time   int64      `cbor:"2,keyasint"`
	Head   internText `cbor:"3,keyasint"`
	Height uint64     `cbor:"4,keyasint"`
	RTT    int64      `cbor:"5,keyasint"`
}

// internText decodes a CBOR text string, keeping the old string when the
// bytes are equal (the compiler does not allocate for that comparison).
type internText struct {
	s   string
	set bool
}

func (t *internText) UnmarshalCBOR(b []byte) error {
	p, ok := textPayload(b)
	if !ok || !utf8.Valid(p) {
		return &cbor.UnmarshalTypeError{CBORType: "non-text", GoType: "string"}
	}
	if string(p) != t.s {
		t.s = string(p)
	}
	t.set = true
	return nil
}

// textPayload returns the content of a definite-length CBOR text string
// (major type 3), which the decoder has already checked is well formed.
func textPayload(b []byte) ([]byte, bool) {
	if len(b) == 0 || b[0]>>5 != 3 {
		return nil, false
	}
	var n, h uint64
	switch ai := b[0] & 0x1f; {
	case ai < 24:
		n, h = uint64(ai), 1
	case ai == 24 && len(b) >= 2:
		n, h = uint64(b[1]), 2
	case ai == 25 && len(b) >= 3:
		n, h = uint64(binary.BigEndian.Uint16(b[1:])), 3
	case ai == 26 && len(b) >= 5:
		n, h = uint64(binary.BigEndian.Uint32(b[1:])), 5
	default:
		return nil, false
	}
	if uint64(len(b))-h != n {
		return nil, false
	}
	return b[h:], true
}

// UnmarshalCBOR requires a byte string of exactly 16 bytes.
func (id *BootID) UnmarshalCBOR(b []byte) error {
	if len(b) != 17 || b[0] != 0x50 { // bstr(16)
		return &cbor.UnmarshalTypeError{CBORType: "non-16-byte string", GoType: "BootID"}
	}
	copy(id[:], b[1:])
	return nil
}

// Decode decodes one frame payload (as Reader.Next returns it) into f: it
// sets f.Type and the field of that type, every field of it overwritten,
// and validates the bounds. The error is a *Error: ReasonMalformed for a
// payload that is not [type, {body}] with the right CBOR types,
// ReasonUnknownType for a well-formed frame of another type,
// ReasonBadField for a missing or out-of-bounds field.
func (f *Frame) Decode(p []byte) error { return f.decode(p, true) }

func (f *Frame) decode(p []byte, fast bool) error {
	if len(p) < 2 || p[0] != 0x82 {
		return &Error{Reason: ReasonMalformed, Detail: "payload is not a 2-item array"}
	}
	var t Type
	body := p[2:]
	switch b := p[1]; {
	case b < 24:
		t = Type(b)
	case b>>5 == 0:
		// A longer unsigned integer: a type from a later version, or a
		// non-shortest form; either way not one we know.
		if err := decMode.Wellformed(p); err != nil {
			return &Error{Reason: ReasonMalformed, Err: err}
		}
		return &Error{Reason: ReasonUnknownType, Detail: "type is a multi-byte integer"}
	default:
		return &Error{Reason: ReasonMalformed, Detail: "message type is not an unsigned integer"}
	}
	var err error
	switch t {
	case TypeHello:
		f.Hello = Hello{}
		err = decMode.Unmarshal(body, &f.Hello)
	case TypeBeat:
		if fast && f.decodeBeatFast(body) {
			f.Type = t
			return validateBeat(&f.Beat)
		}
		w := &f.beat
		w.Seq, w.Time, w.Height, w.RTT, w.Head.set = 0, 0, 0, 0, false
		if err = decMode.Unmarshal(body, w); err == nil {
			if !w.Head.set {
				w.Head.s = ""
			}
			f.Beat = Beat{Seq: w.Seq, Time: w.Time, Head: w.Head.s, Height: w.Height, RTT: time.Duration(w.RTT)}
		}
	case TypeBye:
		f.Bye = Bye{}
		err = decMode.Unmarshal(body, &f.Bye)
	case TypeWelcome:
		f.Welcome = Welcome{}
		err = decMode.Unmarshal(body, &f.Welcome)
	case TypeAck:
		f.Ack = Ack{}
		err = decMode.Unmarshal(body, &f.Ack)
	case TypeGoAway:
		f.GoAway = GoAway{}
		err = decMode.Unmarshal(body, &f.GoAway)
	default:
		if err := decMode.Wellformed(body); err != nil {
			return &Error{Reason: ReasonMalformed, Err: err}
		}
		return &Error{Reason: ReasonUnknownType, Detail: t.String()}
	}
	if err != nil {
		return &Error{Reason: ReasonMalformed, Detail: t.String(), Err: err}
	}
	f.Type = t
	return Validate(f.message())
}

// message returns a pointer to the decoded message.
func (f *Frame) message() Message {
	switch f.Type {
	case TypeHello:
		return &f.Hello
	case TypeBeat:
		return &f.Beat
	case TypeBye:
		return &f.Bye
	case TypeWelcome:
		return &f.Welcome
	case TypeAck:
		return &f.Ack
	case TypeGoAway:
		return &f.GoAway
	}
	return nil
}

// Validate checks m against the bounds documented on its fields; the error
// is a *Error with ReasonBadField naming the field.
func Validate(m Message) error {
	switch m := m.(type) {
	case *Hello:
		return validateHello(m)
	case Hello:
		return validateHello(&m)
	case *Beat:
		return validateBeat(m)
	case Beat:
		return validateBeat(&m)
	case *Bye:
		return validateLabel("Bye.Reason", m.Reason)
	case Bye:
		return validateLabel("Bye.Reason", m.Reason)
	case *Welcome:
		return validateWelcome(m)
	case Welcome:
		return validateWelcome(&m)
	case *Ack:
		return validateAck(m)
	case Ack:
		return validateAck(&m)
	case *GoAway:
		return validateGoAway(m)
	case GoAway:
		return validateGoAway(&m)
	}
	return &Error{Reason: ReasonUnknownType, Detail: fmt.Sprintf("%T", m)}
}

func validateHello(h *Hello) error {
	switch {
	case h.BootID.IsZero():
		return badField("Hello.BootID is zero")
	case h.BeatPeriod < MinPeriod || h.BeatPeriod > MaxBeatPeriod:
		return badField("Hello.BeatPeriod " + h.BeatPeriod.String() + " outside [" + MinPeriod.String() + ", " + MaxBeatPeriod.String() + "]")
	case h.ReconnectPeriod != 0 && (h.ReconnectPeriod < MinPeriod || h.ReconnectPeriod > MaxReconnectPeriod):
		return badField("Hello.ReconnectPeriod " + h.ReconnectPeriod.String() + " outside [" + MinPeriod.String() + ", " + MaxReconnectPeriod.String() + "]")
	}
	for _, l := range [...]struct{ name, v string }{
		{"Hello.Impl", h.Impl}, {"Hello.Version", h.Version}, {"Hello.Nickname", h.Nickname},
		{"Hello.MinerAddress", h.MinerAddress}, {"Hello.Genesis", h.Genesis},
	} {
		if err := validateLabel(l.name, l.v); err != nil {
			return err
		}
	}
	return nil
}

func validateBeat(b *Beat) error {
	switch {
	case b.Seq == 0:
		return badField("Beat.Seq is 0")
	case b.Time <= 0:
		return badField("Beat.Time is not after 1970")
	case b.RTT < 0 || b.RTT > MaxRTT:
		return badField("Beat.RTT outside [0, " + MaxRTT.String() + "]")
	}
	return nil
}

func validateWelcome(w *Welcome) error {
	if w.BeatPeriod != 0 && (w.BeatPeriod < MinPeriod || w.BeatPeriod > MaxBeatPeriod) {
		return badField("Welcome.BeatPeriod " + w.BeatPeriod.String() + " outside [" + MinPeriod.String() + ", " + MaxBeatPeriod.String() + "]")
	}
	if err := validateLabel("Welcome.Impl", w.Impl); err != nil {
		return err
	}
	return validateLabel("Welcome.Version", w.Version)
}

func validateAck(a *Ack) error {
	switch {
	case a.Seq == 0:
		return badField("Ack.Seq is 0")
	case a.Time <= 0:
		return badField("Ack.Time is not after 1970")
	}
	return nil
}

func validateGoAway(g *GoAway) error {
	if g.RetryAfter < 0 || g.RetryAfter > MaxRetryAfter {
		return badField("GoAway.RetryAfter outside [0, " + MaxRetryAfter.String() + "]")
	}
	return validateLabel("GoAway.Reason", g.Reason)
}

func validateLabel(name, v string) error {
	if len(v) > MaxLabelBytes {
		return badField(name + " longer than " + itoa(MaxLabelBytes) + " bytes")
	}
	return nil
}

// The hot messages have a hand-written fast path, as v1's line decoder
// does: an aggregator decodes a Beat and encodes an Ack for every beat.
// fxamacker/cbor stays the reference: the fast paths handle only the
// canonical shapes and defer everything else to it, and the tests
// (TestFastPathsMatchLibrary, FuzzDecodeFrame) require identical results.

// appendAckFast appends a (validated) Ack frame in Core Deterministic
// Encoding, byte for byte what encMode writes.
func appendAckFast(dst []byte, a *Ack) []byte {
	n := 3 + 1 + uintLen(a.Seq) + 1 + uintLen(uint64(a.Time))
	dst = binary.AppendUvarint(dst, uint64(n))
	dst = append(dst, 0x82, byte(TypeAck), 0xa2, 0x01)
	dst = appendUint(dst, a.Seq)
	dst = append(dst, 0x02)
	return appendUint(dst, uint64(a.Time))
}

// uintLen is the length of v as a CBOR unsigned integer, head included.
func uintLen(v uint64) int {
	switch {
	case v < 24:
		return 1
	case v <= 0xff:
		return 2
	case v <= 0xffff:
		return 3
	case v <= 0xffffffff:
		return 5
	}
	return 9
}

// appendUint appends v as a CBOR unsigned integer in its shortest form.
func appendUint(dst []byte, v uint64) []byte {
	switch {
	case v < 24:
		return append(dst, byte(v))
	case v <= 0xff:
		return append(dst, 0x18, byte(v))
	case v <= 0xffff:
		return binary.BigEndian.AppendUint16(append(dst, 0x19), uint16(v))
	case v <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(dst, 0x1a), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0x1b), v)
}

// readUint reads a CBOR unsigned integer (major type 0) in its shortest
// form at b[i:]; ok is false for anything else (the library decides).
func readUint(b []byte, i int) (v uint64, next int, ok bool) { return readArg(b, i, 0) }

// readArg reads the head of a data item of the given major type whose
// argument is in its shortest form, at b[i:].
func readArg(b []byte, i int, major byte) (v uint64, next int, ok bool) {
	if i >= len(b) || b[i]>>5 != major {
		return 0, 0, false
	}
	switch ai := b[i] & 0x1f; {
	case ai < 24:
		return uint64(ai), i + 1, true
	case ai == 24 && i+2 <= len(b) && b[i+1] >= 24:
		return uint64(b[i+1]), i + 2, true
	case ai == 25 && i+3 <= len(b):
		v = uint64(binary.BigEndian.Uint16(b[i+1:]))
		return v, i + 3, v > 0xff
	case ai == 26 && i+5 <= len(b):
		v = uint64(binary.BigEndian.Uint32(b[i+1:]))
		return v, i + 5, v > 0xffff
	case ai == 27 && i+9 <= len(b):
		v = binary.BigEndian.Uint64(b[i+1:])
		return v, i + 9, v > 0xffffffff
	}
	return 0, 0, false
}

// decodeBeatFast decodes a Beat body in the shapes our senders write: a
// map of at most five pairs with keys 1–5, each once, unsigned integers in
// shortest form, Head a short definite text string. It reports false, with
// f unchanged, for anything else.
func (f *Frame) decodeBeatFast(b []byte) bool {
	if len(b) == 0 || b[0] < 0xa0 || b[0] > 0xa5 {
		return false
	}
	pairs := int(b[0] - 0xa0)
	var (
		seq, tm, height, rtt uint64
		head                 []byte
		seen                 uint8
		i                    = 1
		ok                   bool
	)
	for range pairs {
		if i >= len(b) {
			return false
		}
		k := b[i]
		if k < 1 || k > 5 || seen&(1<<k) != 0 {
			return false
		}
		seen |= 1 << k
		i++
		switch k {
		case 1:
			seq, i, ok = readUint(b, i)
		case 2:
			tm, i, ok = readUint(b, i)
			ok = ok && tm <= math.MaxInt64
		case 3:
			var n uint64
			n, i, ok = readArg(b, i, 3)
			if !ok || n > uint64(len(b)-i) {
				return false
			}
			head = b[i : i+int(n)]
			i += int(n)
			ok = utf8.Valid(head)
		case 4:
			height, i, ok = readUint(b, i)
		case 5:
			rtt, i, ok = readUint(b, i)
			ok = ok && rtt <= math.MaxInt64
		}
		if !ok {
			return false
		}
	}
	if i != len(b) {
		return false
	}
	if string(head) != f.beat.Head.s {
		f.beat.Head.s = string(head)
	}
	f.Beat = Beat{Seq: seq, Time: int64(tm), Head: f.beat.Head.s, Height: height, RTT: time.Duration(rtt)}
	return true
}
