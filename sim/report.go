package sim

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/fsm"
)

// numMachineStates is the number of fsm states (Disconnected..Stopped).
const numMachineStates = 5

// numTrackerStates is the number of tracker states the simulation counts
// (Joining..Left): its aggregator has no store, so no node is ever
// tracker.Unknown (restored after a restart), and the traces keep their
// five columns.
const numTrackerStates = 5

// trackerStates are the states sampled, in order.
var trackerStates = tracker.States()[:numTrackerStates]

// stats accumulates what the report shows.
type stats struct {
	events, steps, pops uint64
	sent, received      uint64
	dials               uint64
	states              [numMachineStates]int // machines by state; crashed nodes excluded
	crashedN, pausedN   int
	up                  int // nodes Up at the tracker, from its Changes
	dialsPerSec         []uint32
	samples             []Sample
	recoveries          []Recovery
	pending             []int // recoveries still waiting for a figure

	// The tracker's verdicts: see Report.Suspects and the fields after it.
	suspects, downs         uint64
	falseSuspect, falseDown uint64
	disruptions             int
	detections              []time.Duration
	crashes, lateDetections int
	lateDetail              string
	silenceQuiet            int64 // when the last aggregator-wide silence fault healed

	dupWatch   []int32 // nodes that had an impostor
	throwaways int     // SybilFill identities so far
	fillAt     int64   // the last SybilFill
	newcomerUp int64   // when the newcomer (sybil-fill) was first Up

	// v2: the streams paced, the accepts per aggregator incarnation, and
	// the stall detections (see Report.StallV2).
	pacedN, unpacedN          uint64
	pace                      []paceRec
	stallAt                   int64
	stallV2                   []time.Duration
	stallV1, watchV1, watchV2 int
}

// paceRec is one aggregator incarnation's admissions (runs with v2
// senders): v2 and v1 streams accepted per second since its start, the v2
// streams paced, and the share of running nodes Up one pacing window after
// its start (-1: not measured).
type paceRec struct {
	start      int64
	v2, v1     []uint32
	paced      uint64
	upInWindow float64
}

func (st *stats) init(c *config) {
	st.dialsPerSec = make([]uint32, 0, int(c.Duration/time.Second)+1)
	st.samples = make([]Sample, 0, int(c.Duration/c.sample)+2)
	st.recoveries = append(st.recoveries, Recovery{Fault: "start", Beating99: -1, AllBeating: -1, AllUp: -1, Up99: -1, pace: -1})
	st.pending = append(st.pending, 0)
}

func (s *sim) countDial() {
	s.dials++
	sec := int((s.now - s.start) / int64(time.Second))
	for len(s.dialsPerSec) <= sec {
		s.dialsPerSec = append(s.dialsPerSec, 0)
	}
	s.dialsPerSec[sec]++
}

// Sample is the state of the system at one instant.
type Sample struct {
	// At is the virtual time since the start of the run.
	At time.Duration
	// Machines counts the running senders by fsm.State (Disconnected,
	// Connecting, Beating, Backoff, Stopped); crashed nodes are not counted.
	Machines [numMachineStates]int
	// Crashed and Paused count the nodes whose process is down or frozen.
	Crashed, Paused int
	// AggregatorUp is false while the aggregator is crashed or shut down.
	AggregatorUp bool
	// Tracker counts the tracker's nodes by tracker.State (Joining, Up,
	// Suspect, Down, Left); all zero while the aggregator is down.
	Tracker [numTrackerStates]int
	// Sent and Received count heartbeats written by the senders and read by
	// the aggregator since the start.
	Sent, Received uint64
}

