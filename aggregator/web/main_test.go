package web

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if any goroutine (the refresh loop, an event
// stream, a browser's) outlives the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
