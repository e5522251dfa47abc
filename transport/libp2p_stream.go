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
)

// discardBufSize bounds the buffer the read loop discards into. The
// aggregator never writes; the loop only exists to see the stream end, so
// whatever a misbehaving peer sends is dropped in small pieces.
const discardBufSize = 256

// localEnd records how this side ended the stream, if it did.
type localEnd int

const (
	endNone localEnd = iota
	endClosed
	endReset
)

// libp2pStream is a Stream over a libp2p stream. A read loop, started when
// the stream opens and ended by the stream's end, notices a remote close or
// reset without waiting for the next write.
type libp2pStream struct {
	s            network.Stream
	cm           connmgr.ConnManager
	remote       peer.ID
	tag          string
	writeTimeout time.Duration

	unprotect sync.Once

	mu  sync.Mutex
	end localEnd // guarded by mu

	done      chan struct{} // closed when the read loop has returned
	remoteErr error         // WaitRemote's result; written before done is closed
}

func newLibp2pStream(s network.Stream, cm connmgr.ConnManager, remote peer.ID, tag string, writeTimeout time.Duration) *libp2pStream {
	ls := &libp2pStream{
		s:            s,
		cm:           cm,
		remote:       remote,
		tag:          tag,
		writeTimeout: writeTimeout,
		done:         make(chan struct{}),
	}
	go ls.readLoop()
	return ls
}

// readLoop reads (and discards) until the stream ends, then records why.
// It returns once the stream is reset or closed on either side, so it never
// outlives the stream.
func (ls *libp2pStream) readLoop() {
	defer close(ls.done)
	buf := make([]byte, discardBufSize)
	for {
		if _, err := ls.s.Read(buf); err != nil {
			ls.remoteErr = ls.endError(err)
			return
		}
	}
}

// endError turns the read loop's final error into WaitRemote's result. A
// local end decides it: the read error after a local Close is only the echo
// of our own CloseRead.
func (ls *libp2pStream) endError(err error) error {
	ls.mu.Lock()
	end := ls.end
	ls.mu.Unlock()
	switch {
	case end == endClosed:
		return nil
	case end == endReset:
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

// WaitRemote implements Stream.
func (ls *libp2pStream) WaitRemote() error {
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
// whether this call recorded it.
func (ls *libp2pStream) setEnd(e localEnd) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.end != endNone {
		return false
	}
	ls.end = e
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
