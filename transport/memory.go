package transport

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/wire"
)

// DefaultWindow is the memory transport's default send window: the bytes a
// sender may write that the receiver has not read yet. 256 KiB is yamux's
// initial stream window, the point where a real stream's writes block.
const DefaultWindow = 256 << 10

// Network is an in-process network of heartbeat streams for deterministic
// tests. Receivers Listen on a peer id; senders Dial through a Dialer from
// Network.Dialer. A dial negotiates the protocol as multistream-select does:
// the first of the dialer's protocols the listener speaks. Streams are
// reliable, ordered and two-way (Stream.Read reads what ServerStream.Write
// wrote), with a send window in each direction.
//
// Faults can be injected per target peer (SetFaults). Errors are the kinds the
// libp2p transport returns: dial errors match ErrDialFailed (and the ctx
// error when ctx ended the dial), resets match ErrReset, write timeouts match
// os.ErrDeadlineExceeded.
//
// Blocked and Changed are sync points for tests that drive a sender under a
// mock clock: they tell when every operation that will block is parked, so
// the clock can be advanced without sleeping.
//
// All state is guarded by one mutex, so operations are atomic with respect
// to one another, and the network starts no goroutines of its own: whatever
// runs, a caller runs.
type Network struct {
	clock        clockwork.Clock
	writeTimeout time.Duration
	dialTimeout  time.Duration
	window       int

	changed chan struct{} // cap 1: a pending "something changed" signal

	mu        sync.Mutex
	listeners map[peer.ID]*Listener
	faults    map[peer.ID]Faults
	blocked   int
}

// NetworkOption configures NewNetwork.
type NetworkOption func(*Network)

// WithClock sets the clock write and dial timeouts are measured on (default:
// the real clock). Pass a mock to drive timeouts in virtual time.
func WithClock(c clockwork.Clock) NetworkOption {
	return func(n *Network) { n.clock = c }
}

// WithMemoryWriteTimeout bounds each Write, measured on the network's clock,
// like the libp2p Dialer's write deadline. 0 (the default) means no timeout.
func WithMemoryWriteTimeout(d time.Duration) NetworkOption {
	return func(n *Network) { n.writeTimeout = d }
}

// WithMemoryDialTimeout bounds a hanging Dial (see Faults.HangDials), measured
// on the network's clock, like the libp2p Dialer's dial timeout. 0 (the
// default) means a hanging dial waits for its ctx only.
func WithMemoryDialTimeout(d time.Duration) NetworkOption {
	return func(n *Network) { n.dialTimeout = d }
}

// WithWindow sets the send window in bytes (default DefaultWindow). A
// non-positive size keeps the default: a window of zero would block every
// write.
func WithWindow(size int) NetworkOption {
	return func(n *Network) {
		if size > 0 {
			n.window = size
		}
	}
}

// NewNetwork returns an empty network.
func NewNetwork(opts ...NetworkOption) *Network {
	n := &Network{
		clock:     clockwork.Real(),
		window:    DefaultWindow,
		changed:   make(chan struct{}, 1),
		listeners: make(map[peer.ID]*Listener),
		faults:    make(map[peer.ID]Faults),
	}
	for _, o := range opts {
		o(n)
	}
	return n
}

// Faults are the failures injected into operations toward one target peer.
// The zero value injects nothing. They act on dials and on the sender's
// writes; what the sender reads is what the test's ServerStream writes, so
// a server that never writes is a hung aggregator (the sender's Read stays
// parked until either side resets or closes). Faults are looked up when an operation
// starts (and, for a Write, each time it resumes), so they also apply to
// streams that are already open.
type Faults struct {
	// RefuseDials makes Dial fail at once, like a closed port.
	RefuseDials bool
	// HangDials makes Dial block until its ctx is done (or the network's
	// dial timeout passes), like a black-holed address. RefuseDials wins
	// when both are set.
	HangDials bool
	// WriteErr, when non-nil, makes every Write fail at once with an error
	// wrapping it. The stream stays open: resetting is the caller's call.
	WriteErr error
	// StallWrites makes every Write block until the stream is reset (by
	// either side) or closed locally, or the network's write timeout passes,
	// like a peer that stopped acknowledging. WriteErr wins when both are
	// set.
	StallWrites bool
}