// Recovery measures the system's return to health after a fault healed
// (and after the start of the run, as the pseudo-fault "start"). Durations
// are since HealedAt; -1 means it did not happen before the end of the run.
type Recovery struct {
	// Fault describes the healed action.
	Fault string
	// HealedAt is when it healed, since the start of the run.
	HealedAt time.Duration
	// Beating99 is the time until 99% of the running nodes were Beating.
	Beating99 time.Duration
	// AllBeating is the time until every running node was Beating.
	AllBeating time.Duration
	// AllUp is the time until every running node was Up at the aggregator.
	AllUp time.Duration
	// Restart is set for an aggregator restart; DialPeak and DialP99 are
	// then the peak and the 99th percentile of the dials per second over
	// the seconds from the restart until every node was Beating again.
	Restart           bool
	DialPeak, DialP99 int
	// Up99 is the time until 99% of the running nodes were Up at the
	// aggregator (printed for runs with v2 senders).
	Up99 time.Duration
	// For an aggregator restart in a run with v2 senders, its pacing:
	// AcceptFirst is the v2 streams it accepted in the first second after
	// the restart (at most AcceptRate, package pacing), AcceptPeak the most in any later second until every
	// node was Up; AcceptV1Peak the most v1 streams in one second (never
	// paced); Paced the v2 streams answered with GoAway past the rate while
	// it ran; UpInWindow the share of the running nodes Up one
	// PacingWindow after the restart (-1: not measured, the aggregator or
	// the run ended first).
	AcceptFirst, AcceptPeak, AcceptV1Peak int
	Paced                                 uint64
	UpInWindow                            float64
	pace                                  int // index in stats.pace, -1: none
}

// LevelStats counts the senders' log lines of one level.
type LevelStats struct {
	// Total is the number of lines over all nodes.
	Total uint64
	// Min and Max are the fewest and the most lines of one node.
	Min, Max uint64
	// MeanPerNode is Total divided by the number of nodes.
	MeanPerNode float64
	// NodesWithLine is the number of nodes that logged at least one line.
	NodesWithLine int
}

// Report is the outcome of a run. Everything in it but Wall is a function
// of the Params alone.
type Report struct {
	// Seed, Scenario, Nodes and Duration identify the run.
	Seed     uint64
	Scenario string
	Nodes    int
	Duration time.Duration
	// Faults is the script that ran, node selections resolved.
	Faults []Action
	// LivenessBound is how long after the last fault healed every node had
	// to be Beating and Up; LivenessAt is when that was checked.
	LivenessBound, LivenessAt time.Duration
	// Samples are the per-state counts every SampleEvery.
	Samples []Sample
	// Recoveries has one entry for the start and one per healed fault.
	Recoveries []Recovery
	// Logs counts the senders' log lines by level (DEBUG, INFO, WARN, ERROR).
	Logs [4]LevelStats
	// BeatsSent and BeatsReceived count heartbeats written and read.
	BeatsSent, BeatsReceived uint64
	// Dials counts connection attempts.
	Dials uint64
	// Suspects and Downs count the tracker's transitions to Suspect and to
	// Down over the run. FalseSuspects and FalseDowns count those of a node
	// that was healthy at that moment: its process running and not frozen,
	// no fault in force on its path or on the aggregator, and none that
	// ended within the liveness bound (every Suspect after a reset storm
	// counts; one during a partition does not).
	Suspects, Downs, FalseSuspects, FalseDowns uint64
	// Disruptions counts the tracker's disruption episodes (entries into
	// its disrupted mode).
	Disruptions int
	// Crashes counts the nodes that crashed while the tracker had them Up
	// or Suspect; Detections holds, sorted, the time from each crash to the
	// tracker's Down for it, and DetectionP50 and DetectionP99 its nearest-
	// rank percentiles (0 when none); DetectionMax the slowest.
	Crashes                                  int
	Detections                               []time.Duration
	DetectionP50, DetectionP99, DetectionMax time.Duration
	// DuplicateFlagged is, over the nodes that had an Impostor, the
	// longest time from the impostor's start to the tracker's
	// DuplicateIdentity flag (-1 if one was never flagged; 0 without
	// impostors). NewcomerAdmitted is, in scenario sybil-fill, the time
	// from the flood to the newcomer's first Up (-1 if never).
	DuplicateFlagged, NewcomerAdmitted time.Duration
	// Protocol is the senders' protocol mix ("v1", "v2", "mixed") and
	// V2Nodes how many speak v2; Pacing the aggregator's pacing of new v2
	// streams (defaults applied; AcceptRate 0: none), and Paced how many
	// new v2 streams it answered with GoAway past the rate; Unpaced how
	// many it admitted without pacing because the tracker held the node Up
	// or Suspect.
	Protocol string
	V2Nodes  int
	Pacing   Pacing
	Paced    uint64
	Unpaced  uint64
	// StallV2 holds, sorted, for each v2 sender that was Beating on a
	// proven stream when an aggregator stall began, the time until it
	// dropped that stream (an Ack overdue), and StallV2Watched how many
	// were watched; StallV1Noticed and StallV1Watched count the same for
	// v1 senders (which notice only once their send window is full).
	// StallBound is what the aggregator-stall scenario requires of v2:
	// 3×BeatPeriod + the longest round trip (the first unread Beat goes
	// out within a period of the stall's begin, and its Ack is overdue
	// 2×BeatPeriod + the last RTT later).
	StallV2                        []time.Duration
	StallV2Watched                 int
	StallV1Noticed, StallV1Watched int
	StallBound                     time.Duration
	// Events counts the events processed: every machine Step, every
	// message delivered to the aggregator, every sweep, read deadline,
	// keepalive verdict, fault and sample. HeapPops counts the virtual
	// clock's pops (stale timer entries included); Steps the machine Steps.
	Events, HeapPops, Steps uint64
	// TraceLines and TraceHash (FNV-64a) describe the trace.
	TraceLines uint64
	TraceHash  uint64
	// Wall is the wall-clock time the run took. It is the only field that
	// varies between runs of the same Params; WriteText prints it last.
	Wall time.Duration
}

