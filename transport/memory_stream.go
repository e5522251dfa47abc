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
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/p2pbeat/heartbeat/clockwork"
)

// errStreamReset is the muxer-level error under a memory stream's reset.
var errStreamReset = errors.New("stream reset")

// pipe is the state of one memory stream, shared by its two ends. Every
// field but the immutable first ones is guarded by n.mu.
type pipe struct {
	n        *Network
	from, to peer.ID
	proto    protocol.ID // negotiated at Dial

	buf  []byte // written by the sender, not yet read; at most n.window bytes
	back []byte // written by the server, not yet read; at most n.window bytes

	senderClosed      bool // the sender closed for writing: the server reads EOF after buf
	senderDone        bool // the sender closed in both directions (Close)
	discard           bool // the sender called WaitRemote: what the server writes is dropped
	serverWriteClosed bool // the server closed for writing: the sender reads EOF after back
	serverClosed      bool // the server closed in both directions (Close)
	reset             bool // either side reset the stream
	senderErr         error
	serverErr         error

	ended     chan struct{} // closed when the sender's WaitRemote can return
	remoteErr error         // WaitRemote's result; set once, before ended is closed

	changed chan struct{} // closed and replaced on every change; wakes the server's Read and Write
	waiters []*waiter     // parked sender writes and reads
}

func newPipe(n *Network, from, to peer.ID, proto protocol.ID) *pipe {
	return &pipe{
		n:       n,
		from:    from,
		to:      to,
		proto:   proto,
		ended:   make(chan struct{}),
		changed: make(chan struct{}),
	}
}

// wakeLocked publishes a change: it releases (and uncounts, right now) every
// parked sender operation whose condition now holds, and wakes the server's
// parked Read and Write.
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
	p.buf, p.back = nil, nil
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

// Protocol implements Stream.
func (s *memStream) Protocol() protocol.ID { return s.p.proto }

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

// WaitRemote implements Stream. From its first call on, what the server
// wrote and writes is dropped, so the server's writes never block on a full
// window, as on libp2p, whose read loop then discards.
func (s *memStream) WaitRemote() error {
	p := s.p
	p.n.mu.Lock()
	if !p.discard {
		p.discard = true
		p.back = nil
		p.wakeLocked()
	}
	p.n.mu.Unlock()
	<-p.ended
	return p.remoteErr
}

// Read implements Stream. It parks, counted in Blocked, while there is
// nothing to read and the stream has not ended: a sender waiting for the
// aggregator's next frame is idle until the server writes, closes or resets,
// or the sender itself ends the stream.
func (s *memStream) Read(b []byte) (int, error) {
	p := s.p
	n := p.n
	n.mu.Lock()
	defer n.mu.Unlock()
	cond := func() bool {
		return p.senderDone || p.reset || len(p.back) > 0 || p.serverWriteClosed
	}
	for {
		switch {
		case p.senderDone:
			return 0, fmt.Errorf("read heartbeat from %s: %w", p.to, net.ErrClosed)
		case p.reset:
			return 0, p.senderErr
		case len(b) == 0:
			return 0, nil
		case len(p.back) > 0:
			k := copy(b, p.back)
			p.back = p.back[k:]
			if len(p.back) == 0 {
				p.back = nil
			}
			p.wakeLocked()
			n.notify()
			return k, nil
		case p.serverWriteClosed:
			return 0, io.EOF
		}
		n.parkLocked(p, cond, nil, nil)
	}
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

// Close implements Stream: the receiver reads what was written, then EOF;
// what the receiver wrote and the sender did not read is dropped.
func (s *memStream) Close() error {
	p := s.p
	p.n.mu.Lock()
	defer p.n.mu.Unlock()
	if p.senderDone || p.reset {
		return nil
	}
	p.senderClosed, p.senderDone = true, true
	p.back = nil
	p.endLocked(nil)
	p.wakeLocked()
	return nil
}

// ServerStream is the receiver's end of a memory stream, as an aggregator's
// stream handler sees it. Read is for one goroutine at a time, and so is
// Write; Close, CloseWrite and Reset may be called from any goroutine and are
// idempotent.
type ServerStream struct {
	p *pipe
}

// RemotePeer returns the sender's peer id.
func (s *ServerStream) RemotePeer() peer.ID { return s.p.from }

// Protocol returns the protocol id negotiated for the stream: the first of
// the sender's protocols that the Listener speaks.
func (s *ServerStream) Protocol() protocol.ID { return s.p.proto }

// Write writes b for the sender's Read, in order. It blocks while the send
// window (the same size as the sender's) is full, until the sender reads,
// either side resets (the error then matches ErrReset) or the server closes.
// Once the sender no longer reads (it called Close or WaitRemote) the bytes
// are accepted and dropped, as a muxer does. After CloseWrite or Close it
// fails with an error matching net.ErrClosed. It is not counted in Blocked:
// it is the test's side of the stream.
func (s *ServerStream) Write(b []byte) (int, error) {
	p := s.p
	n := p.n
	n.mu.Lock()
	defer n.mu.Unlock()
	written := 0
	for {
		switch {
		case p.serverWriteClosed:
			return written, fmt.Errorf("write to %s: %w", p.from, net.ErrClosed)
		case p.reset:
			return written, p.serverErr
		case written == len(b):
			return written, nil
		case p.senderDone || p.discard:
			return len(b), nil
		case len(p.back) < n.window:
			k := min(n.window-len(p.back), len(b)-written)
			p.back = append(p.back, b[written:written+k]...)
			written += k
			p.wakeLocked()
			n.notify()
			continue
		}
		ch := p.changed
		n.mu.Unlock()
		<-ch
		n.mu.Lock()
	}
}

// CloseWrite half-closes the server's end: the sender reads what was
// written, then io.EOF, and its WaitRemote returns io.EOF; the server can
// still Read. It does nothing after Close, CloseWrite or a reset.
func (s *ServerStream) CloseWrite() error {
	p := s.p
	p.n.mu.Lock()
	defer p.n.mu.Unlock()
	if p.serverWriteClosed || p.reset {
		return nil
	}
	p.serverWriteClosed = true
	p.endLocked(io.EOF)
	p.wakeLocked()
	return nil
}

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

// Close ends the stream in order: the sender reads what the server wrote,
// then io.EOF, its WaitRemote returns io.EOF, and its later writes are
// accepted and dropped. It does nothing after a reset.
func (s *ServerStream) Close() error {
	p := s.p
	p.n.mu.Lock()
	defer p.n.mu.Unlock()
	if p.serverClosed || p.reset {
		return nil
	}
	p.serverClosed, p.serverWriteClosed = true, true
	p.buf = nil
	p.endLocked(io.EOF)
	p.wakeLocked()
	return nil
}

// Reset aborts the stream: the sender's Write, Read and WaitRemote return
// errors matching ErrReset. It does nothing after Close or a reset.
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