// SetFaults replaces the faults injected toward target. SetFaults(id,
// Faults{}) clears them. Operations already parked by a fault stay parked
// until their own end (see Faults).
func (n *Network) SetFaults(target peer.ID, f Faults) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if f == (Faults{}) {
		delete(n.faults, target)
		return
	}
	n.faults[target] = f
}

// Blocked returns how many of the senders' operations are parked right now:
// dials in a HangDials fault, writes in a StallWrites fault, writes waiting
// for room in a full window, and reads (Stream.Read) waiting for the server
// to write or end the stream. Nothing else is counted: Accept,
// ServerStream.Read, ServerStream.Write and WaitRemote wait by design and
// never count.
//
// An operation is counted before it parks (and before Changed is
// signalled), and stops being counted the moment the event that releases it
// happens (a Read making room, a Write or CloseWrite giving a Read something
// to return, a Reset, a Close), not when its goroutine gets to run. A timeout is the exception: the operation stops being counted when
// its goroutine has seen the timer fire (Changed is signalled then).
//
// A parked write under a write timeout, and a hanging dial under a dial
// timeout, hold one timer on the network's clock, armed before the operation
// is counted; operations that do not park arm none.
func (n *Network) Blocked() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.blocked
}

// Changed returns a channel that receives a value (capacity 1, never
// blocking the network) after an operation parks or unparks, a stream is
// dialled or accepted, or bytes are written or read. Receive from it, then
// re-check the condition you wait for: signals coalesce.
func (n *Network) Changed() <-chan struct{} {
	return n.changed
}

// notify signals Changed without blocking. Safe with or without n.mu held.
func (n *Network) notify() {
	select {
	case n.changed <- struct{}{}:
	default:
	}
}

// parkLocked parks the calling operation until wake is closed by a waker
// (see pipe.wakeLocked), timeout fires, or done is closed. It is called with
// n.mu held and returns with n.mu held, true when a waker released it.
//
// It counts the operation in Blocked before releasing the lock and signals
// Changed after: a test that sees Blocked() reach its expected value knows
// the operation can only move on because of an event the test causes.
func (n *Network) parkLocked(p *pipe, cond func() bool, timeout <-chan time.Time, done <-chan struct{}) bool {
	w := &waiter{cond: cond, wake: make(chan struct{})}
	if p != nil {
		p.waiters = append(p.waiters, w)
	}
	n.blocked++
	n.mu.Unlock()
	n.notify()

	select {
	case <-w.wake:
	case <-timeout:
	case <-done:
	}

	n.mu.Lock()
	if w.woken {
		return true
	}
	w.woken = true
	if p != nil {
		p.removeWaiterLocked(w)
	}
	n.blocked--
	n.notify()
	return false
}

// waiter is one parked operation.
type waiter struct {
	cond  func() bool   // evaluated with n.mu held; true releases the waiter
	wake  chan struct{} // closed by the waker
	woken bool          // guarded by n.mu; set by whoever uncounts the waiter
}

// Listen makes id reachable for the protocols protos (none given: v1 only,
// wire.ProtocolID, as a legacy aggregator): a dial to id that offers one of
// them succeeds and queues a stream for the returned Listener's Accept. It
// fails if id is already listening, or if protos has an unknown or repeated
// id (see DefaultProtocols).
func (n *Network) Listen(id peer.ID, protos ...protocol.ID) (*Listener, error) {
	if len(protos) == 0 {
		protos = []protocol.ID{wire.ProtocolID}
	}
	if err := checkProtocols(protos); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", id, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.listeners[id]; ok {
		return nil, fmt.Errorf("listen on %s: already listening", id)
	}
	l := &Listener{n: n, id: id, protos: slices.Clone(protos), ready: make(chan struct{}, 1), done: make(chan struct{})}
	n.listeners[id] = l
	return l, nil
}

// Dialer returns a Dialer whose streams come from self (the receiver sees
// self as ServerStream.RemotePeer) and that offers protos in preference order
// (none given: DefaultProtocols(), v2 then v1, as NewLibp2p). It panics if
// protos has an unknown or repeated id: like regexp.MustCompile's, the list
// is a test's constant, and NewLibp2p's WithProtocols returns the same check
// as an error.
func (n *Network) Dialer(self peer.ID, protos ...protocol.ID) Dialer {
	if len(protos) == 0 {
		protos = DefaultProtocols()
	}
	if err := checkProtocols(protos); err != nil {
		panic(err)
	}
	return &memDialer{n: n, self: self, protos: slices.Clone(protos)}
}
