package aggregator

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"
)

// errLineTooLong is returned when a line exceeds the limit, with or without
// a newline in sight: the reader never buffers more than the limit.
var errLineTooLong = errors.New("line exceeds the maximum length")

// initialLineBuffer is the line buffer a stream starts with. A heartbeat
// line is a few hundred bytes (one tipset key, a nickname, a miner
// address), so most streams never grow it; a stream whose line does not
// fit grows its buffer by doubling, up to the line limit. At 10,000 open
// streams this is 5 MiB of buffers instead of 80 MiB at the default limit.
const initialLineBuffer = 512

// lineReader splits a stream into '\n'-terminated lines with a bounded
// buffer. It is what the aggregator uses instead of json.NewDecoder on the
// raw stream, whose buffer grows with the input: a peer that never sends a
// newline would make it buffer without bound.
//
// The buffer starts as given to newLineReader and grows (doubling) only
// when a partial line fills it, never past max+1 bytes; each growth is
// first reserved with the reserve hook (the stream's resource scope), and
// grown counts the bytes reserved so, for the caller to release when the
// stream ends. A grown buffer is kept for the stream's life: a sender whose
// lines need it sends such lines every beat, and shrinking would trade the
// memory for an allocation per line.
type lineReader struct {
	r     io.Reader
	buf   []byte
	max   int // longest line accepted, without its '\n'
	start int // first unread byte in buf
	end   int // end of valid data in buf
	eof   error
	// reserve, when set, is asked for n more bytes before the buffer grows
	// by n; its error ends the stream (wrapped in errLineBufferLimit).
	reserve func(n int) error
	// grown is the number of bytes the buffer grew by: reserved through
	// reserve, released by the caller.
	grown int
	// reads counts the Reads of r that returned data, so that the caller
	// can take one timestamp per chunk rather than one per line.
	reads uint64
	// lines counts the lines returned.
	lines uint64

	// Idle deadline, when r has one (a libp2p stream): before a Read, if a
	// line completed since the deadline was last armed, it is re-armed to
	// wall now + idle. Arming per Read rather than per line costs one
	// clock read per chunk, and arming only after a complete line means a
	// peer trickling a partial line cannot hold the stream open.
	dl         readDeadliner
	idle       time.Duration
	armedLines uint64
	armed      bool
}

// readDeadliner is the part of network.Stream the idle timeout needs.
type readDeadliner interface {
	SetReadDeadline(time.Time) error
}

// errLineBufferLimit is returned when the reserve hook refused a growth of
// the line buffer (the resource manager's memory limit).
var errLineBufferLimit = errors.New("line buffer growth refused")

// newLineReader reads lines of at most max bytes (without '\n') from r,
// starting with buf (which it may outgrow, up to max+1 bytes; a buf longer
// than that is used only up to max+1).
func newLineReader(r io.Reader, buf []byte, max int) *lineReader {
	if len(buf) == 0 {
		panic("aggregator: empty line buffer")
	}
	if len(buf) > max+1 {
		buf = buf[:max+1]
	}
	return &lineReader{r: r, buf: buf, max: max}
}

// next returns the next line without its '\n', skipping blank lines (empty
// or only JSON whitespace: space, tab, '\r'), which a json.Decoder-based
// receiver skips too; a blank line does not re-arm the idle deadline, so
// blank lines alone cannot hold a stream open. The slice is valid until
// the next call. At the end of the input it returns io.EOF; a last line
// without a newline before a clean EOF is returned as a line first (a
// json.Decoder receiver accepted it), while one cut by any other error is
// dropped: it is truncated, not malformed. A line over the limit returns
// errLineTooLong as soon as max+1 bytes without a newline have been seen.
func (lr *lineReader) next() ([]byte, error) {
	for {
		if i := bytes.IndexByte(lr.buf[lr.start:lr.end], '\n'); i >= 0 {
			line := lr.buf[lr.start : lr.start+i]
			if len(line) > lr.max {
				return nil, errLineTooLong
			}
			lr.start += i + 1
			if blank(line) {
				continue
			}
			lr.lines++
			return line, nil
		}
		if lr.end-lr.start > lr.max {
			return nil, errLineTooLong
		}
		if lr.eof != nil {
			if lr.start < lr.end && lr.eof == io.EOF {
				line := lr.buf[lr.start:lr.end]
				lr.start = lr.end
				if blank(line) {
					continue
				}
				lr.lines++
				return line, nil
			}
			return nil, lr.eof
		}
		lr.fill()
	}
}

// blank reports whether line holds only JSON whitespace (RFC 8259 ws
// without the '\n' that ended it).
func blank(line []byte) bool {
	for _, c := range line {
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}

// maxEmptyReads bounds consecutive (0, nil) Reads, as bufio does, so that a
// broken reader cannot spin the loop forever.
const maxEmptyReads = 100

// fill moves the partial line to the front, grows a full buffer, and
// reads once.
func (lr *lineReader) fill() {
	if lr.start > 0 {
		lr.end = copy(lr.buf, lr.buf[lr.start:lr.end])
		lr.start = 0
	}
	if lr.end == len(lr.buf) {
		// A partial line fills the buffer, and next checked it is not over
		// the limit yet: max+1 bytes are always allowed.
		size := min(2*len(lr.buf), lr.max+1)
		if lr.reserve != nil {
			if err := lr.reserve(size - len(lr.buf)); err != nil {
				lr.eof = fmt.Errorf("%w: %d more bytes: %w", errLineBufferLimit, size-len(lr.buf), err)
				return
			}
		}
		lr.grown += size - len(lr.buf)
		buf := make([]byte, size)
		copy(buf, lr.buf[:lr.end])
		lr.buf = buf
	}
	if lr.dl != nil && (!lr.armed || lr.lines != lr.armedLines) {
		// Wall clock on purpose: the deadline lives inside the transport,
		// and an injected mock clock may be anywhere (even 1970).
		if err := lr.dl.SetReadDeadline(time.Now().Add(lr.idle)); err != nil {
			lr.eof = err
			return
		}
		lr.armed, lr.armedLines = true, lr.lines
	}
	for empty := 0; ; empty++ {
		n, err := lr.r.Read(lr.buf[lr.end:])
		if n > 0 {
			lr.end += n
			lr.reads++
		}
		if err != nil {
			lr.eof = err
			return
		}
		if n > 0 {
			return
		}
		if empty == maxEmptyReads {
			lr.eof = io.ErrNoProgress
			return
		}
	}
}
