package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// timeline prints one line per event, stamped with the time since start.
type timeline struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func (t *timeline) printf(who, format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.w, "%+7.1fs  %-10s %s\n", time.Since(t.start).Seconds(), who, fmt.Sprintf(format, args...))
}

// block writes several lines at once, without lines of other goroutines in between.
func (t *timeline) block(f func(w io.Writer)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f(t.w)
}

// logWriter turns hclog JSON lines into timeline lines, keeping the level,
// the message and the fields a reader of the demo cares about.
type logWriter struct {
	t   *timeline
	who string
}

var timelineKeys = []string{"nickname", "from", "to", "outage", "failures", "error"}

func (l logWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(line, &m) != nil {
			l.t.printf(l.who, "%s", line)
			continue
		}
		var b strings.Builder
		msg := oneLine(m["@message"])
		fmt.Fprintf(&b, "%-5s %s", strings.ToUpper(fmt.Sprint(m["@level"])), msg)
		for _, k := range timelineKeys {
			v, ok := m[k]
			if !ok || (k == "error" && strings.Contains(msg, oneLine(v))) {
				continue // the legacy connect-failure text already carries the error
			}
			fmt.Fprintf(&b, " %s=%s", k, oneLine(v))
		}
		l.t.printf(l.who, "%s", b.String())
	}
	return len(p), nil
}

// oneLine flattens a value to one line: libp2p's dial errors list one
// address per line.
func oneLine(v any) string { return strings.Join(strings.Fields(fmt.Sprint(v)), " ") }
