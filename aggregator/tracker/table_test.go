package tracker

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite generated docs")

// TestDocsMatchTheTable fails when docs/node-states.md was not regenerated
// after a change to the table (run `go generate ./...` or this test with
// -update).
func TestDocsMatchTheTable(t *testing.T) {
	path := filepath.Join("..", "..", "docs", "node-states.md")
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(Markdown()), 0o644))
	}
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, Markdown(), string(got), "docs/node-states.md is stale: run go generate ./...")
	for i, tr := range Table() {
		require.Contains(t, string(got), fmt.Sprintf("| %d | %s | %s |", i, tr.From, tr.On))
	}
}

// Every state and event has a name, every (state, event) pair at most one
// row, every state a Forget row, and only Left and long-Down nodes are
// evicted.
func TestTable(t *testing.T) {
	seen := map[[2]uint8]bool{}
	for _, tr := range Table() {
		k := [2]uint8{uint8(tr.From), uint8(tr.On)}
		require.False(t, seen[k], "two rows for %v %v", tr.From, tr.On)
		seen[k] = true
		require.NotEmpty(t, tr.Why)
		require.NotContains(t, tr.On.String(), "Event(")
	}
	for _, s := range States() {
		to, ok := step(s, Forgotten)
		require.True(t, ok)
		require.Equal(t, Gone, to)
		_, ok = step(s, Evicted)
		require.Equal(t, s == Left || s == Down, ok, "%v evictable", s)
	}
	_, ok := step(Up, Heartbeat)
	require.False(t, ok, "Up -> Up on a heartbeat is no row: no change")
	_, ok = step(State(9), Heartbeat)
	require.False(t, ok)
	require.Equal(t, "Event(9)", Event(9).String())
	require.Equal(t, "long silence", LongSilence.String())
	require.Equal(t, "gone", Gone.String())
}
