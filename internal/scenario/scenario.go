// Package scenario runs the sender's scenarios, each written once as a
// text file in fsm/testdata/scenarios, against two drivers: the pure
// fsm.Machine in virtual time (package fsm's tests) and the Service on the
// memory transport and a mock clock (package heartbeat's tests). The files
// are github.com/cockroachdb/datadriven scripts, as etcd-io/raft's
// interaction tests are: a command, then "----", then its expected output.
// A failing scenario prints a text diff. To rewrite the expected output
// after an intended change, run one driver with -rewrite, then both without:
//
//	go test ./fsm -run TestScenarios -rewrite && go test . ./fsm -run TestScenarios
//
// # Commands
//
//	config dial-timeout=D write-timeout=D beat-period=D
//	                        the sender's timeouts and period (before anything else)
//	run                     start the sender (Step Start, or Service.Run)
//	aggregator up|down [v2] [acks=auto|manual|never] [hung] [period=D] [skew=D]
//	                        the aggregator listens, or not (dials are refused);
//	                        v2: it speaks protocol v2 (else v1 only): it
//	                        answers the Hello with a Welcome asking for period
//	                        (default none) and acks every Beat at once (auto),
//	                        on the ack command (manual) or never; hung: it
//	                        accepts streams and never reads nor answers; skew:
//	                        its clock is that far ahead. Given while up, it
//	                        changes how the aggregator answers from then on,
//	                        keeping the open stream.
//	ack [seq=N]             the aggregator acks every Beat it read and has not
//	                        acked yet, stamped when it read them; or sends an
//	                        Ack for seq N
//	pass D                  virtual time passes D (before the next deadline)
//	faults hang-dials|stall-writes|write-error=TEXT|none
//	                        replace the network's faults toward the aggregator
//	advance                 move virtual time to the next deadline ("now +T")
//	advance-until D         advance while the next deadline is before +D
//	remote reset|close|bad-frame|goaway [retry-after=D] [reason=TEXT]
//	                        the aggregator resets or closes the open stream,
//	                        sends a frame the protocol forbids (a Hello), or a
//	                        GoAway (then closes the stream)
//	close                   stop the sender (Step Stop, or Service.Close)
//	status                  the sender's state, attempt, beats, failures,
//	                        next retry, last error, and how many dials and
//	                        writes are parked by a fault
//	summary                 per effect kind and log level: how many, and when
//
// Every command's output lists the effects carried out meanwhile, one per
// line with its virtual time since the start, except ArmTimer and
// CancelTimer (the times of what they schedule are in the output anyway).
// Errors are shown as their innermost cause ("connection refused"), which is
// what the two drivers share: the Service's transport wraps it with the peer
// id, and its driver checks the full log lines separately.
package scenario

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/p2pbeat/heartbeat/fsm"
)

// Faults are the network faults toward the aggregator (see transport.Faults).
type Faults struct {
	HangDials   bool
	StallWrites bool
	WriteErr    error
}

// Status is what the status command prints.
type Status struct {
	State                    fsm.State
	Attempt, Beats, Failures uint64
	NextRetry                time.Duration // since the start
	RetryArmed               bool
	LastError                error
	// Parked counts the dials and writes blocked by a fault.
	Parked int
	// v2, shown once a v2 stream opened: the protocol of the last stream,
	// the last Beat seq, the Acks taken in, the period beaten at, and the
	// RTT (last, smoothed) and skew once measured.
	Protocol        fsm.Protocol
	Seq, Acks       uint64
	BeatPeriod      time.Duration
	RTT, SRTT, Skew time.Duration
	HasRTT          bool
}

// Config is the sender's configuration a scenario may set.
type Config struct {
	DialTimeout, WriteTimeout, BeatPeriod time.Duration
}

// AckMode is when a v2 aggregator acknowledges Beats.
type AckMode uint8

// The ack modes.
const (
	AcksAuto   AckMode = iota // each Beat as it is read
	AcksManual                // on the ack command
	AcksNever                 // never
)

// Aggregator is how the aggregator behaves.
type Aggregator struct {
	Up, V2 bool
	Acks   AckMode
	// Hung: it accepts streams and never reads nor answers (v2).
	Hung bool
	// Period is the beat period its Welcome asks for (0: none).
	Period time.Duration
	// Skew is how far its clock is ahead of the sender's.
	Skew time.Duration
}

// Driver carries out the commands on one sender. Every method returns once
// the sender is quiescent: every result it can get without time moving has
// been handled. Effects are reported to the Recorder the driver was made with.
type Driver interface {
	// Configure sets the timeouts and period; it comes before any other command.
	Configure(Config)
	Run()
	// Aggregator starts or stops the aggregator, or, when it stays up,
	// changes how it answers.
	Aggregator(Aggregator)
	Faults(Faults)
	// Ack acks every Beat read and not yet acked (seq 0), or sends Ack seq.
	Ack(seq uint64)
	// Pass moves virtual time by d; no deadline falls within it.
	Pass(d time.Duration)
	// Advance moves to the next deadline; false if none is armed.
	Advance() bool
	// NextDeadline is the next armed deadline, since the start.
	NextDeadline() (time.Duration, bool)
	// Now is the virtual time since the start.
	Now() time.Duration
	RemoteEnd(reset bool)
	// GoAway sends a GoAway on the open stream, then closes it.
	GoAway(retryAfter time.Duration, reason string)
	// BadFrame sends a frame the protocol forbids on the open stream.
	BadFrame()
	Close()
	Status() Status
}

