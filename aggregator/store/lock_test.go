//go:build unix

package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// A second open of one data directory (a second aggregator on the same
// --data) is refused while the first holds it, naming the directory and the
// holder's pid, and leaves the first one's database alone; after Close the
// directory opens again. (A holder killed with SIGKILL releases it too:
// TestCrashKeepsCommittedFlips reopens the directory its killed child
// had open.)
func TestDataDirectoryLocked(t *testing.T) {
	dir := t.TempDir()
	first, err := OpenSQLite(context.Background(), dir)
	require.NoError(t, err)
	apply(t, first, Batch{Nodes: []Node{node(pid(1), aggA, "up", t0)}})

	_, err = OpenSQLite(context.Background(), dir)
	require.ErrorIs(t, err, ErrLocked)
	require.ErrorContains(t, err, dir)
	require.ErrorContains(t, err, fmt.Sprintf("pid %d", os.Getpid()))
	require.ErrorContains(t, err, filepath.Join(dir, LockFile))

	got, err := first.Node(context.Background(), pid(1))
	require.NoError(t, err, "the holder goes on")
	require.Equal(t, "up", got.State)
	require.NoError(t, first.Close())
	require.NoError(t, first.Close(), "Close stays idempotent")

	again, err := OpenSQLite(context.Background(), dir)
	require.NoError(t, err, "released by Close")
	got, err = again.Node(context.Background(), pid(1))
	require.NoError(t, err)
	require.Equal(t, "up", got.State)
	require.NoError(t, again.Close())
}
