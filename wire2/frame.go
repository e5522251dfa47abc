package wire2

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"github.com/multiformats/go-varint"
)

// readerBufBytes is the Reader's read-ahead buffer: a Beat frame and its
// prefix fit, so a steady stream costs one read per frame; larger payloads
// are read straight into the frame buffer.
const readerBufBytes = 256

// Reader reads frames from a stream: an unsigned varint length (minimal, at
// most MaxVarintBytes bytes, as go-varint reads it), then that many payload
// bytes. The length is checked against the bound before any payload byte
// is read, and the payload goes into the buffer given to NewReader, so a
// hostile prefix costs nothing. Not safe for concurrent use.
type Reader struct {
	br  *bufio.Reader
	buf []byte
}

// NewReader returns a Reader over r whose frames are at most len(buf)
// bytes (use MaxFrameBytes). buf is the only payload memory the Reader
// uses; it allocates readerBufBytes of read-ahead once.
func NewReader(r io.Reader, buf []byte) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, readerBufBytes), buf: buf}
}

// Next returns the next frame's payload, valid until the next call. At a
// clean end of stream between frames it returns io.EOF. A bad prefix, a
// zero length or a stream ending inside a frame is a *Error with
// ReasonMalformed; a length above the bound is ReasonFrameTooLong (nothing
// of the payload is read). Errors of the underlying reader are returned
// wrapped.
func (r *Reader) Next() ([]byte, error) {
	n, err := varint.ReadUvarint(r.br)
	switch {
	case err == io.EOF:
		return nil, io.EOF
	case errors.Is(err, varint.ErrOverflow) || errors.Is(err, varint.ErrNotMinimal):
		return nil, &Error{Reason: ReasonMalformed, Detail: "length prefix", Err: err}
	case err == io.ErrUnexpectedEOF:
		return nil, &Error{Reason: ReasonMalformed, Detail: "stream ended inside the length prefix", Err: err}
	case err != nil:
		return nil, fmt.Errorf("read frame length: %w", err)
	case n == 0:
		return nil, &Error{Reason: ReasonMalformed, Detail: "empty frame"}
	case n > uint64(len(r.buf)):
		return nil, &Error{Reason: ReasonFrameTooLong, Detail: "length " + itoa(n) + " > " + itoa(uint64(len(r.buf)))}
	}
	p := r.buf[:n]
	if _, err := io.ReadFull(r.br, p); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, &Error{Reason: ReasonMalformed, Detail: "stream ended inside a frame", Err: io.ErrUnexpectedEOF}
		}
		return nil, fmt.Errorf("read frame payload: %w", err)
	}
	return p, nil
}

// Buffered reports whether bytes are waiting in the read-ahead buffer: the
// next frame arrived with this one.
func (r *Reader) Buffered() bool { return r.br.Buffered() > 0 }

// SplitFrame splits one frame off the front of b (length prefix and
// payload, as Reader reads them), for callers holding bytes rather than a
// stream (tests, the fuzz target). It returns the payload and the rest.
func SplitFrame(b []byte, max int) (payload, rest []byte, err error) {
	n, k, err := varint.FromUvarint(b)
	switch {
	case err != nil:
		return nil, b, &Error{Reason: ReasonMalformed, Detail: "length prefix", Err: err}
	case n == 0:
		return nil, b, &Error{Reason: ReasonMalformed, Detail: "empty frame"}
	case n > uint64(max):
		return nil, b, &Error{Reason: ReasonFrameTooLong, Detail: "length " + itoa(n) + " > " + itoa(uint64(max))}
	case n > uint64(len(b)-k):
		return nil, b, &Error{Reason: ReasonMalformed, Detail: "truncated frame", Err: io.ErrUnexpectedEOF}
	}
	return b[k : k+int(n)], b[k+int(n):], nil
}
