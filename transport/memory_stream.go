package transport

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pbeat/heartbeat/clockwork"
)

// errStreamReset is the muxer-level error under a memory stream's reset.
var errStreamReset = errors.New("stream reset")

// pipe is the state of one memory stream, shared by its two ends. Every
// field is guarded by n.mu.
type pipe struct {
	n        *Network
	from, to peer.ID

	buf []byte // written by the sender, not yet read; at most n.window bytes

	senderClosed bool // the sender closed for writing: the server reads EOF after buf
	senderDone   bool // the sender closed in both directions (Close)
	serverClosed bool // the server closed: the sender's WaitRemote gets io.EOF
	reset        bool // either side reset the stream
	senderErr    error
	serverErr    error

	ended     chan struct{} // closed when the sender's WaitRemote can return
	remoteErr error         // WaitRemote's result; set once, before ended is closed

	changed chan struct{} // closed and replaced on every change; wakes Read
	waiters []*waiter     // parked sender writes
}

func newPipe(n *Network, from, to peer.ID) *pipe {
	return &pipe{
		n:       n,
		from:    from,
		to:      to,
		ended:   make(chan struct{}),
		changed: make(chan struct{}),
	}
}

// wakeLocked publishes a change: it releases (and uncounts, right now) every
// parked write whose condition now holds, and wakes readers.
func (p *pipe) wakeLocked() {
	kept := p.waiters[:0]
	woke := false
	for _, w := range p.waiters {
		if w.cond() {
			w.woken = true
			close(w.wake)
			p.n.blocked--
			woke = true
			continue
		}
		kept = append(kept, w)
	}
	clear(p.waiters[len(kept):])
	p.waiters = kept
	close(p.changed)
	p.changed = make(chan struct{})
	if woke {
		p.n.notify()
	}
}

func (p *pipe) removeWaiterLocked(w *waiter) {
	for i, x := range p.waiters {
		if x == w {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			return
		}
	}
}

// endLocked settles WaitRemote's result, if it is not settled yet.
func (p *pipe) endLocked(err error) {
	select {
	case <-p.ended:
		return
	default:
	}
	p.remoteErr = err
	close(p.ended)
}

// resetLocked aborts the stream in both directions; bySender tells which
// side asked. Unread bytes are dropped, as a muxer drops them.
func (p *pipe) resetLocked(bySender bool) {
	p.reset = true
	p.buf = nil
	// The errors yamux gives (a *network.StreamError, which matches
	// ErrReset and says which side reset), so callers that tell a peer's
	// reset from a lost connection work on both transports.
	local := &network.StreamError{Remote: false, TransportError: errStreamReset}
	remote := &network.StreamError{Remote: true, TransportError: errStreamReset}
	if bySender {
		p.senderErr = fmt.Errorf("heartbeat stream to %s: %w", p.to, local)
		p.serverErr = fmt.Errorf("heartbeat stream from %s: %w", p.from, remote)
	} else {
		p.senderErr = fmt.Errorf("heartbeat stream to %s: %w", p.to, remote)
		p.serverErr = fmt.Errorf("heartbeat stream from %s: %w", p.from, local)
	}
	p.endLocked(p.senderErr)
	p.wakeLocked()
}

// senderDoneLocked reports whether the sender can no longer write.
func (p *pipe) senderDoneLocked() bool { return p.senderClosed || p.reset }

// senderWriteErrLocked is the error a Write gets once the sender is done.
func (p *pipe) senderWriteErrLocked() error {
	switch {
	case p.senderClosed:
		return fmt.Errorf("write heartbeat to %s: %w", p.to, net.ErrClosed)
	case p.reset:
		return p.senderErr
	}
	return nil
}

// memStream is the sender's end of a pipe.
type memStream struct {
	p *pipe
}

