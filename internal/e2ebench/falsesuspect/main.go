// Command falsesuspect counts the aggregator's Suspect and Down
// transitions of nodes that kept beating: it joins the aggregator's log
// ("node state changed" lines, hclog text) with `heartbeat load --trace`
// files. A benchmark tool for docs/benchmarks.md, not a product feature.
//
//	falsesuspect -period 3s -trace load.trace [-trace …] agg1.err agg.err
//
// A transition of peer P to Suspect (or Down) at T, with the aggregator's
// last_seen L, is classified as:
//   - kept beating: the generator had P's stream open from before L to T
//     and wrote every beat on it within loadgen.LateFactor periods of the
//     previous one over [L, T] (no "late" line): the beats were sent, and the aggregator judged them
//     late. These are the false suspicions;
//   - sender late: P's stream was open, but the generator itself wrote a
//     beat late (a trace "late" gap overlapping [L, T]): its own scheduler
//     or timer delayed it, so the silence was real at the wire;
//   - not connected: P's stream was not open at T or was opened after L
//     (lost in a restart, still waiting to reconnect): a real silence.
//
// A node known before a restart (from=unknown) has no last_seen of its
// own since: its silence began with the restart, which closed its
// stream. It kept beating only if its new stream was open for two periods
// before T (two beats the aggregator had not read); otherwise it was still
// reconnecting, and counts as not connected.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

func main() {
	var traces multi
	flag.Var(&traces, "trace", "a `heartbeat load --trace` file (repeatable)")
	period := flag.Duration("period", 3*time.Second, "the senders' beat period (heartbeat load --period)")
	list := flag.Int("list", 5, "print this many false transitions")
	flag.Parse()
	if len(traces) == 0 || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: falsesuspect [-period D] -trace FILE [-trace FILE…] AGGREGATOR-LOG…")
		os.Exit(2)
	}
	tl := timelines{}
	for _, p := range traces {
		if err := readFile(p, tl.read); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	var changes []change
	for _, p := range flag.Args() {
		if err := readFile(p, func(r io.Reader) error {
			c, err := readChanges(r)
			changes = append(changes, c...)
			return err
		}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	var r report
	for _, c := range changes {
		r.add(c, tl.classify(c, *period))
	}
	r.print(os.Stdout, *list)
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func readFile(path string, f func(io.Reader) error) error {
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	if err := f(fh); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// event is one trace line.
type event struct {
	at   time.Time
	kind string        // up, lost, late
	gap  time.Duration // late only
}

// timelines are the trace events of each peer, in file order (time order
// per peer: one Service goroutine writes them).
type timelines map[string][]event

func (t timelines) read(r io.Reader) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 {
			continue
		}
		ms, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return fmt.Errorf("trace line %q: %w", sc.Text(), err)
		}
		e := event{at: time.UnixMilli(ms), kind: f[2]}
		if e.kind == "late" && len(f) > 3 {
			g, err := strconv.ParseInt(f[3], 10, 64)
			if err != nil {
				return fmt.Errorf("trace line %q: %w", sc.Text(), err)
			}
			e.gap = time.Duration(g) * time.Millisecond
		}
		t[f[1]] = append(t[f[1]], e)
	}
	return sc.Err()
}

// change is one aggregator transition to Suspect or Down.
type change struct {
	peer, from, to string
	at, lastSeen   time.Time
}

// readChanges reads the "node state changed" lines to suspect or down.
func readChanges(r io.Reader) ([]change, error) {
	var out []change
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, "node state changed") {
			continue
		}
		kv := fields(l)
		if kv["to"] != "suspect" && kv["to"] != "down" {
			continue
		}
		c := change{peer: kv["peer_id"], from: kv["from"], to: kv["to"]}
		var err error
		if c.at, err = time.Parse(time.RFC3339Nano, kv["at"]); err != nil {
			return nil, fmt.Errorf("line %q: at: %w", l, err)
		}
		if s := kv["last_seen"]; s != "" {
			if c.lastSeen, err = time.Parse(time.RFC3339Nano, s); err != nil {
				return nil, fmt.Errorf("line %q: last_seen: %w", l, err)
			}
		}
		out = append(out, c)
	}
	return out, sc.Err()
}

// fields reads hclog's key=value pairs (values without spaces here).
func fields(l string) map[string]string {
	kv := map[string]string{}
	for _, f := range strings.Fields(l) {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		}
	}
	return kv
}

const (
	keptBeating  = "kept beating"
	senderLate   = "sender late"
	notConnected = "not connected"
)

// classify says why c's peer was silent (see the package comment).
func (t timelines) classify(c change, period time.Duration) string {
	// The log's last_seen is read after the transition: a beat may have
	// come in between, and then the silence ended at T.
	from := c.lastSeen
	if from.IsZero() || from.After(c.at) || c.from == "unknown" {
		from = c.at
	}
	if c.from == "unknown" {
		from = c.at.Add(-2 * period)
	}
	// The stream open at c.at: the last up at or before it, with no lost
	// between.
	var upAt time.Time
	open := false
	for _, e := range t[c.peer] {
		if e.at.After(c.at) {
			break
		}
		switch e.kind {
		case "up":
			open, upAt = true, e.at
		case "lost":
			open = false
		}
	}
	if !open || upAt.After(from) {
		return notConnected
	}
	for _, e := range t[c.peer] {
		if e.kind == "late" && !e.at.Before(from) && !e.at.Add(-e.gap).After(c.at) {
			return senderLate
		}
	}
	// Open since before from, and no beat later than LateFactor periods
	// over [from, at]: whatever the silence's length, the sender kept its
	// pace, and the threshold or the reading was the aggregator's.
	return keptBeating
}

// report counts transitions by (to, class).
type report struct {
	n     map[string]int
	false []change
}

func (r *report) add(c change, class string) {
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[c.to+"/"+class]++
	r.n[c.to]++
	if class == keptBeating {
		r.false = append(r.false, c)
	}
}

func (r *report) print(w io.Writer, list int) {
	for _, to := range []string{"suspect", "down"} {
		fmt.Fprintf(w, "%s=%d kept_beating=%d sender_late=%d not_connected=%d\n", to, r.n[to],
			r.n[to+"/"+keptBeating], r.n[to+"/"+senderLate], r.n[to+"/"+notConnected])
	}
	sort.Slice(r.false, func(i, j int) bool { return r.false[i].at.Before(r.false[j].at) })
	for i, c := range r.false {
		if i == list {
			break
		}
		silent := "-"
		if !c.lastSeen.IsZero() {
			silent = c.at.Sub(c.lastSeen).Round(time.Millisecond).String()
		}
		fmt.Fprintf(w, "false %s %s->%s at=%s silent=%s\n", c.peer, c.from, c.to, c.at.Format("15:04:05.000"), silent)
	}
}
