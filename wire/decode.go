package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/ipfs/go-cid"
)

// Reason classifies why a line was rejected. Its values are the label values
// of the aggregator's rejection counter, so they are stable snake_case words.
type Reason string

// The reasons DecodeLine reports. A receiver's line reader adds its own
// ("line_too_long") before a line ever reaches the decoder.
const (
	// ReasonNotJSON: the line is not JSON, or is JSON but not an object
	// (an array, a string, null...).
	ReasonNotJSON Reason = "not_json"
	// ReasonBadType: a known field has the wrong JSON type or range, e.g.
	// Height as a string, negative, fractional or above 2^64-1.
	ReasonBadType Reason = "bad_type"
	// ReasonInvalidUTF8: the line is not valid UTF-8. encoding/json would
	// silently replace such bytes with U+FFFD; a sender that emits them is
	// broken, so we reject instead.
	ReasonInvalidUTF8 Reason = "invalid_utf8"
)

// Sentinel errors, one per Reason: every error DecodeLine returns is a
// *DecodeError that matches exactly one of them with errors.Is.
var (
	ErrNotJSON     = errors.New("heartbeat line is not a JSON object")
	ErrBadType     = errors.New("heartbeat field has the wrong type")
	ErrInvalidUTF8 = errors.New("heartbeat line is not valid UTF-8")
)

// DecodeError is the error DecodeLine returns for a rejected line. It never
// quotes the line itself: the input is untrusted and may be 8 KiB long.
type DecodeError struct {
	// Reason is the class of the fault.
	Reason Reason
	// Field is the known field at fault for ReasonBadType ("Height",
	// "GenesisCID"...), "" otherwise or when unknown.
	Field string
	// Err is the underlying cause (a *json.SyntaxError, ...), or nil.
	Err error
}

