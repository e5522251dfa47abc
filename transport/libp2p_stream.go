package transport

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// readBufSize is the size of each stream's read buffer: the staging area
// between the read loop and Read. v2's aggregator frames (Welcome, Ack,
// GoAway) are tens of bytes; a longer one is simply handed over in pieces.
// It is allocated once per stream, and a sender holds one or two streams.
const readBufSize = 512

// localEnd records how this side ended the stream, if it did.
type localEnd int

const (
	endNone localEnd = iota
	endClosed
	endReset
)

// libp2pStream is a Stream over a libp2p stream. A read loop, started when
// the stream opens and ended by the stream's end, owns the libp2p stream's
// read side: it starts the lazy protocol negotiation at once, hands what it
// reads to Read through buf, and, once WaitRemote was called, drops it, so a
// remote close or reset is noticed without waiting for the next write.
//
// The loop reads only when buf is empty: until Read (or WaitRemote) takes
// what the remote sent, the loop stops reading and the muxer's flow control
// holds the remote back, as on any stream nobody reads.
type libp2pStream struct {
	s            network.Stream
	cm           connmgr.ConnManager
	remote       peer.ID
	tag          string
	writeTimeout time.Duration

	unprotect sync.Once

	mu      sync.Mutex
	cond    sync.Cond // on mu: broadcast on every change of the fields below
	end     localEnd  // how this side ended the stream
	discard bool      // WaitRemote was called: the loop drops what it reads
	buf     []byte    // the loop's read buffer, written only while r == w
	r, w    int       // buf[r:w] was read from the network, not yet by Read
	ended   bool      // the loop has read its final error; remoteErr is set

	done      chan struct{} // closed when the read loop has returned
	remoteErr error         // the stream's end, as WaitRemote and Read report it; written before ended and done
}

func newLibp2pStream(s network.Stream, cm connmgr.ConnManager, remote peer.ID, tag string, writeTimeout time.Duration) *libp2pStream {
	ls := &libp2pStream{
		s:            s,
		cm:           cm,
		remote:       remote,
		tag:          tag,
		writeTimeout: writeTimeout,
		buf:          make([]byte, readBufSize),
		done:         make(chan struct{}),
	}
	ls.cond.L = &ls.mu
	go ls.readLoop()
	return ls
}