// Dir is the directory of the scenario files.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "fsm", "testdata", "scenarios")
}

// RunAll runs every scenario file in Dir as a subtest, each on a fresh
// driver from newDriver.
func RunAll(t *testing.T, newDriver func(t *testing.T, rec *Recorder) Driver) {
	datadriven.Walk(t, Dir(), func(t *testing.T, path string) {
		rec := &Recorder{}
		d := newDriver(t, rec)
		datadriven.RunTest(t, path, func(t *testing.T, td *datadriven.TestData) string {
			return execute(t, td, d, rec)
		})
	})
}

func execute(t *testing.T, td *datadriven.TestData, d Driver, rec *Recorder) string {
	var head string
	switch td.Cmd {
	case "config":
		c := Config{DialTimeout: fsm.DefaultDialTimeout, WriteTimeout: fsm.DefaultWriteTimeout, BeatPeriod: fsm.DefaultBeatPeriod}
		td.MaybeScanArgs(t, "dial-timeout", &c.DialTimeout)
		td.MaybeScanArgs(t, "write-timeout", &c.WriteTimeout)
		td.MaybeScanArgs(t, "beat-period", &c.BeatPeriod)
		d.Configure(c)
	case "run":
		d.Run()
	case "aggregator":
		d.Aggregator(aggregator(t, td))
	case "ack":
		var seq uint64
		td.MaybeScanArgs(t, "seq", &seq)
		d.Ack(seq)
	case "pass":
		dur := duration(t, td)
		if at, ok := d.NextDeadline(); ok && at <= d.Now()+dur {
			td.Fatalf(t, "pass %s crosses the deadline at %s: advance first", dur, since(at))
		}
		d.Pass(dur)
	case "faults":
		var f Faults
		for _, a := range td.CmdArgs {
			switch a.Key {
			case "hang-dials":
				f.HangDials = true
			case "stall-writes":
				f.StallWrites = true
			case "write-error":
				f.WriteErr = errors.New(a.SingleVal(t))
			case "none":
			default:
				td.Fatalf(t, "unknown fault %q", a.Key)
			}
		}
		d.Faults(f)
	case "advance":
		if !d.Advance() {
			td.Fatalf(t, "no deadline armed")
		}
		head = fmt.Sprintf("now %s\n", since(d.Now()))
	case "advance-until":
		end := duration(t, td)
		for {
			at, ok := d.NextDeadline()
			if !ok || at >= end {
				break
			}
			d.Advance()
		}
	case "remote":
		if len(td.CmdArgs) == 0 {
			td.Fatalf(t, "remote wants reset, close, bad-frame or goaway")
		}
		switch td.CmdArgs[0].Key {
		case "goaway":
			var after time.Duration
			reason := "busy"
			td.MaybeScanArgs(t, "retry-after", &after)
			td.MaybeScanArgs(t, "reason", &reason)
			d.GoAway(after, reason)
		case "bad-frame":
			d.BadFrame()
		default:
			d.RemoteEnd(onlyArg(t, td, "reset", "close") == "reset")
		}
	case "close":
		d.Close()
	case "status":
		return rec.Flush() + d.Status().String()
	case "summary":
		return rec.Flush() + rec.Summary()
	default:
		td.Fatalf(t, "unknown command %q", td.Cmd)
	}
	return head + rec.Flush()
}

// aggregator parses the aggregator command.
func aggregator(t *testing.T, td *datadriven.TestData) Aggregator {
	if len(td.CmdArgs) == 0 {
		td.Fatalf(t, "aggregator wants up or down")
	}
	var a Aggregator
	for i, arg := range td.CmdArgs {
		switch {
		case i == 0 && (arg.Key == "up" || arg.Key == "down"):
			a.Up = arg.Key == "up"
		case arg.Key == "v2":
			a.V2 = true
		case arg.Key == "hung":
			a.Hung = true
		case arg.Key == "acks":
			switch arg.SingleVal(t) {
			case "auto":
				a.Acks = AcksAuto
			case "manual":
				a.Acks = AcksManual
			case "never":
				a.Acks = AcksNever
			default:
				td.Fatalf(t, "acks wants auto, manual or never")
			}
		case arg.Key == "period":
			a.Period = durationArg(t, td, arg)
		case arg.Key == "skew":
			a.Skew = durationArg(t, td, arg)
		default:
			td.Fatalf(t, "unknown aggregator argument %q", arg.Key)
		}
	}
	return a
}

