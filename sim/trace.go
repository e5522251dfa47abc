package sim

import (
	"bufio"
	"io"
	"strconv"
	"time"

	"github.com/p2pbeat/heartbeat/fsm"
)

// FNV-64a parameters.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// TraceHash returns the FNV-64a hash of b, the hash Report.TraceHash gives
// for a trace whose bytes are b: `sim.TraceHash(file) == report.TraceHash`.
func TraceHash(b []byte) uint64 {
	h := uint64(fnvOffset)
	for _, c := range b {
		h ^= uint64(c)
		h *= fnvPrime
	}
	return h
}

// tracer builds trace lines in a reused buffer, hashes every line, and
// writes it if a writer was given. Lines start with the virtual time since
// the start in seconds (nine decimals) and a subject: a node id, "agg",
// "fault", "sample" or "sim".
type tracer struct {
	w     *bufio.Writer
	start int64
	buf   []byte
	hash  uint64
	lines uint64
	err   error
}

func (t *tracer) init(w io.Writer, start int64) {
	t.hash, t.start = fnvOffset, start
	t.buf = make([]byte, 0, 512)
	if w != nil {
		t.w = bufio.NewWriterSize(w, 64<<10)
	}
}

// begin starts a line at virtual time now (Unix ns).
func (t *tracer) begin(now int64, subject string) *tracer {
	d := now - t.start
	sec, ns := d/int64(time.Second), d%int64(time.Second)
	b := t.buf[:0]
	for w := digits(sec); w < 6; w++ {
		b = append(b, ' ')
	}
	b = strconv.AppendInt(b, sec, 10)
	b = append(b, '.')
	b = appendPadded(b, ns, 9)
	b = append(b, ' ')
	t.buf = append(b, subject...)
	return t
}

func digits(v int64) int {
	n := 1
	for v >= 10 {
		v /= 10
		n++
	}
	return n
}

func appendPadded(b []byte, v int64, width int) []byte {
	for w := digits(v); w < width; w++ {
		b = append(b, '0')
	}
	return strconv.AppendInt(b, v, 10)
}

func (t *tracer) str(s string) *tracer { t.buf = append(t.buf, s...); return t }

func (t *tracer) int(v int64) *tracer { t.buf = strconv.AppendInt(t.buf, v, 10); return t }

func (t *tracer) uint(v uint64) *tracer { t.buf = strconv.AppendUint(t.buf, v, 10); return t }

func (t *tracer) quote(s string) *tracer { t.buf = strconv.AppendQuote(t.buf, s); return t }

// dur appends d in seconds, trailing zeros trimmed ("9.84s", "0s"), which,
// unlike time.Duration.String, does not allocate.
func (t *tracer) dur(d time.Duration) *tracer {
	t.buf = appendSeconds(t.buf, d)
	return t
}

func appendSeconds(b []byte, d time.Duration) []byte {
	if d < 0 {
		b = append(b, '-')
		d = -d
	}
	sec, ns := int64(d/time.Second), int64(d%time.Second)
	b = strconv.AppendInt(b, sec, 10)
	if ns != 0 {
		w := 9
		for ns%10 == 0 {
			ns /= 10
			w--
		}
		b = append(b, '.')
		b = appendPadded(b, ns, w)
	}
	return append(b, 's')
}

// end finishes the line: hash it, write it.
func (t *tracer) end() {
	t.buf = append(t.buf, '\n')
	h := t.hash
	for _, c := range t.buf {
		h ^= uint64(c)
		h *= fnvPrime
	}
	t.hash = h
	t.lines++
	if t.w != nil && t.err == nil {
		_, t.err = t.w.Write(t.buf)
	}
}

func (t *tracer) finish() error {
	if t.w != nil && t.err == nil {
		t.err = t.w.Flush()
	}
	return t.err
}

var logKindNames = [...]string{"", "connect-failed", "connected", "write-failed", "remote-closed", "remote-reset", "beat-skipped",
	"ack-overdue", "protocol-error", "goaway", "beat-period"}

func logKindName(k fsm.LogKind) string {
	if int(k) < len(logKindNames) && k != 0 {
		return logKindNames[k]
	}
	return "log-" + strconv.Itoa(int(k))
}

// traceStep writes one line for a step: the event, the state change and
// the effects worth reading (dials, stream ends, retries, log lines; sends
// only when they are traced at all).
func (s *sim) traceStep(n *node, ev fsm.Event, effs []fsm.Effect) {
	t := s.tr.begin(s.now, string(n.id)).str(" ").str(ev.Kind.String())
	if ev.Attempt != 0 {
		t.str(" a=").uint(ev.Attempt)
	}
	for i := range effs {
		e := &effs[i]
		switch e.Kind {
		case fsm.Dial:
			t.str(" dial=").uint(e.Attempt)
		case fsm.CancelDial:
			t.str(" cancel-dial=").uint(e.Attempt)
		case fsm.ResetStream:
			t.str(" reset=").uint(e.Attempt)
		case fsm.CloseStream:
			t.str(" close=").uint(e.Attempt)
		case fsm.Send:
			t.str(" send=").uint(e.Attempt)
		case fsm.ArmTimer:
			if e.Timer == fsm.RetryTimer {
				t.str(" retry=+").dur(time.Duration(e.At.UnixNano() - s.now))
			}
		case fsm.Log:
			r := &e.Log
			t.str(" ").str(r.Level.String()).str(":").str(logKindName(r.Kind))
			if r.Kind == fsm.LogConnectFailed || r.Kind == fsm.LogConnected {
				t.str(" failures=").uint(r.Failures).str(" outage=").dur(r.Outage)
			}
			if r.Err != nil {
				t.str(" err=").quote(r.Err.Error())
			}
		case fsm.Transitioned:
			t.str(" ").str(e.From.String()).str(">").str(e.To.String())
		}
	}
	t.end()
}