// EventsPerSecond is Events divided by Wall.
func (r *Report) EventsPerSecond() float64 {
	if r.Wall <= 0 {
		return 0
	}
	return float64(r.Events) / r.Wall.Seconds()
}

// watch updates the recoveries still waiting for a figure.
func (s *sim) watch() {
	if len(s.pending) == 0 {
		return
	}
	live := len(s.nodes) - s.crashedN
	need99 := (99*live + 99) / 100
	beating := s.states[fsm.Beating]
	el := time.Duration(s.now - s.start)
	k := 0
	for _, i := range s.pending {
		r := &s.recoveries[i]
		if r.Beating99 < 0 && beating >= need99 {
			r.Beating99 = el - r.HealedAt
		}
		if r.Up99 < 0 && s.agg.up && s.up >= need99 {
			r.Up99 = el - r.HealedAt
		}
		if r.AllBeating < 0 && beating >= live {
			r.AllBeating = el - r.HealedAt
		}
		if r.AllUp < 0 && s.agg.up && s.up >= live {
			r.AllUp = el - r.HealedAt
		}
		if r.Beating99 < 0 || r.AllBeating < 0 || r.AllUp < 0 {
			s.pending[k] = i
			k++
		}
	}
	s.pending = s.pending[:k]
}

// healedFault starts measuring the recovery from a.
func (s *sim) healedFault(a *Action, restart bool) {
	s.recoveries = append(s.recoveries, Recovery{
		Fault: a.String(), HealedAt: time.Duration(s.now - s.start),
		Beating99: -1, AllBeating: -1, AllUp: -1, Restart: restart, Up99: -1, pace: -1, UpInWindow: -1,
	})
	if restart && len(s.pace) > 0 {
		s.recoveries[len(s.recoveries)-1].pace = len(s.pace) - 1
	}
	s.pending = append(s.pending, len(s.recoveries)-1)
	s.watch()
}

func (s *sim) sample() {
	smp := Sample{
		At: time.Duration(s.now - s.start), Machines: s.states, Crashed: s.crashedN, Paused: s.pausedN,
		AggregatorUp: s.agg.up, Sent: s.sent, Received: s.received,
	}
	if s.agg.up {
		sum := s.agg.tr.Summary()
		for i, st := range trackerStates {
			smp.Tracker[i] = sum.ByState[st]
		}
	}
	s.samples = append(s.samples, smp)
	t := s.tr.begin(s.now, "sample")
	for i, st := range fsm.States() {
		t.str(" ").str(st.String()).str("=").int(int64(smp.Machines[i]))
	}
	t.str(" crashed=").int(int64(smp.Crashed)).str(" paused=").int(int64(smp.Paused))
	if smp.AggregatorUp {
		for i, st := range trackerStates {
			t.str(" ").str(st.String()).str("=").int(int64(smp.Tracker[i]))
		}
	} else {
		t.str(" aggregator=down")
	}
	t.str(" sent=").uint(smp.Sent).str(" received=").uint(smp.Received).end()
}