// Error describes the fault without quoting the input.
func (e *DecodeError) Error() string {
	msg := "decode heartbeat: " + string(e.Reason)
	if e.Field != "" {
		msg += " (field " + e.Field + ")"
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap lets errors.Is match the Reason's sentinel and the cause.
func (e *DecodeError) Unwrap() []error {
	var sentinel error
	switch e.Reason {
	case ReasonNotJSON:
		sentinel = ErrNotJSON
	case ReasonBadType:
		sentinel = ErrBadType
	case ReasonInvalidUTF8:
		sentinel = ErrInvalidUTF8
	}
	if e.Err == nil {
		return []error{sentinel}
	}
	return []error{sentinel, e.Err}
}

// DecodeLine decodes one heartbeat line, without its trailing '\n', into hb.
//
// It accepts every shape in wire-v1.md: the 2019 object, the later one with
// GenesisCID as {"/":"<cid>"} or null, fields in any order, unknown fields
// (ignored), missing fields (zero). It follows encoding/json's rules where
// the legacy receivers relied on them: field names match case-insensitively,
// a repeated field's last value wins, null leaves a field at its zero value,
// surrounding JSON whitespace (including a '\r' before the '\n') is allowed.
// A GenesisCID whose "/" text is not a valid CID is accepted: hb.Genesis
// keeps the text and hb.GenesisCID is nil.
//
// It rejects, with a *DecodeError, a line that is not valid UTF-8, not JSON
// or not a JSON object (checked in that order), or whose known fields have
// the wrong type; hb is then left unchanged.
//
// On success every field of hb is overwritten. To stay allocation-free on
// the hot path, a string field whose new value equals the old one keeps its
// old backing memory, and GenesisCID is reused when hb.Genesis equals the
// new text: decode a stream's lines into one Heartbeat, and if you set
// GenesisCID yourself, set Genesis to match (or to "").
func DecodeLine(line []byte, hb *Heartbeat) error {
	switch err := decodeFast(line, hb); err {
	case nil:
		return nil
	case errBail:
		return decodeFallback(line, hb)
	default:
		return err
	}
}

// errBail is the fast path's "not mine": the line uses JSON the scanner does
// not handle (escapes, nested values, non-ASCII keys, syntax errors) and the
// fallback decides.
var errBail = errors.New("fast path bails out")

// Field indexes for the fast path.
const (
	fieldUnknown = iota
	fieldHead
	fieldHeight
	fieldNickname
	fieldMinerAddress
	fieldGenesisCID
)

var fieldNames = [...]string{"", "Head", "Height", "Nickname", "MinerAddress", "GenesisCID"}

// decodeFast is a scanner for the flat objects senders actually write:
// string, number, true/false/null and {"/":...} values, strings without
// escapes, ASCII keys. It returns nil (hb written), a *DecodeError for a
// wrong type in a line it fully validated, or errBail. It does not allocate
// unless a field's value changed from what hb holds.
//
// It must agree with decodeFallback on every line it does not bail on;
// FuzzDecodeLine checks that.
func decodeFast(b []byte, hb *Heartbeat) error {
	// utf8.Valid runs over ASCII eight bytes at a time; checking first
	// also keeps the reason order identical to the fallback's.
	if !utf8.Valid(b) {
		return &DecodeError{Reason: ReasonInvalidUTF8}
	}
	var (
		head, nick, miner, gtext []byte
		height                   uint64
		gPresent                 bool
		badField                 int // first field with a wrong type, 0 = none
	)
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return errBail
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		i++
	} else {
		for {
			// Key.
			key, ascii, j := scanString(b, i)
			if j < 0 || !ascii {
				return errBail
			}
			i = skipWS(b, j)
			if i >= len(b) || b[i] != ':' {
				return errBail
			}
			i = skipWS(b, i+1)
			if i >= len(b) {
				return errBail
			}
			f := matchField(key)
			c := b[i]
			switch {
			case c == 'n':
				// null: a no-op for strings and Height, nil for the pointer.
				if j = scanLiteral(b, i, "null"); j < 0 {
					return errBail
				}
				if f == fieldGenesisCID {
					gPresent, gtext = false, nil
				}
			case f == fieldUnknown:
				if j = skipScalar(b, i); j < 0 {
					return errBail
				}
			case f == fieldHeight:
				var ok bool
				height, ok, j = scanUint(b, i, height)
				if j < 0 {
					return errBail
				}
				if !ok && badField == 0 {
					badField = f
				}
			case f == fieldGenesisCID && c == '{':
				if !gPresent {
					// encoding/json allocates a fresh struct for a nil
					// pointer and reuses it for a repeated key.
					gPresent, gtext = true, nil
				}
				var bad bool
				gtext, bad, j = scanCIDObject(b, i, gtext)
				if j < 0 {
					return errBail
				}
				if bad && badField == 0 {
					badField = f
				}
			case c == '"' && f != fieldGenesisCID:
				var s []byte
				if s, _, j = scanString(b, i); j < 0 {
					return errBail
				}
				switch f {
				case fieldHead:
					head = s
				case fieldNickname:
					nick = s
				case fieldMinerAddress:
					miner = s
				}
			default:
				// A known field with a scalar of the wrong type.
				if j = skipScalar(b, i); j < 0 {
					return errBail
				}
				if badField == 0 {
					badField = f
				}
			}
			i = skipWS(b, j)
			if i >= len(b) {
				return errBail
			}
			if b[i] == '}' {
				i++
				break
			}
			if b[i] != ',' {
				return errBail
			}
			i = skipWS(b, i+1)
		}
	}
	if skipWS(b, i) != len(b) {
		return errBail
	}
	if badField != 0 {
		return &DecodeError{Reason: ReasonBadType, Field: fieldNames[badField]}
	}
	setString(&hb.Head, head)
	hb.Height = height
	setString(&hb.Nickname, nick)
	setString(&hb.MinerAddress, miner)
	setGenesis(hb, gtext)
	return nil
}

// setString stores b in *dst unless *dst already holds those bytes: the
// comparison does not allocate, the conversion does.
func setString(dst *string, b []byte) {
	if *dst != string(b) {
		*dst = string(b)
	}
}

// setGenesis stores the genesis text and its parse, reusing hb's CID when
// the text is unchanged (parsing allocates).
func setGenesis(hb *Heartbeat, text []byte) {
	if len(text) == 0 {
		hb.Genesis, hb.GenesisCID = "", nil
		return
	}
	if hb.GenesisCID != nil && hb.Genesis == string(text) {
		return
	}
	setString(&hb.Genesis, text)
	hb.GenesisCID = nil
	if c, err := cid.Decode(hb.Genesis); err == nil {
		hb.GenesisCID = &c
	}
}

// matchField maps an ASCII key to a known field the way encoding/json does:
// exact match first, then case-insensitive.
func matchField(key []byte) int {
	for f := fieldHead; f <= fieldGenesisCID; f++ {
		if string(key) == fieldNames[f] {
			return f
		}
	}
	for f := fieldHead; f <= fieldGenesisCID; f++ {
		if equalFoldASCII(key, fieldNames[f]) {
			return f
		}
	}
	return fieldUnknown
}

func equalFoldASCII(a []byte, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x != y {
			if 'A' <= x && x <= 'Z' {
				x += 'a' - 'A'
			}
			if 'A' <= y && y <= 'Z' {
				y += 'a' - 'A'
			}
			if x != y {
				return false
			}
		}
	}
	return true
}

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\r', '\n':
			i++
		default:
			return i
		}
	}
	return i
}

// scanString scans a string starting at b[i] == '"'. It returns its content,
// whether that is all ASCII, and the index after the closing quote, or -1
// for anything the fast path leaves to the fallback (escapes, control
// characters, no closing quote).
func scanString(b []byte, i int) ([]byte, bool, int) {
	if i >= len(b) || b[i] != '"' {
		return nil, false, -1
	}
	start := i + 1
	ascii := true
	for j := start; j < len(b); j++ {
		c := b[j]
		switch {
		case c == '"':
			return b[start:j], ascii, j + 1
		case c == '\\' || c < 0x20:
			return nil, false, -1
		case c >= 0x80:
			ascii = false
		}
	}
	return nil, false, -1
}

