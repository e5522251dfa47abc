// Package transport is what the heartbeat sender needs from the network: a
// Dialer that opens one heartbeat stream to an aggregator and the Stream it
// returns. Two implementations satisfy it, the real one over libp2p
// (NewLibp2p) and an in-memory one with fault injection for deterministic
// tests (memory.go); one conformance suite (conformance_test.go) holds both
// to the same behaviour, errors included.
package transport

import (
	"context"
	"errors"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Dialer opens heartbeat streams.
type Dialer interface {
	// Dial opens a heartbeat stream to target. It returns when the stream is
	// open, ctx is done, or the dial failed. Errors wrap ErrDialFailed (and
	// ctx.Err() when ctx ended the dial).
	Dial(ctx context.Context, target peer.AddrInfo) (Stream, error)
}

// Stream is one open heartbeat stream. Write is called from one goroutine
// at a time; Reset and Close may be called from any goroutine, concurrently
// with Write and WaitRemote, and both are idempotent.
type Stream interface {
	// Write writes p (one whole heartbeat line). It blocks until p is
	// written, the transport's own write deadline passes (the error then
	// matches os.ErrDeadlineExceeded), or the stream is reset (the error then
	// matches network.ErrReset).
	Write(p []byte) (int, error)
	// WaitRemote blocks until the stream ends: it returns io.EOF when the
	// remote closed it in order (also after a local CloseWrite), an error
	// matching network.ErrReset when either side reset it, and nil after a
	// local Close.
	WaitRemote() error
	// CloseWrite half-closes the stream: the remote reads what was written,
	// then EOF; later writes fail. The stream stays open for reading, so
	// WaitRemote reports the remote's own end (io.EOF once it closes in
	// turn). Follow it with Close or Reset. Idempotent; nil after Close or
	// Reset.
	CloseWrite() error
	// Reset aborts the stream in both directions. Use it on any error.
	Reset() error
	// Close ends the stream in order. Use it only on an orderly end.
	Close() error
}

// ErrDialFailed is matched (errors.Is) by every error Dial returns.
var ErrDialFailed = errors.New("heartbeat dial failed")

// ErrReset is matched by the errors of a reset stream. It is go-libp2p's
// network.ErrReset, so callers can match either.
var ErrReset = network.ErrReset
