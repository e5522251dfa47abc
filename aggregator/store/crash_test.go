package store

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const crashChildEnv = "HEARTBEAT_STORE_CRASH_CHILD"

// Each batch of the crash child: a flip for crashFlips nodes and a record
// and a sample for crashNodes nodes, one minute after the previous batch.
const (
	crashNodes = 1000
	crashFlips = 100
	crashAt    = 4 // the parent kills the child during this batch's flush
)

// crashChild is the child process of TestCrashKeepsCommittedFlips: it writes
// batches to the store in dir forever, printing "begin i" before each
// flush and "committed i" after it, until it is killed.
func crashChild(dir string) {
	ctx := context.Background()
	b, err := OpenSQLite(ctx, dir)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(3)
	}
	// Flushes only when asked: one flush is one "interval".
	w, err := NewWriter(b, WriterConfig{Aggregator: aggA, FlushInterval: time.Hour, BatchSize: 100000, QueueSize: 100000})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(3)
	}
	for i := 0; ; i++ {
		at := t0.Add(time.Duration(i) * time.Minute)
		for j := range crashNodes {
			w.Node(Node{Peer: pid(j), State: "up", Height: uint64(i), FirstSeen: t0, LastSeen: at, Updated: at})
		}
		for j := range crashFlips {
			w.Flip(Flip{Peer: pid(j), At: at.Add(time.Duration(j) * time.Millisecond), From: "up", To: "down", Reason: strconv.Itoa(i)})
		}
		fmt.Println("begin", i)
		if err := w.Flush(ctx); err != nil {
			fmt.Println("error", err)
			os.Exit(3)
		}
		fmt.Println("committed", i)
	}
}

// A process writing to the store is killed with SIGKILL while a batch is
// being written. On reopen the database opens cleanly, every committed
// batch is whole, and the batch in flight is all there or not at all: the
// loss is at most one flush interval, and never a committed flip.
func TestCrashKeepsCommittedFlips(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	committed := -1
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		require.False(t, strings.HasPrefix(line, "error"), line)
		if n, ok := strings.CutPrefix(line, "committed "); ok {
			committed, err = strconv.Atoi(n)
			require.NoError(t, err)
		}
		if line == fmt.Sprint("begin ", crashAt) {
			require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
			break
		}
	}
	err = cmd.Wait()
	require.Error(t, err)
	require.Contains(t, err.Error(), "killed")
	require.Equal(t, crashAt-1, committed)
	_, err = os.Stat(filepath.Join(dir, SQLiteFile+"-wal"))
	require.NoError(t, err, "the kill left a write-ahead log to recover")

	b, err := OpenSQLite(ctx, dir)
	require.NoError(t, err, "reopens after kill -9")
	defer b.Close()
	sb := b.(*sqlBackend)
	var check string
	require.NoError(t, sb.db.QueryRow("PRAGMA integrity_check").Scan(&check))
	require.Equal(t, "ok", check)

	count := func(q string, args ...any) int {
		var n int
		require.NoError(t, sb.db.QueryRow(q, args...).Scan(&n))
		return n
	}
	for i := 0; i <= committed; i++ {
		require.Equal(t, crashFlips, count("SELECT COUNT(*) FROM flips WHERE reason = ?", strconv.Itoa(i)), "flips of committed batch %d", i)
		require.Equal(t, crashNodes, count("SELECT COUNT(*) FROM samples WHERE at = ?", ms(t0.Add(time.Duration(i)*time.Minute))), "samples of committed batch %d", i)
	}
	inFlight := count("SELECT COUNT(*) FROM flips WHERE reason = ?", strconv.Itoa(crashAt))
	require.Contains(t, []int{0, crashFlips}, inFlight, "the batch in flight is atomic")
	samples := count("SELECT COUNT(*) FROM samples WHERE at = ?", ms(t0.Add(crashAt*time.Minute)))
	require.Equal(t, inFlight/crashFlips*crashNodes, samples, "flips and samples of a batch go together")
	require.Zero(t, count("SELECT COUNT(*) FROM flips WHERE reason = ?", strconv.Itoa(crashAt+1)))
	t.Logf("batch in flight at the kill: %s", map[bool]string{true: "committed", false: "lost (one flush interval)"}[inFlight > 0])

	// Node records reflect the last whole batch.
	n, err := b.Node(ctx, pid(0))
	require.NoError(t, err)
	require.Equal(t, uint64(committed+inFlight/crashFlips), n.Height)
	all, err := b.Nodes(ctx, NodeFilter{Aggregator: aggA})
	require.NoError(t, err)
	require.Len(t, all, crashNodes)
}
