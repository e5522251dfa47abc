// Package transport is what the heartbeat sender needs from the network: a
// Dialer that opens one heartbeat stream to an aggregator and the Stream it
// returns. Two implementations satisfy it, the real one over libp2p
// (NewLibp2p) and an in-memory one with fault injection for deterministic
// tests (memory.go); one conformance suite (conformance_test.go) holds both
// to the same behaviour, errors included.
//
// A Dialer offers a list of protocol ids in preference order (by default
// DefaultProtocols: v2, then v1) and the receiver picks, as multistream-select
// does; Stream.Protocol says which one it picked. A v1 stream is one-way: the
// sender writes and only watches for the end (WaitRemote). A v2 stream is
// two-way: the sender also reads the aggregator's frames (Read).
package transport

import (
	"context"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/p2pbeat/heartbeat/wire"
)

// Dialer opens heartbeat streams.
type Dialer interface {
	// Dial opens a heartbeat stream to target. It returns when the stream is
	// open, ctx is done, or the dial failed. Errors wrap ErrDialFailed (and
	// ctx.Err() when ctx ended the dial).
	Dial(ctx context.Context, target peer.AddrInfo) (Stream, error)
}

// Stream is one open heartbeat stream. Write is called from one goroutine
// at a time, and so is Read; Write and Read may run concurrently. Reset and
// Close may be called from any goroutine, concurrently with Write, Read and
// WaitRemote, and both are idempotent.
//
// A caller learns what the remote sends, and how the stream ends, through
// EITHER Read (v2: the aggregator sends frames) OR WaitRemote (v1: the
// aggregator sends nothing), never both: WaitRemote discards whatever the
// remote sends, so bytes a concurrent or later Read would have returned are
// lost.
type Stream interface {
	// Protocol returns the protocol id negotiated for this stream: one of the
	// ids the Dialer offered (wire.ProtocolIDV2 or wire.ProtocolID).
	Protocol() protocol.ID
	// Write writes p (one whole heartbeat line or v2 frame). It blocks until p is
	// written, the transport's own write deadline passes (the error then
	// matches os.ErrDeadlineExceeded), or the stream is reset (the error then
	// matches network.ErrReset).
	Write(p []byte) (int, error)
	// WaitRemote blocks until the stream ends: it returns io.EOF when the
	// remote closed it in order (also after a local CloseWrite), an error
	// matching network.ErrReset when either side reset it, and nil after a
	// local Close. From its first call on, whatever the remote sends is
	// discarded. It may be called again, and from several goroutines.
	WaitRemote() error
	// Read reads bytes the remote sent, in order, as io.Reader does. It
	// blocks until at least one byte is there or the stream ends, and has no
	// deadline of its own: a caller that bounds the wait (the sender's ack
	// timer) resets the stream, which unblocks Read at once. Once every byte
	// is read it returns io.EOF when the remote closed (or half-closed) its
	// end in order, and an error matching ErrReset when either side reset
	// the stream (a local Reset included; a *network.StreamError in the
	// chain, when there is one, says which side). After a local Close it returns an error matching net.ErrClosed.
	// A local Reset or Close ends a parked Read at once and drops the bytes
	// not read yet; a local CloseWrite does not end reading.
	Read(p []byte) (int, error)
	// CloseWrite half-closes the stream: the remote reads what was written,
	// then EOF; later writes fail. The stream stays open for reading, so
	// Read and WaitRemote report the remote's own end (io.EOF once it closes
	// in turn). Follow it with Close or Reset. Idempotent; nil after Close or
	// Reset.
	CloseWrite() error
	// Reset aborts the stream in both directions. Use it on any error.
	Reset() error
	// Close ends the stream in order. Use it only on an orderly end.
	Close() error
}

// ErrDialFailed is matched (errors.Is) by every error Dial returns.
var ErrDialFailed = errors.New("heartbeat dial failed")

// DefaultProtocols returns the protocol ids a Dialer offers unless told
// otherwise, in preference order: v2 (wire.ProtocolIDV2), then v1
// (wire.ProtocolID), so that multistream-select picks v2 when the aggregator
// speaks it and v1 otherwise. It returns a fresh slice.
func DefaultProtocols() []protocol.ID {
	return []protocol.ID{wire.ProtocolIDV2, wire.ProtocolID}
}

// checkProtocols validates a Dialer's protocols setting: a non-empty list of
// known heartbeat protocol ids (wire.ProtocolIDV2, wire.ProtocolID), each at
// most once. The error names the setting.
func checkProtocols(ids []protocol.ID) error {
	if len(ids) == 0 {
		return errors.New("transport: protocols: empty list, want one or both of " +
			wire.ProtocolIDV2 + ", " + wire.ProtocolID)
	}
	for i, id := range ids {
		if id != wire.ProtocolIDV2 && id != wire.ProtocolID {
			return fmt.Errorf("transport: protocols: unknown protocol id %q, want %s or %s",
				id, wire.ProtocolIDV2, wire.ProtocolID)
		}
		for _, prev := range ids[:i] {
			if prev == id {
				return fmt.Errorf("transport: protocols: %q listed twice", id)
			}
		}
	}
	return nil
}

// ErrReset is matched by the errors of a reset stream. It is go-libp2p's
// network.ErrReset, so callers can match either.
var ErrReset = network.ErrReset
