package cli

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/fsm"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

// A sender retrying during an outage: the first failed attempt is shown,
// the next ones fold into the line of the attempt that succeeds.
func TestTimelineFoldsFailedRetries(t *testing.T) {
	var lines []string
	tl := newTimeline(t0, func(l string) { lines = append(lines, l) })
	tl.transition(at(0.1), "node-1", fsm.Disconnected, fsm.Connecting)
	tl.transition(at(0.12), "node-1", fsm.Connecting, fsm.Beating)
	tl.transition(at(10.03), "node-1", fsm.Beating, fsm.Backoff)
	for i, s := range []float64{12, 14, 16, 18} {
		tl.transition(at(s), "node-1", fsm.Backoff, fsm.Connecting)
		tl.transition(at(s+0.01*float64(i+1)), "node-1", fsm.Connecting, fsm.Backoff)
	}
	tl.transition(at(20), "node-1", fsm.Backoff, fsm.Connecting)
	tl.transition(at(20.07), "node-1", fsm.Connecting, fsm.Beating)
	// A second outage starts afresh: its first failure is shown again.
	tl.transition(at(30), "node-1", fsm.Beating, fsm.Backoff)
	tl.transition(at(32), "node-1", fsm.Backoff, fsm.Connecting)
	tl.transition(at(32.5), "node-1", fsm.Connecting, fsm.Backoff)
	tl.transition(at(34), "node-1", fsm.Backoff, fsm.Connecting)
	tl.transition(at(34.5), "node-1", fsm.Connecting, fsm.Backoff)
	tl.transition(at(40), "node-1", fsm.Backoff, fsm.Stopped)
	require.Equal(t, []string{
		"   +0.1s  node-1           Disconnected -> Connecting -> Beating",
		"  +10.0s  node-1           Beating -> Backoff",
		"  +12.0s  node-1           Backoff -> Connecting -> Backoff",
		"  +20.1s  node-1           Backoff -> Connecting -> Beating  (after 3 more failed attempts, +14.0s to +18.0s)",
		"  +30.0s  node-1           Beating -> Backoff",
		"  +32.5s  node-1           Backoff -> Connecting -> Backoff",
		"  +40.0s  node-1           Backoff -> Stopped  (after 1 more failed attempt, at +34.5s)",
	}, lines)
}

// Log lines in the demo are short: the error's end, short peer ids, the
// outage in seconds.
func TestTimelineLogLinesAreShort(t *testing.T) {
	var lines []string
	tl := newTimeline(t0, func(l string) { lines = append(lines, l) })
	w := logWriter{t: tl, who: "node-2"}
	long := `dial 12D3KooWQ39UFGXGjtLfpgAXdmgXmQZYs12rp9XGj2Ftw8g8rL9N: heartbeat dial failed: failed to dial: failed to dial 12D3KooWQ39UFGXGjtLfpgAXdmgXmQZYs12rp9XGj2Ftw8g8rL9N: all dials failed * [/ip4/127.0.0.1/tcp/45465] dial tcp4 127.0.0.1:0->127.0.0.1:45465: connect: connection refused`
	_, err := fmt.Fprintf(w, `{"@level":"warn","@message":"Heartbeat service failed to connect","@timestamp":"2026-11-30T12:00:04.812345Z","nickname":"node-2","peer_id":"12D3KooWFJmMMVDUaCdfP8YMu4H4hgWj1JP8r6kiq7HvXbGrVyr3","target":"12D3KooWQ39UFGXGjtLfpgAXdmgXmQZYs12rp9XGj2Ftw8g8rL9N","attempt":3,"outage":0,"failures":1,"error":%q}`+"\n", long)
	require.NoError(t, err)
	require.Equal(t, []string{
		`   +4.8s  node-2     WARN  Heartbeat service failed to connect outage=0.0s failures=1 error="…: connect: connection refused"`,
	}, lines)
	require.Equal(t, "…: stream reset by remote, error code: 0",
		shortError("heartbeat stream to 12D3KooWQ39UFGXGjtLfpgAXdmgXmQZYs12rp9XGj2Ftw8g8rL9N: stream reset (remote): code: 0x0: transport error: stream reset by remote, error code: 0"))
	require.Equal(t, "dial 12D3KooWQ39U…: refused", shortError("dial 12D3KooWQ39UFGXGjtLfpgAXdmgXmQZYs12rp9XGj2Ftw8g8rL9N: refused"))
}

