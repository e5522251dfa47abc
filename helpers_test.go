package heartbeat_test

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/p2pbeat/heartbeat/transport"
)

// noLeaks checks, after every other cleanup of t has run, that t left no
// goroutine behind.
func noLeaks(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
}

var errBoom = errors.New("boom")

func (h *harness) lines(level string) []logLine {
	var out []logLine
	for _, l := range h.sink.lines(h.t) {
		if l.Level == level {
			out = append(out, l)
		}
	}
	return out
}

// requireReset asserts that the sender reset s: reading it fails with ErrReset.
func requireReset(t *testing.T, s *transport.ServerStream) {
	t.Helper()
	_, err := io.Copy(io.Discard, s)
	require.ErrorIs(t, err, transport.ErrReset)
}

// requireOrderlyEnd asserts that the sender closed s in order: it reads to EOF.
func requireOrderlyEnd(t *testing.T, h *harness, s *transport.ServerStream) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, s)
		done <- err
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(guard):
		t.Fatal("the stream never ended")
	}
}
