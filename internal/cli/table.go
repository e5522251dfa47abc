package cli

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/fsm"
)

// demoRow is one sender in the live table.
type demoRow struct {
	name      string
	state     fsm.State     // the sender's own state
	beats     uint64        // heartbeats it sent
	rtt       time.Duration // smoothed Beat-to-Ack round trip (v2); 0 when unknown
	tracked   bool          // the aggregator knows the node
	aggState  tracker.State // the aggregator's view
	height    uint64        // the height the aggregator last heard
	inDispute bool          // Up with another head than the consensus
	fork      bool          // on a fork on purpose
}

// liveTable shows the demo on a terminal: a table of the senders and the
// latest events, redrawn in place (ANSI cursor-up and erase-line).
type liveTable struct {
	mu     sync.Mutex
	w      io.Writer
	events []string // the latest, at most tableEvents
	drawn  int      // lines drawn last time, to move back over
	done   bool     // finished: events print as plain lines
}

const tableEvents = 8

func newLiveTable(w io.Writer) *liveTable { return &liveTable{w: w} }

// event takes a timeline line: shown under the table, or printed once the
// table is finished.
func (t *liveTable) event(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		fmt.Fprintln(t.w, line)
		return
	}
	t.events = append(t.events, line)
	if len(t.events) > tableEvents {
		t.events = t.events[len(t.events)-tableEvents:]
	}
}

// draw redraws the table over the previous drawing.
func (t *liveTable) draw(rows []demoRow, status string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return
	}
	var b bytes.Buffer
	if t.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", t.drawn) // back to the table's first line
	}
	lines := renderTable(rows, status, t.events)
	for _, l := range lines {
		b.WriteString("\x1b[2K") // erase the old line
		b.WriteString(l)
		b.WriteByte('\n')
	}
	t.drawn = len(lines)
	_, _ = t.w.Write(b.Bytes())
}

// finish draws the table a last time and leaves it on the screen.
func (t *liveTable) finish(rows []demoRow, status string) {
	t.draw(rows, status)
	t.mu.Lock()
	t.done = true
	t.mu.Unlock()
}

// rttText shows a round trip to 10 µs, "-" when unknown (0).
func rttText(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return d.Round(10 * time.Microsecond).String()
}

// renderTable lays out the table: a status line, one row per sender, the
// latest events. It always has the same number of lines, so a redraw
// covers the last one exactly.
func renderTable(rows []demoRow, status string, events []string) []string {
	out := []string{status, ""}
	out = append(out, fmt.Sprintf("%-8s %-12s %6s %9s   %-10s %9s  %s", "node", "sender", "beats", "RTT", "aggregator", "height", "head"))
	for _, r := range rows {
		rtt := rttText(r.rtt)
		agg, height, head := "-", "-", ""
		if r.tracked {
			agg = r.aggState.String()
			if r.height > 0 {
				height = fmt.Sprint(r.height)
			}
			if r.aggState == tracker.Up {
				head = "in consensus"
				if r.inDispute {
					head = "in dispute"
				}
			}
		}
		if r.fork {
			head = strings.TrimSpace(head + " (on a fork on purpose)")
		}
		out = append(out, fmt.Sprintf("%-8s %-12s %6d %9s   %-10s %9s  %s", r.name, r.state, r.beats, rtt, agg, height, head))
	}
	out = append(out, "", "latest events")
	for i := range tableEvents {
		if i < len(events) {
			out = append(out, events[i])
		} else {
			out = append(out, "")
		}
	}
	return out
}

// rows reads the senders and the aggregator's view of them.
func (d *demo) rows() []demoRow {
	var nodes map[string]tracker.Node
	var sum tracker.Summary
	if d.agg != nil {
		tr := d.agg.agg.Tracker()
		sum = tr.Summary()
		nodes = make(map[string]tracker.Node)
		for _, n := range tr.Nodes(nil) {
			nodes[n.Nickname] = n
		}
	}
	rows := make([]demoRow, 0, len(d.senders))
	for _, s := range d.senders {
		st := s.svc.Status()
		r := demoRow{name: s.name, beats: st.BeatsSent, fork: s.fork}
		if st.State == fsm.Beating {
			r.rtt = st.SmoothedRTT
		}
		s.mu.Lock()
		r.state = s.state
		s.mu.Unlock()
		if n, ok := nodes[s.name]; ok {
			r.tracked, r.aggState, r.height = true, n.State, n.Height
			r.inDispute = n.State == tracker.Up && n.Head != sum.ConsensusHead
		}
		rows = append(rows, r)
	}
	return rows
}

// status is the table's first line: the time and the aggregator's phase.
func (d *demo) status() string {
	now := time.Since(d.start)
	d.mu.Lock()
	restarted := d.restartedAt
	d.mu.Unlock()
	var phase string
	switch {
	case d.stoppedAt.IsZero():
		phase = fmt.Sprintf("aggregator up, stops at +%s", d.stopAt)
	case restarted.IsZero():
		phase = fmt.Sprintf("aggregator DOWN since +%.1fs, back at +%s", d.stoppedAt.Sub(d.start).Seconds(), d.stopAt+d.downtime)
	default:
		phase = fmt.Sprintf("aggregator up again since +%.1fs", restarted.Sub(d.start).Seconds())
	}
	return fmt.Sprintf("heartbeat demo  %+7.1fs  %s", now.Seconds(), phase)
}
