package transport

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/p2pbeat/heartbeat/clockwork"
)

// errRefused is the cause of a dial to a peer that does not listen (or
// refuses by fault), as a closed port refuses a TCP connection.
var errRefused = errors.New("connection refused")

type memDialer struct {
	n      *Network
	self   peer.ID
	protos []protocol.ID // offered in this order; immutable
}

// Dial implements Dialer. It succeeds at once when target listens for one of
// the offered protocols (the stream, with the first of them the listener
// speaks, is queued for Accept), fails at once when it does not listen, does
// not speak any of them ("protocols not supported", as multistream-select
// says) or refuses by fault, and blocks when the target hangs by fault.
func (d *memDialer) Dial(ctx context.Context, target peer.AddrInfo) (Stream, error) {
	n := d.n
	if target.ID == "" {
		return nil, dialError(ctx, target.ID, errors.New("no peer id in target"))
	}
	if err := ctx.Err(); err != nil {
		return nil, dialError(ctx, target.ID, err)
	}

	n.mu.Lock()
	f := n.faults[target.ID]
	if f.RefuseDials {
		n.mu.Unlock()
		return nil, dialError(ctx, target.ID, errRefused)
	}
	if f.HangDials {
		err := n.hangLocked(ctx)
		n.mu.Unlock()
		return nil, dialError(ctx, target.ID, err)
	}
	l := n.listeners[target.ID]
	if l == nil {
		n.mu.Unlock()
		return nil, dialError(ctx, target.ID, errRefused)
	}
	i := slices.IndexFunc(d.protos, func(id protocol.ID) bool { return slices.Contains(l.protos, id) })
	if i < 0 {
		n.mu.Unlock()
		return nil, dialError(ctx, target.ID, fmt.Errorf("failed to negotiate protocol: protocols not supported: %v", d.protos))
	}
	p := newPipe(n, d.self, target.ID, d.protos[i])
	l.queue = append(l.queue, p)
	n.mu.Unlock()

	signal(l.ready)
	n.notify()
	return &memStream{p: p}, nil
}

// hangLocked parks a dial until ctx is done or the dial timeout passes, and
// returns why it ended. Called and returns with n.mu held.
func (n *Network) hangLocked(ctx context.Context) error {
	// The timer is armed before the dial counts as blocked, so a test that
	// advances a mock clock once Blocked() says so cannot miss it.
	var timer *clockwork.RawTimer
	var timeout <-chan time.Time
	if n.dialTimeout > 0 {
		timer = n.clock.Timer(n.dialTimeout)
		timeout = timer.C
		defer timer.Stop()
	}
	n.parkLocked(nil, nil, timeout, ctx.Done())
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("dial timeout %s: %w", n.dialTimeout, context.DeadlineExceeded)
}

// signal sends on a capacity-1 channel without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