// scanLiteral checks that b[i:] starts with lit and returns the index after
// it, or -1.
func scanLiteral(b []byte, i int, lit string) int {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}

// scanNumber validates a JSON number at b[i] and returns the index after it,
// or -1.
func scanNumber(b []byte, i int) int {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return -1
	case b[i] == '0':
		i++
	case '1' <= b[i] && b[i] <= '9':
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		i++
		d := i
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
		if i == d {
			return -1
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		d := i
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
		if i == d {
			return -1
		}
	}
	return i
}

// scanUint reads Height's value at b[i]: a JSON number that is an integer
// in [0, 2^64-1] gives (n, true); any other valid scalar gives (old, false);
// the index is -1 for what the fast path leaves to the fallback.
func scanUint(b []byte, i int, old uint64) (uint64, bool, int) {
	j := skipScalar(b, i)
	if j < 0 {
		return old, false, -1
	}
	var n uint64
	for k := i; k < j; k++ {
		c := b[k]
		if c < '0' || c > '9' {
			return old, false, j // sign, fraction, exponent, or not a number
		}
		d := uint64(c - '0')
		if n > (1<<64-1-d)/10 {
			return old, false, j // overflow
		}
		n = n*10 + d
	}
	return n, true, j
}

// skipScalar skips a string, number, true, false or null at b[i] and
// returns the index after it, or -1 (nested values, escapes, bad syntax).
func skipScalar(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch c := b[i]; {
	case c == '"':
		_, _, j := scanString(b, i)
		return j
	case c == 't':
		return scanLiteral(b, i, "true")
	case c == 'f':
		return scanLiteral(b, i, "false")
	case c == 'n':
		return scanLiteral(b, i, "null")
	case c == '-' || ('0' <= c && c <= '9'):
		return scanNumber(b, i)
	}
	return -1
}

// scanCIDObject reads a GenesisCID object {"/":"<cid>", ...} at b[i] == '{'.
// text is the value so far (a repeated GenesisCID reuses it, as
// encoding/json does); a "/" that is null leaves it, one that is not a
// string sets bad; other members are skipped.
func scanCIDObject(b []byte, i int, text []byte) ([]byte, bool, int) {
	bad := false
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return text, false, i + 1
	}
	for {
		key, ascii, j := scanString(b, i)
		if j < 0 || !ascii {
			return nil, false, -1
		}
		i = skipWS(b, j)
		if i >= len(b) || b[i] != ':' {
			return nil, false, -1
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return nil, false, -1
		}
		if string(key) == "/" {
			switch b[i] {
			case '"':
				text, _, j = scanString(b, i)
			case 'n':
				j = scanLiteral(b, i, "null")
			default:
				j = skipScalar(b, i)
				bad = true
			}
		} else {
			j = skipScalar(b, i)
		}
		if j < 0 {
			return nil, false, -1
		}
		i = skipWS(b, j)
		if i >= len(b) {
			return nil, false, -1
		}
		if b[i] == '}' {
			return text, bad, i + 1
		}
		if b[i] != ',' {
			return nil, false, -1
		}
		i = skipWS(b, i+1)
	}
}

// fallbackLine is the shape encoding/json decodes for the fallback. Its
// GenesisCID is our own struct, not *cid.Cid, so that an unparseable CID
// text is kept rather than rejected.
type fallbackLine struct {
	Head         string
	Height       uint64
	Nickname     string
	MinerAddress string
	GenesisCID   *struct {
		Slash string `json:"/"`
	}
}

// decodeFallback decodes any line with encoding/json, after the checks
// encoding/json does not make (UTF-8, top level an object). It is the
// reference the fast path is tested against.
func decodeFallback(b []byte, hb *Heartbeat) error {
	if !utf8.Valid(b) {
		return &DecodeError{Reason: ReasonInvalidUTF8}
	}
	var fl fallbackLine
	err := json.Unmarshal(b, &fl)
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		return &DecodeError{Reason: ReasonNotJSON, Err: err}
	}
	// The JSON is valid: an object must start with '{'. encoding/json
	// accepts null into a struct and reports [] or "x" as a type error.
	if i := skipWS(b, 0); i >= len(b) || b[i] != '{' {
		return &DecodeError{Reason: ReasonNotJSON, Err: errors.New("top-level value is not an object")}
	}
	if err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return &DecodeError{Reason: ReasonBadType, Field: topField(te.Field), Err: err}
		}
		return &DecodeError{Reason: ReasonBadType, Err: fmt.Errorf("unexpected decode error: %w", err)}
	}
	hb.Head = fl.Head
	hb.Height = fl.Height
	hb.Nickname = fl.Nickname
	hb.MinerAddress = fl.MinerAddress
	var text []byte
	if fl.GenesisCID != nil {
		text = []byte(fl.GenesisCID.Slash)
	}
	setGenesis(hb, text)
	return nil
}

// topField turns encoding/json's dotted path ("GenesisCID./") into the
// top-level field name.
func topField(path string) string {
	for i := 0; i < len(path); i++ {
		if path[i] == '.' {
			return path[:i]
		}
	}
	return path
}