// On a terminal the demo is a table redrawn in place: every redraw moves
// the cursor back over the previous one and erases each line.
func TestLiveTableRedrawsInPlace(t *testing.T) {
	var buf bytes.Buffer
	lt := newLiveTable(&buf)
	rows := []demoRow{
		{name: "node-1", state: fsm.Beating, beats: 12, rtt: 412 * time.Microsecond, tracked: true, aggState: tracker.Up, height: 6591704},
		{name: "node-5", state: fsm.Beating, beats: 12, tracked: true, aggState: tracker.Up, height: 6591704, inDispute: true, fork: true},
	}
	lt.event("   +0.1s  demo       first event")
	lt.draw(rows, "heartbeat demo     +1.0s  aggregator up, stops at +10s")
	first := buf.String()
	n := strings.Count(first, "\n")
	require.Equal(t, 3+len(rows)+2+tableEvents, n, "status, blank, header, rows, blank, title, the events")
	require.NotRegexp(t, `\x1b\[\d+A`, first, "the first drawing moves nowhere")
	require.Equal(t, n, strings.Count(first, "\x1b[2K"), "every line erased before it is written")
	require.Contains(t, first, "node-1   Beating          12     410µs   up           6591704  in consensus")
	require.Contains(t, first, "node-5   Beating          12         -   up           6591704  in dispute (on a fork on purpose)")
	require.Contains(t, first, "first event")

	buf.Reset()
	rows[0].state, rows[0].tracked = fsm.Backoff, false
	lt.event("   +2.0s  demo       stopping the aggregator")
	lt.draw(rows, "heartbeat demo     +2.0s  aggregator DOWN since +2.0s, back at +5s")
	second := buf.String()
	require.True(t, strings.HasPrefix(second, fmt.Sprintf("\x1b[%dA", n)), "back over the %d lines drawn: %q", n, second[:10])
	require.Equal(t, n, strings.Count(second, "\n"), "same height: the redraw covers the old table exactly")
	require.Contains(t, second, "node-1   Backoff          12     410µs   -                  -")
	require.Contains(t, second, "stopping the aggregator")

	// Finished: the table stays, later events print as lines.
	lt.finish(rows, "heartbeat demo     +3.0s")
	buf.Reset()
	lt.event("   +3.1s  node-1           Backoff -> Stopped")
	require.Equal(t, "   +3.1s  node-1           Backoff -> Stopped\n", buf.String())
}

// Only a terminal gets the table: not a buffer, a pipe or /dev/null.
func TestTableOnlyOnATerminal(t *testing.T) {
	require.False(t, isTerminal(&bytes.Buffer{}))
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	require.False(t, isTerminal(w))
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer null.Close()
	require.False(t, isTerminal(null))
}

