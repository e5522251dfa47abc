package transport

import (
	"context"
	"fmt"
	"net"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// Listener is the receiving end of a peer id on a Network: it hands out the
// streams dialled to that id.
type Listener struct {
	n      *Network
	id     peer.ID
	protos []protocol.ID // the protocols it speaks; immutable
	ready  chan struct{} // cap 1: the queue may be non-empty
	done   chan struct{} // closed by Close

	// guarded by n.mu
	queue  []*pipe
	closed bool
}

// ID returns the peer id l listens on.
func (l *Listener) ID() peer.ID { return l.id }

// AddrInfo returns the target a Dialer needs to reach l.
func (l *Listener) AddrInfo() peer.AddrInfo { return peer.AddrInfo{ID: l.id} }

// Accept returns the next stream dialled to l, in dial order. It blocks until
// there is one, l is closed (the error then matches net.ErrClosed), or ctx is
// done (the error then matches ctx.Err()).
func (l *Listener) Accept(ctx context.Context) (*ServerStream, error) {
	n := l.n
	for {
		n.mu.Lock()
		if len(l.queue) > 0 {
			p := l.queue[0]
			l.queue[0] = nil
			l.queue = l.queue[1:]
			more := len(l.queue) > 0
			n.mu.Unlock()
			if more {
				// Pass the signal on: it coalesced several dials.
				signal(l.ready)
			}
			n.notify()
			return &ServerStream{p: p}, nil
		}
		closed := l.closed
		n.mu.Unlock()
		if closed {
			return nil, fmt.Errorf("accept on %s: %w", l.id, net.ErrClosed)
		}
		select {
		case <-l.ready:
		case <-l.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("accept on %s: %w", l.id, ctx.Err())
		}
	}
}

// Close stops listening, like an aggregator going away: later dials to l's
// id are refused, and streams dialled but not yet accepted are reset (their
// senders see ErrReset). Streams already accepted are left alone. The id can
// Listen again afterwards. Close is idempotent.
func (l *Listener) Close() error {
	n := l.n
	n.mu.Lock()
	if l.closed {
		n.mu.Unlock()
		return nil
	}
	l.closed = true
	if n.listeners[l.id] == l {
		delete(n.listeners, l.id)
	}
	for _, p := range l.queue {
		p.resetLocked(false)
	}
	l.queue = nil
	n.mu.Unlock()
	close(l.done)
	n.notify()
	return nil
}