// Write implements Stream. It copies p into the stream as the window allows
// and parks while the window is full or a StallWrites fault holds. With a
// write timeout, the whole call is bounded by it, measured on the network's
// clock from the call's start; the timer is armed only when the write has to
// park, so a write that never blocks leaves no timer behind.
func (s *memStream) Write(b []byte) (int, error) {
	p := s.p
	n := p.n
	var start time.Time
	if n.writeTimeout > 0 {
		start = n.clock.Now()
	}
	var timer *clockwork.RawTimer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()

	n.mu.Lock()
	defer n.mu.Unlock()
	written := 0
	for {
		if err := p.senderWriteErrLocked(); err != nil {
			return written, err
		}
		f := n.faults[p.to]
		if f.WriteErr != nil {
			return written, fmt.Errorf("write heartbeat to %s: %w", p.to, f.WriteErr)
		}

		var cond func() bool
		switch {
		case f.StallWrites:
			cond = p.senderDoneLocked
		case written == len(b):
			return written, nil
		case p.serverClosed:
			// The receiver stopped reading for good: like a muxer, accept
			// and drop.
			return len(b), nil
		case len(p.buf) < n.window:
			k := min(n.window-len(p.buf), len(b)-written)
			p.buf = append(p.buf, b[written:written+k]...)
			written += k
			p.wakeLocked()
			n.notify()
			continue
		default:
			cond = func() bool { return p.senderDoneLocked() || p.serverClosed || len(p.buf) < n.window }
		}

		if n.writeTimeout > 0 && timer == nil {
			left := start.Add(n.writeTimeout).Sub(n.clock.Now())
			if left <= 0 {
				return written, p.deadlineErr()
			}
			timer = n.clock.Timer(left)
		}
		var timeout <-chan time.Time
		if timer != nil {
			timeout = timer.C
		}
		if !n.parkLocked(p, cond, timeout, nil) {
			return written, p.deadlineErr()
		}
	}
}

func (p *pipe) deadlineErr() error {
	return fmt.Errorf("write heartbeat to %s: %w", p.to, os.ErrDeadlineExceeded)
}

// WaitRemote implements Stream.
func (s *memStream) WaitRemote() error {
	<-s.p.ended
	return s.p.remoteErr
}

// Reset implements Stream. After a local Close it does nothing, as on a
// libp2p stream that is closed in both directions; after CloseWrite alone it
// aborts the stream.
func (s *memStream) Reset() error {
	p := s.p
	p.n.mu.Lock()
	defer p.n.mu.Unlock()
	if p.senderDone || p.reset {
		return nil
	}
	p.resetLocked(true)
	return nil
}

// CloseWrite implements Stream: the receiver reads what was written, then
// EOF; WaitRemote returns io.EOF once the receiver closes its end.
func (s *memStream) CloseWrite() error {
	p := s.p
	p.n.mu.Lock()
	defer p.n.mu.Unlock()
	if p.senderDoneLocked() {
		return nil
	}
	p.senderClosed = true
	p.wakeLocked()
	return nil
}

// Close implements Stream: the receiver reads what was written, then EOF.
func (s *memStream) Close() error {
	p := s.p
	p.n.mu.Lock()
	defer p.n.mu.Unlock()
	if p.senderDone || p.reset {
		return nil
	}
	p.senderClosed, p.senderDone = true, true
	p.endLocked(nil)
	p.wakeLocked()
	return nil
}

// ServerStream is the receiver's end of a memory stream, as an aggregator's
// stream handler sees it. Read is for one goroutine at a time; Close and Reset
// may be called from any goroutine and are idempotent.
type ServerStream struct {
	p *pipe
}

// RemotePeer returns the sender's peer id.
func (s *ServerStream) RemotePeer() peer.ID { return s.p.from }

// Read reads the bytes the sender wrote, in order. It returns io.EOF once the
// sender closed and everything was read, an error matching ErrReset once
// either side reset, and an error matching net.ErrClosed after Close.
func (s *ServerStream) Read(b []byte) (int, error) {
	p := s.p
	n := p.n
	n.mu.Lock()
	defer n.mu.Unlock()
	for {
		switch {
		case p.serverClosed:
			return 0, fmt.Errorf("read heartbeat from %s: %w", p.from, net.ErrClosed)
		case p.reset:
			return 0, p.serverErr
		case len(p.buf) > 0:
			k := copy(b, p.buf)
			p.buf = p.buf[k:]
			if len(p.buf) == 0 {
				p.buf = nil
			}
			p.wakeLocked()
			n.notify()
			return k, nil
		case p.senderClosed:
			return 0, io.EOF
		case len(b) == 0:
			return 0, nil
		}
		ch := p.changed
		n.mu.Unlock()
		<-ch
		n.mu.Lock()
	}
}

// Close ends the stream in order: the sender's WaitRemote returns io.EOF, and
// its later writes are accepted and dropped. It does nothing after a reset.
func (s *ServerStream) Close() error {
	p := s.p
	p.n.mu.Lock()
	defer p.n.mu.Unlock()
	if p.serverClosed || p.reset {
		return nil
	}
	p.serverClosed = true
	p.buf = nil
	p.endLocked(io.EOF)
	p.wakeLocked()
	return nil
}

// Reset aborts the stream: the sender's Write and WaitRemote return errors
// matching ErrReset. It does nothing after Close or a reset.
func (s *ServerStream) Reset() error {
	p := s.p
	p.n.mu.Lock()
	defer p.n.mu.Unlock()
	if p.serverClosed || p.reset {
		return nil
	}
	p.resetLocked(false)
	return nil
}