// report assembles the Report.
func (s *sim) report(wall time.Duration) *Report {
	c := s.c
	r := &Report{
		Seed: c.Seed, Scenario: scenarioName(c.Scenario), Nodes: c.Nodes, Duration: c.Duration,
		Faults:        s.script,
		LivenessBound: c.liveness, LivenessAt: time.Duration(s.healed-s.start) + c.liveness,
		Samples: s.samples, Recoveries: s.recoveries,
		BeatsSent: s.sent, BeatsReceived: s.received, Dials: s.dials,
		Events: s.events, HeapPops: s.pops, Steps: s.steps,
		TraceLines: s.tr.lines, TraceHash: s.tr.hash, Wall: wall,
		Suspects: s.suspects, Downs: s.downs, FalseSuspects: s.falseSuspect, FalseDowns: s.falseDown,
		Disruptions: s.disruptions, Crashes: s.crashes, Detections: slices.Clone(s.detections),
		Protocol: c.Protocol.String(), V2Nodes: c.Nodes - int(c.v2From), Paced: s.pacedN, Unpaced: s.unpacedN,
		StallV2: slices.Clone(s.stallV2), StallV2Watched: s.watchV2, StallV1Noticed: s.stallV1, StallV1Watched: s.watchV1,
		StallBound: c.stallBound(),
	}
	if c.anyV2() {
		r.Pacing = c.pacing
	}
	slices.Sort(r.StallV2)
	for _, i := range s.dupWatch {
		n := &s.nodes[i]
		if n.flaggedAt == 0 {
			r.DuplicateFlagged = -1
			break
		}
		r.DuplicateFlagged = max(r.DuplicateFlagged, time.Duration(n.flaggedAt-n.impSince))
	}
	if c.newcomer {
		r.NewcomerAdmitted = -1
		if s.newcomerUp != 0 {
			r.NewcomerAdmitted = time.Duration(s.newcomerUp - s.fillAt)
		}
	}
	slices.Sort(r.Detections)
	if k := len(r.Detections); k > 0 {
		r.DetectionP50 = r.Detections[max((50*k+99)/100, 1)-1]
		r.DetectionP99 = r.Detections[max((99*k+99)/100, 1)-1]
		r.DetectionMax = r.Detections[k-1]
	}
	for l := range r.Logs {
		ls := &r.Logs[l]
		for i := range s.nodes {
			v := s.nodes[i].logs[l]
			ls.Total += v
			if i == 0 || v < ls.Min {
				ls.Min = v
			}
			ls.Max = max(ls.Max, v)
			if v > 0 {
				ls.NodesWithLine++
			}
		}
		ls.MeanPerNode = float64(ls.Total) / float64(len(s.nodes))
	}
	for i := range r.Recoveries {
		rec := &r.Recoveries[i]
		if !rec.Restart {
			continue
		}
		from := int(rec.HealedAt / time.Second)
		to := len(s.dialsPerSec) - 1
		if rec.AllBeating >= 0 {
			to = min(to, int((rec.HealedAt+rec.AllBeating)/time.Second))
		}
		if from > to {
			continue
		}
		if rec.pace >= 0 {
			s.paceFigures(rec)
		}
		win := slices.Clone(s.dialsPerSec[from : to+1])
		slices.Sort(win)
		rec.DialPeak = int(win[len(win)-1])
		// Nearest rank: the smallest count at or above 99% of the seconds.
		rank := (99*len(win) + 99) / 100
		rec.DialP99 = int(win[max(rank, 1)-1])
	}
	return r
}

