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
//	config dial-timeout=D write-timeout=D
//	                        the sender's timeouts (before anything else)
//	run                     start the sender (Step Start, or Service.Run)
//	aggregator up|down      the aggregator listens, or not (dials are refused)
//	faults hang-dials|stall-writes|write-error=TEXT|none
//	                        replace the network's faults toward the aggregator
//	advance                 move virtual time to the next deadline ("now +T")
//	advance-until D         advance while the next deadline is before +D
//	remote reset|close      the aggregator resets or closes the open stream
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
}

// Driver carries out the commands on one sender. Every method returns once
// the sender is quiescent: every result it can get without time moving has
// been handled. Effects are reported to the Recorder the driver was made with.
type Driver interface {
	// Configure sets the timeouts; it comes before any other command.
	Configure(dialTimeout, writeTimeout time.Duration)
	Run()
	Aggregator(up bool)
	Faults(Faults)
	// Advance moves to the next deadline; false if none is armed.
	Advance() bool
	// NextDeadline is the next armed deadline, since the start.
	NextDeadline() (time.Duration, bool)
	// Now is the virtual time since the start.
	Now() time.Duration
	RemoteEnd(reset bool)
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
		dial, write := fsm.DefaultDialTimeout, fsm.DefaultWriteTimeout
		td.MaybeScanArgs(t, "dial-timeout", &dial)
		td.MaybeScanArgs(t, "write-timeout", &write)
		d.Configure(dial, write)
	case "run":
		d.Run()
	case "aggregator":
		d.Aggregator(onlyArg(t, td, "up", "down") == "up")
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
		d.RemoteEnd(onlyArg(t, td, "reset", "close") == "reset")
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
	return fmt.Sprintf("state=%s attempt=%d beats=%d failures=%d next-retry=%s last-error=%s parked=%d\n",
		s.State, s.Attempt, s.Beats, s.Failures, retry, last, s.Parked)
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