// readLoop reads until the stream ends, then records why. It returns once
// the stream is reset or closed on either side, so it never outlives the
// stream.
func (ls *libp2pStream) readLoop() {
	defer close(ls.done)
	for {
		ls.mu.Lock()
		for ls.r < ls.w && !ls.discard && ls.end == endNone {
			ls.cond.Wait()
		}
		// Empty now, or what is left is dropped: WaitRemote discards, and
		// a local end drops unread bytes, as a muxer does.
		ls.r, ls.w = 0, 0
		ls.mu.Unlock()

		// Nobody else touches buf while r == w.
		n, err := ls.s.Read(ls.buf)

		ls.mu.Lock()
		ls.w = n
		if err != nil {
			ls.remoteErr = ls.endErrorLocked(err)
			ls.ended = true
		}
		ls.cond.Broadcast()
		ls.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// endErrorLocked turns the read loop's final error into the stream's end as
// WaitRemote reports it. A local end decides it: the read error after a local
// Close is only the echo of our own CloseRead.
func (ls *libp2pStream) endErrorLocked(err error) error {
	switch {
	case ls.end == endClosed:
		return nil
	case ls.end == endReset:
		if errors.Is(err, ErrReset) {
			return fmt.Errorf("heartbeat stream to %s reset locally: %w", ls.remote, err)
		}
		return fmt.Errorf("heartbeat stream to %s reset locally (%w): %w", ls.remote, err, ErrReset)
	case err == io.EOF:
		// Returned bare: callers compare it with == as with any reader.
		return io.EOF
	default:
		return fmt.Errorf("heartbeat stream to %s: %w", ls.remote, err)
	}
}

// Protocol implements Stream.
func (ls *libp2pStream) Protocol() protocol.ID { return ls.s.Protocol() }

// Read implements Stream. It takes what the read loop read; a local end
// answers at once, without waiting for the loop to see it.
func (ls *libp2pStream) Read(p []byte) (int, error) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for {
		switch {
		case ls.end == endClosed:
			return 0, fmt.Errorf("read heartbeat from %s: %w", ls.remote, net.ErrClosed)
		case ls.end == endReset:
			return 0, fmt.Errorf("read heartbeat from %s: reset locally: %w", ls.remote, &network.StreamError{TransportError: errStreamReset})
		case len(p) == 0:
			return 0, nil
		case ls.r < ls.w:
			k := copy(p, ls.buf[ls.r:ls.w])
			ls.r += k
			if ls.r == ls.w {
				ls.cond.Broadcast()
			}
			return k, nil
		case ls.ended:
			return 0, ls.remoteErr
		}
		ls.cond.Wait()
	}
}

// Write implements Stream. Every call arms a fresh wall-clock deadline: the
// deadline is a property of the network, never of a (possibly mocked) clock
// the caller schedules with.
func (ls *libp2pStream) Write(p []byte) (int, error) {
	if ls.localEnd() == endClosed {
		return 0, fmt.Errorf("write heartbeat to %s: %w", ls.remote, net.ErrClosed)
	}
	if err := ls.s.SetWriteDeadline(time.Now().Add(ls.writeTimeout)); err != nil {
		return 0, fmt.Errorf("write heartbeat to %s: set deadline: %w", ls.remote, err)
	}
	n, err := ls.s.Write(p)
	if err != nil {
		return n, ls.writeError(err)
	}
	return n, nil
}

// writeError gives a failed write the error kinds the Stream contract
// promises. yamux reports a passed deadline with its own timeout error,
// which does not match os.ErrDeadlineExceeded, so it is added.
func (ls *libp2pStream) writeError(err error) error {
	if ls.localEnd() == endClosed && !errors.Is(err, ErrReset) {
		return fmt.Errorf("write heartbeat to %s: %w (%w)", ls.remote, net.ErrClosed, err)
	}
	var te interface{ Timeout() bool }
	if !errors.Is(err, os.ErrDeadlineExceeded) && errors.As(err, &te) && te.Timeout() {
		return fmt.Errorf("write heartbeat to %s: %w (%w)", ls.remote, os.ErrDeadlineExceeded, err)
	}
	return fmt.Errorf("write heartbeat to %s: %w", ls.remote, err)
}

// WaitRemote implements Stream. It switches the read loop to discarding.
func (ls *libp2pStream) WaitRemote() error {
	ls.mu.Lock()
	if !ls.discard {
		ls.discard = true
		ls.cond.Broadcast()
	}
	ls.mu.Unlock()
	<-ls.done
	return ls.remoteErr
}

// Reset implements Stream. It always reaches the libp2p stream (which
// ignores a second reset, or a reset after a full close) so that it can
// abort a Close blocked on a stalled connection; the first of Reset and
// Close decides what WaitRemote reports.
func (ls *libp2pStream) Reset() error {
	ls.setEnd(endReset)
	ls.release()
	err := ls.s.Reset()
	// The read loop sees the reset at once; waiting for it means no goroutine
	// of ours outlives the stream.
	<-ls.done
	if err != nil {
		return fmt.Errorf("reset heartbeat stream to %s: %w", ls.remote, err)
	}
	return nil
}

// Close implements Stream. Only the first Close or Reset acts; later calls
// return nil. Close may wait for a concurrent Write to finish (libp2p flushes
// the protocol handshake first); use Reset to abort.
func (ls *libp2pStream) Close() error {
	if !ls.setEnd(endClosed) {
		return nil
	}
	ls.release()
	err := ls.s.Close()
	// Close closes our read side, which ends the read loop.
	<-ls.done
	if err != nil {
		return fmt.Errorf("close heartbeat stream to %s: %w", ls.remote, err)
	}
	return nil
}

// CloseWrite implements Stream. The read loop keeps running, so WaitRemote
// reports the aggregator's own end: io.EOF once it closes in turn.
func (ls *libp2pStream) CloseWrite() error {
	if ls.localEnd() != endNone {
		return nil
	}
	if err := ls.s.CloseWrite(); err != nil {
		return fmt.Errorf("close heartbeat stream to %s for writing: %w", ls.remote, err)
	}
	return nil
}

// setEnd records a local end unless one was recorded before; it reports
// whether this call recorded it. A parked Read returns at once.
func (ls *libp2pStream) setEnd(e localEnd) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.end != endNone {
		return false
	}
	ls.end = e
	ls.cond.Broadcast()
	return true
}

func (ls *libp2pStream) localEnd() localEnd {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.end
}

// release drops this stream's connection protection, once.
func (ls *libp2pStream) release() {
	ls.unprotect.Do(func() { ls.cm.Unprotect(ls.remote, ls.tag) })
}
