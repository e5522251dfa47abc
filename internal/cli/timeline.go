package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/p2pbeat/heartbeat/fsm"
)

// timeline turns the demo's events into lines stamped with the time since
// the start, at the time each event happened (not when a poll noticed it).
// A sender's failed retries during an outage fold into one line: the first
// failed attempt is shown in full, the next ones are counted and printed
// as one line when the sender leaves the retry loop.
type timeline struct {
	mu      sync.Mutex
	start   time.Time
	emit    func(line string) // gets every line, without its newline
	senders map[string]*senderLines
}

// senderLines is what the timeline holds back for one sender.
type senderLines struct {
	held        bool      // a "… -> Connecting" not printed yet
	heldFrom    fsm.State // its from state
	failedOnce  bool      // the outage's first failed retry was printed
	retries     int       // failed retries since, not printed yet
	first, last time.Duration
}

func newTimeline(start time.Time, emit func(string)) *timeline {
	return &timeline{start: start, emit: emit, senders: make(map[string]*senderLines)}
}

func (t *timeline) since(at time.Time) time.Duration { return at.Sub(t.start) }

// line prints text by who at time at.
func (t *timeline) line(at time.Time, who, text string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lineLocked(t.since(at), who, text)
}

func (t *timeline) lineLocked(at time.Duration, who, text string) {
	t.emit(fmt.Sprintf("%+7.1fs  %-10s %s", at.Seconds(), who, text))
}

// transition records a sender's state change at time at.
func (t *timeline) transition(at time.Time, who string, from, to fsm.State) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.senders[who]
	if s == nil {
		s = &senderLines{}
		t.senders[who] = s
	}
	d := t.since(at)
	switch {
	case to == fsm.Connecting:
		// Printed with the attempt's outcome, on one line.
		s.held, s.heldFrom = true, from
		return
	case s.held && from == fsm.Connecting:
		s.held = false
		if s.heldFrom == fsm.Backoff && to == fsm.Backoff && s.failedOnce {
			if s.retries == 0 {
				s.first = d
			}
			s.retries++
			s.last = d
			return
		}
		t.lineLocked(d, who, fmt.Sprintf("      %s -> Connecting -> %s%s", s.heldFrom, to, s.takeRetries()))
		if to == fsm.Backoff {
			s.failedOnce = true
		}
	default:
		t.lineLocked(d, who, fmt.Sprintf("      %s -> %s%s", from, to, s.takeRetries()))
	}
	if to == fsm.Beating || to == fsm.Stopped {
		s.failedOnce = false
	}
}

// takeRetries returns the note on the failed retries held back, and
// clears them.
func (s *senderLines) takeRetries() string {
	n := s.retries
	s.retries = 0
	switch {
	case n == 1:
		return fmt.Sprintf("  (after 1 more failed attempt, at +%.1fs)", s.first.Seconds())
	case n > 1:
		return fmt.Sprintf("  (after %d more failed attempts, +%.1fs to +%.1fs)", n, s.first.Seconds(), s.last.Seconds())
	}
	return ""
}

// flush prints the failed retries still held back, at the end of a run.
func (t *timeline) flush() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for who, s := range t.senders {
		if s.retries > 0 {
			t.lineLocked(s.last, who, "      still retrying"+s.takeRetries())
		}
	}
}

// logWriter turns hclog JSON lines into timeline lines: the level, the
// message and the fields a reader of the demo needs, short. seen, if set,
// gets every decoded line first.
type logWriter struct {
	t    *timeline
	who  string
	seen func(at time.Time, m map[string]any)
}

// timelineKeys are the fields shown, in order. nickname names the node on
// the aggregator's lines; a sender's own lines are already labelled.
var timelineKeys = []string{"nickname", "from", "to", "cause", "outage", "failures", "error"}

func (l logWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte("\n")) {
		at := time.Now()
		var m map[string]any
		if json.Unmarshal(line, &m) != nil {
			l.t.line(at, l.who, string(line))
			continue
		}
		if ts, ok := m["@timestamp"].(string); ok {
			if parsed, err := time.Parse(time.RFC3339Nano, ts); err == nil {
				at = parsed
			}
		}
		if l.seen != nil {
			l.seen(at, m)
		}
		l.t.line(at, l.who, formatLog(l.who, m))
	}
	return len(p), nil
}

func formatLog(who string, m map[string]any) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-5s %s", strings.ToUpper(fmt.Sprint(m["@level"])), oneLine(m["@message"]))
	for _, k := range timelineKeys {
		v, ok := m[k]
		if !ok || (k == "nickname" && v == who) {
			continue
		}
		switch k {
		case "outage":
			if f, ok := v.(float64); ok {
				fmt.Fprintf(&b, " outage=%.1fs", f)
				continue
			}
		case "error":
			fmt.Fprintf(&b, " error=%q", shortError(fmt.Sprint(v)))
			continue
		}
		fmt.Fprintf(&b, " %s=%s", k, oneLine(v))
	}
	return b.String()
}

// oneLine flattens a value to one line.
func oneLine(v any) string { return strings.Join(strings.Fields(fmt.Sprint(v)), " ") }

var peerIDRE = regexp.MustCompile(`\b(12D3KooW|Qm)[1-9A-HJ-NP-Za-km-z]{20,}`)

// shortError keeps the end of an error chain, which says what happened
// ("connect: connection refused"), and shortens peer ids: libp2p's dial
// errors name the peer three times and run past 300 characters.
func shortError(s string) string {
	s = peerIDRE.ReplaceAllStringFunc(oneLine(s), func(id string) string { return id[:12] + "…" })
	parts := strings.Split(s, ": ")
	if len(parts) > 2 {
		s = "…: " + strings.Join(parts[len(parts)-2:], ": ")
	}
	if r := []rune(s); len(r) > 90 {
		s = string(r[:89]) + "…"
	}
	return s
}