func durationArg(t *testing.T, td *datadriven.TestData, arg datadriven.CmdArg) time.Duration {
	d, err := time.ParseDuration(arg.SingleVal(t))
	if err != nil {
		td.Fatalf(t, "%s: %v", arg.Key, err)
	}
	return d
}

func onlyArg(t *testing.T, td *datadriven.TestData, choices ...string) string {
	if len(td.CmdArgs) == 1 {
		for _, c := range choices {
			if td.CmdArgs[0].Key == c {
				return c
			}
		}
	}
	td.Fatalf(t, "%s wants one of %v", td.Cmd, choices)
	return ""
}

func duration(t *testing.T, td *datadriven.TestData) time.Duration {
	if len(td.CmdArgs) != 1 {
		td.Fatalf(t, "%s wants a duration", td.Cmd)
	}
	d, err := time.ParseDuration(td.CmdArgs[0].Key)
	if err != nil {
		td.Fatalf(t, "%s: %v", td.Cmd, err)
	}
	return d
}

func since(d time.Duration) string { return "+" + d.String() }

// String renders s for the status command.
func (s Status) String() string {
	retry := "none"
	if s.RetryArmed {
		retry = since(s.NextRetry)
	}
	last := "none"
	if s.LastError != nil {
		last = fmt.Sprintf("%q", RootCause(s.LastError).Error())
	}
	v2 := ""
	if s.Protocol == fsm.V2 {
		v2 = fmt.Sprintf(" protocol=v2 seq=%d acks=%d beat-period=%s", s.Seq, s.Acks, s.BeatPeriod)
		if s.HasRTT {
			v2 += fmt.Sprintf(" rtt=%s srtt=%s skew=%s", s.RTT, s.SRTT, s.Skew)
		}
	}
	return fmt.Sprintf("state=%s attempt=%d beats=%d failures=%d next-retry=%s last-error=%s parked=%d%s\n",
		s.State, s.Attempt, s.Beats, s.Failures, retry, last, s.Parked, v2)
}

// RootCause is err's innermost cause: following Unwrap, and the last error
// of a multiple wrap (the cause, after the sentinel, as transport wraps it).
func RootCause(err error) error {
	for err != nil {
		var next error
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			next = u.Unwrap()
		case interface{ Unwrap() []error }:
			if es := u.Unwrap(); len(es) > 0 {
				next = es[len(es)-1]
			}
		}
		if next == nil {
			return err
		}
		err = next
	}
	return nil
}

// Recorder collects the effects a driver carried out, with their times. It
// is safe for concurrent use.
type Recorder struct {
	mu      sync.Mutex
	pending []string
	all     []timed
}

type timed struct {
	at time.Duration
	e  fsm.Effect
}

// Effects records effects carried out at virtual time at (since the start).
func (r *Recorder) Effects(at time.Duration, effects []fsm.Effect) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range effects {
		if e.Kind == fsm.ArmTimer || e.Kind == fsm.CancelTimer {
			continue
		}
		if e.Kind == fsm.Log {
			e.Log.Err = RootCause(e.Log.Err)
		}
		r.all = append(r.all, timed{at, e})
		r.pending = append(r.pending, fmt.Sprintf("%-8s %s\n", since(at), e))
	}
}

// Flush returns the lines recorded since the last Flush.
func (r *Recorder) Flush() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := strings.Join(r.pending, "")
	r.pending = nil
	return out
}

// Summary says, per effect kind and per log level, how many there were
// since the start and when.
func (r *Recorder) Summary() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var (
		order []string
		times = map[string][]time.Duration{}
	)
	add := func(k string, at time.Duration) {
		if _, ok := times[k]; !ok {
			order = append(order, k)
		}
		times[k] = append(times[k], at)
	}
	for _, te := range r.all {
		switch te.e.Kind {
		case fsm.Log:
			add(te.e.Log.Level.String(), te.at)
		case fsm.Transitioned:
		default:
			add(te.e.Kind.String(), te.at)
		}
	}
	var b strings.Builder
	for _, k := range order {
		fmt.Fprintf(&b, "%s: %s\n", k, when(times[k]))
	}
	return b.String()
}

// when describes a list of times: all of them when few, the period when
// they are evenly spaced, else the first three and the last.
func when(ts []time.Duration) string {
	n := len(ts)
	list := func(ts []time.Duration) string {
		s := make([]string, len(ts))
		for i, t := range ts {
			s[i] = since(t)
		}
		return strings.Join(s, " ")
	}
	switch {
	case n <= 8:
		return fmt.Sprintf("%d at %s", n, list(ts))
	case evenly(ts):
		return fmt.Sprintf("%d, every %s from %s to %s", n, ts[1]-ts[0], since(ts[0]), since(ts[n-1]))
	}
	return fmt.Sprintf("%d at %s … %s", n, list(ts[:3]), since(ts[n-1]))
}

func evenly(ts []time.Duration) bool {
	for i := 2; i < len(ts); i++ {
		if ts[i]-ts[i-1] != ts[1]-ts[0] {
			return false
		}
	}
	return ts[1] > ts[0]
}