// The report gives the times measured at the events, to the millisecond,
// and an interrupted run says how far it got.
func TestDemoReport(t *testing.T) {
	newReport := func(f func(d *demo)) string {
		var buf bytes.Buffer
		d := newDemo(&buf, t0, false)
		d.duration, d.stopAt, d.downtime = 40*time.Second, 10*time.Second, 15*time.Second
		f(d)
		d.report()
		return buf.String()
	}
	full := newReport(func(d *demo) {
		d.stoppedAt, d.restartedAt, d.endedAt = at(10.123), at(25.129), at(40.2)
		d.sendersBackAt, d.nodesUpAt = at(27.246), at(27.3571)
	})
	require.Contains(t, full, "  run                     40.2s\n")
	require.Contains(t, full, "  aggregator down         15.006s (+10.12s to +25.13s)\n")
	require.Contains(t, full, "  all senders beating     2.117s after the restart\n")
	require.Contains(t, full, "  all nodes up            2.228s after the restart (aggregator's view)\n")

	before := newReport(func(d *demo) { d.interrupted, d.endedAt = true, at(5.04) })
	require.Contains(t, before, "  run                     interrupted at +5s\n")
	require.Contains(t, before, "not tested: interrupted before the aggregator stop due at +10s")
	require.NotContains(t, before, "not restarted")

	down := newReport(func(d *demo) { d.interrupted, d.stoppedAt, d.endedAt = true, at(10.1), at(12) })
	require.Contains(t, down, "not tested: interrupted while the aggregator was down (stopped at +10.1s, restart due at +25.1s)")

	after := newReport(func(d *demo) {
		d.interrupted, d.stoppedAt, d.restartedAt, d.endedAt = true, at(10), at(25), at(26)
		d.sendersBackAt = at(25.9)
	})
	require.Contains(t, after, "  all senders beating     900ms after the restart\n")
	require.Contains(t, after, "  all nodes up            not yet when the run was interrupted (aggregator's view)\n")
}

// Ctrl-C early in the demo (shown as the live table): a clean exit 0, the
// shutdown lines, then a report that says the recovery was not tested.
func TestDemoInterruptedBeforeTheStop(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuffer
	done := make(chan int)
	// As on a terminal: the live table, with pings for the RTT column.
	go func() { done <- Main(ctx, []string{"demo", "--duration", "40s", "--output", "table"}, &out, &errb) }()
	out.waitFor(t, "nodes 5: up 5")
	out.waitFor(t, "node-5   Beating ") // a table row
	cancel()
	require.Equal(t, 0, <-done, errb.String())
	text := out.String()
	require.Contains(t, text, "\x1b[2K")
	require.Contains(t, text, "latest events")
	require.Contains(t, text, "  run                     interrupted at +")
	require.Contains(t, text, "not tested: interrupted before the aggregator stop due at +10s")
	require.NotContains(t, text, "not restarted")
	require.Equal(t, demoNodes, strings.Count(text, " to=left\n"), "the stopped senders turn Left")
	requireReportLast(t, text)
}

// Ctrl-C while the aggregator is down.
func TestDemoInterruptedWhileDown(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuffer
	done := make(chan int)
	go func() { done <- Main(ctx, []string{"demo", "--duration", "8s"}, &out, &errb) }()
	out.waitFor(t, "stopping the aggregator")
	cancel()
	require.Equal(t, 0, <-done, errb.String())
	text := out.String()
	require.Contains(t, text, "not tested: interrupted while the aggregator was down")
	requireReportLast(t, text)
}

// requireReportLast checks that the report comes once, after every
// shutdown line.
func requireReportLast(t *testing.T, text string) {
	t.Helper()
	require.Equal(t, 1, strings.Count(text, "\nreport\n"), text)
	report := strings.Index(text, "\nreport\n")
	require.Greater(t, report, strings.LastIndex(text, "-> Stopped"), "the report follows the senders' shutdown:\n%s", text)
	require.Greater(t, report, strings.LastIndex(text, "INFO  aggregator stopped"), "the report follows the aggregator's shutdown:\n%s", text)
}

// The demo's ports come from below the kernel's ephemeral range, so that
// no outgoing connection takes one while the aggregator is down, and are
// free when picked.
func TestRestartablePort(t *testing.T) {
	for range 20 {
		port, err := restartablePort("127.0.0.1")
		require.NoError(t, err)
		require.GreaterOrEqual(t, port, demoPortLow)
		require.LessOrEqual(t, port, demoPortHigh)
		require.Less(t, port, 32768, "Linux's first ephemeral port")
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		require.NoError(t, err)
		require.NoError(t, ln.Close())
	}
}