// paceFigures fills rec's pacing figures from its aggregator incarnation's
// counts, over the seconds from the restart until every node was Up (all
// of them if that never happened).
func (s *sim) paceFigures(rec *Recovery) {
	p := &s.pace[rec.pace]
	end := len(p.v2)
	if rec.AllUp >= 0 {
		end = min(end, int(rec.AllUp/time.Second)+1)
	}
	for sec := 0; sec < end; sec++ {
		if sec == 0 {
			rec.AcceptFirst = int(p.v2[0])
		} else {
			rec.AcceptPeak = max(rec.AcceptPeak, int(p.v2[sec]))
		}
		rec.AcceptV1Peak = max(rec.AcceptV1Peak, int(p.v1[sec]))
	}
	rec.Paced, rec.UpInWindow = p.paced, p.upInWindow
}

// WriteText writes the report as text: the run, the faults, the counts over
// time, the recoveries, the log lines, the events and the trace hash, and
// last the wall time and rate (the only lines that vary between runs).
func (r *Report) WriteText(w io.Writer) error {
	b := bufio.NewWriter(w)
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("heartbeat simulation: scenario %s, %d nodes, %s of virtual time, seed %d\n", r.Scenario, r.Nodes, r.Duration, r.Seed)
	if r.V2Nodes > 0 {
		p("protocol %s: %d v2 senders, %d v1; ", r.Protocol, r.V2Nodes, r.Nodes-r.V2Nodes)
		if r.Pacing.AcceptRate > 0 {
			p("new v2 streams paced at %g in any second, GoAway retry-after a slot within %s; %d admitted unpaced (node Up or Suspect)\n", r.Pacing.AcceptRate, r.Pacing.PacingWindow, r.Unpaced)
		} else {
			p("no pacing\n")
		}
	}
	if len(r.Faults) == 0 {
		p("faults: none\n")
	} else {
		p("faults (%d):\n", len(r.Faults))
		for _, a := range r.Faults {
			p("  %s\n", a)
		}
	}
	p("liveness: every node Beating and Up at +%s (last heal + %s)\n\n", r.LivenessAt, r.LivenessBound)

	p("senders by state | aggregator's tracker by state:\n")
	p("%10s %6s %6s %7s %7s %6s %6s | %7s %6s %7s %6s %6s | %10s %10s\n",
		"t", "disc", "conn", "beating", "backoff", "crash", "pause", "joining", "up", "suspect", "down", "left", "sent", "received")
	for _, s := range r.Samples {
		m := s.Machines
		p("%10s %6d %6d %7d %7d %6d %6d | ", fmtDur(s.At), m[fsm.Disconnected], m[fsm.Connecting], m[fsm.Beating], m[fsm.Backoff], s.Crashed, s.Paused)
		if s.AggregatorUp {
			t := s.Tracker
			p("%7d %6d %7d %6d %6d", t[tracker.Joining], t[tracker.Up], t[tracker.Suspect], t[tracker.Down], t[tracker.Left])
		} else {
			p("%-38s", "(aggregator down)")
		}
		p(" | %10d %10d\n", s.Sent, s.Received)
	}

	p("\nrecovery (time since the heal; - = not before the end):\n")
	p("  %-58s %10s %10s %10s %10s\n", "after", "healed at", "99% beat", "all beat", "all up")
	for _, rec := range r.Recoveries {
		p("  %-58s %10s %10s %10s %10s\n", clip(rec.Fault, 58), fmtDur(rec.HealedAt), fmtOpt(rec.Beating99), fmtOpt(rec.AllBeating), fmtOpt(rec.AllUp))
	}
	first := true
	for _, rec := range r.Recoveries {
		if !rec.Restart {
			continue
		}
		if first {
			p("\nreconnect attempts per second after each aggregator restart (until all nodes beat again):\n")
			first = false
		}
		p("  restart at %-10s peak %6d/s   p99 %6d/s\n", fmtDur(rec.HealedAt), rec.DialPeak, rec.DialP99)
	}
	if r.V2Nodes > 0 {
		first := true
		for _, rec := range r.Recoveries {
			if !rec.Restart || rec.pace < 0 {
				continue
			}
			if first {
				p("\nstreams the aggregator accepted per second after each restart (v2 paced, v1 never), until all nodes were Up:\n")
				first = false
			}
			win := "-"
			if rec.UpInWindow >= 0 {
				win = fmt.Sprintf("%.2f%%", 100*rec.UpInWindow)
			}
			p("  restart at %-10s v2 first second %5d, then at most %5d/s; v1 at most %5d/s; %d paced; 99%% Up after %s, Up at +%s: %s\n",
				fmtDur(rec.HealedAt), rec.AcceptFirst, rec.AcceptPeak, rec.AcceptV1Peak, rec.Paced, fmtOpt(rec.Up99), fmtDur(r.Pacing.PacingWindow), win)
		}
	}

	p("\nsender log lines by level (per node: min / mean / max):\n")
	for l, ls := range r.Logs {
		p("  %-5s %10d lines   %d / %.2f / %d   (%d nodes logged any)\n", fsm.Level(l+1), ls.Total, ls.Min, ls.MeanPerNode, ls.Max, ls.NodesWithLine)
	}
	p("\naggregator's verdicts: %d Suspect (%d false), %d Down (%d false), %d disruption episodes\n",
		r.Suspects, r.FalseSuspects, r.Downs, r.FalseDowns, r.Disruptions)
	if r.Crashes > 0 {
		p("crash detection (crash to Down): %d of %d crashed nodes detected, p50 %s, p99 %s, max %s\n",
			len(r.Detections), r.Crashes, fmtOpt(r.DetectionP50), fmtOpt(r.DetectionP99), fmtOpt(r.DetectionMax))
	}
	if r.StallV2Watched+r.StallV1Watched > 0 && r.V2Nodes > 0 {
		p("aggregator stall noticed (stall begin to the sender dropping its stream): v2 %d of %d", len(r.StallV2), r.StallV2Watched)
		if k := len(r.StallV2); k > 0 {
			p(", p50 %s, p99 %s, max %s (bound %s)", r.StallV2[max((50*k+99)/100, 1)-1], r.StallV2[max((99*k+99)/100, 1)-1], r.StallV2[k-1], r.StallBound)
		}
		p("; v1 %d of %d\n", r.StallV1Noticed, r.StallV1Watched)
	}
	if r.DuplicateFlagged != 0 {
		p("duplicate identity flagged (impostor start to flag, slowest): %s\n", fmtOpt(r.DuplicateFlagged))
	}
	if r.NewcomerAdmitted != 0 {
		p("honest newcomer admitted after the flood: %s\n", fmtOpt(r.NewcomerAdmitted))
	}
	p("\nheartbeats: %d sent, %d received; dials: %d\n", r.BeatsSent, r.BeatsReceived, r.Dials)
	p("events: %d processed (%d machine steps, %d heap pops)\n", r.Events, r.Steps, r.HeapPops)
	p("trace: %d lines, hash fnv64a:%016x\n", r.TraceLines, r.TraceHash)
	if r.Wall > 0 {
		p("wall: %s, %.0f events/s\n", r.Wall.Round(time.Millisecond), r.EventsPerSecond())
	}
	return b.Flush()
}

