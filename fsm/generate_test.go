package fsm

import (
	"testing"

	"github.com/p2pbeat/heartbeat/internal/gentest"
)

// TestStringersAreGenerated fails when state_string.go is not what the
// //go:generate stringer line in types.go writes: run go generate ./...
func TestStringersAreGenerated(t *testing.T) {
	gentest.Stringer(t, "types.go", "state_string.go")
}
