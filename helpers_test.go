package heartbeat_test

import (
	"testing"

	"go.uber.org/goleak"
)

// noLeaks checks, after every other cleanup of t has run, that t left no
// goroutine behind.
func noLeaks(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
}
