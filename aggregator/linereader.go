package aggregator

import (
	"bytes"
	"errors"
	"io"
	"time"
)

// errLineTooLong is returned when a line exceeds the limit, with or without
// a newline in sight: the reader never buffers more than the limit.
var errLineTooLong = errors.New("line exceeds the maximum length")

// lineReader splits a stream into '\n'-terminated lines with a fixed buffer.
// It is what the aggregator uses instead of json.NewDecoder on the raw
// stream, whose buffer grows with the input: a peer that never sends a
// newline would make it buffer without bound.
//
// Memory is exactly the buffer given to newLineReader, whatever the input.
type lineReader struct {
	r     io.Reader
	buf   []byte
	max   int // longest line accepted, without its '\n'
	start int // first unread byte in buf
	end   int // end of valid data in buf
	eof   error
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

// newLineReader reads lines of at most max bytes (without '\n') from r into
// buf, which must hold at least max+1 bytes.
func newLineReader(r io.Reader, buf []byte, max int) *lineReader {
	if len(buf) < max+1 {
		panic("aggregator: line buffer shorter than the line limit")
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

// fill moves the partial line to the front and reads once.
func (lr *lineReader) fill() {
	if lr.start > 0 {
		lr.end = copy(lr.buf, lr.buf[lr.start:lr.end])
		lr.start = 0
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