// WriteCSV writes the samples as CSV with a header row.
func (r *Report) WriteCSV(w io.Writer) error {
	b := bufio.NewWriter(w)
	b.WriteString("t_seconds,disconnected,connecting,beating,backoff,stopped,crashed,paused,aggregator_up,joining,up,suspect,down,left,sent,received\n")
	var line []byte
	for _, s := range r.Samples {
		line = strconv.AppendFloat(line[:0], s.At.Seconds(), 'f', -1, 64)
		for _, v := range s.Machines {
			line = strconv.AppendInt(append(line, ','), int64(v), 10)
		}
		line = strconv.AppendInt(append(line, ','), int64(s.Crashed), 10)
		line = strconv.AppendInt(append(line, ','), int64(s.Paused), 10)
		line = strconv.AppendBool(append(line, ','), s.AggregatorUp)
		for _, v := range s.Tracker {
			line = strconv.AppendInt(append(line, ','), int64(v), 10)
		}
		line = strconv.AppendUint(append(line, ','), s.Sent, 10)
		line = strconv.AppendUint(append(line, ','), s.Received, 10)
		b.Write(append(line, '\n'))
	}
	return b.Flush()
}

func fmtDur(d time.Duration) string { return d.String() }

func fmtOpt(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	return d.Round(time.Millisecond).String()
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
