// Package metrics exposes the aggregator's Prometheus metrics on a registry
// the caller owns (never the global one).
//
// Counters the stream handler increments:
//
//	heartbeat_rejected_total{reason}   streams ended or refused, by reason (Reasons)
//	heartbeat_streams_opened_total     heartbeat streams accepted
//	heartbeat_streams_closed_total{how} accepted streams that ended: eof, reset, error
//	heartbeat_labels_truncated_total{field} node-supplied strings cut to the label cap (Fields)
//	heartbeat_aggregator_lag_seconds{source} the aggregator's own lag at each sweep, by source (LagSources)
//
// Histograms over every protocol v2 Beat, all nodes together (no per-node
// labels: a peer can never create series):
//
//	heartbeat_v2_rtt_seconds           round trip the sender reported (Beats with one)
//	heartbeat_v2_clock_skew_seconds    sender clock minus aggregator clock, estimated
//
// Values computed from tracker.Summary at scrape time, by a custom
// collector (one O(n) pass per scrape, nothing to keep in sync):
//
//	heartbeat_heartbeats_received_total heartbeats the tracker accepted
//	heartbeat_connected_nodes           nodes with an open stream  (2018: connected_nodes)
//	heartbeat_nodes{state}              nodes by state: joining, up, suspect, down, left
//	heartbeat_nodes_in_consensus        Up nodes on the consensus head (2018: nodes_in_consensus)
//	heartbeat_nodes_in_dispute          the other Up nodes            (2018: nodes_in_dispute)
//	heartbeat_consensus_height          height of the consensus head; 0 with no Up node
//	heartbeat_max_nodes                 the tracker's MaxNodes, to alert before refusals start
//	heartbeat_aggregator_disrupted      1 while the tracker is in disrupted mode (most nodes silent at once: no node goes Down), else 0
//	heartbeat_nodes_duplicate_identity  nodes flagged as sharing one key with another sender
//	heartbeat_node_up{peer_id}          per node: 1 Up, 0 Suspect or Down, or Unknown after a restart that found it Suspect or Down; no series for Joining, Left or another Unknown
//	heartbeat_aggregator_health         the local-health multiplier of Suspect and Down thresholds (1: healthy)
//
// Every other label value comes from a fixed set of constants: a reason the
// handler passes that is not one of Reasons is counted as "other", so a bug
// or a peer can never create new series. heartbeat_node_up's peer_id is
// the authenticated peer id, one series per tracked node: at most the
// tracker's MaxNodes, and a node evicted or forgotten has none. Nicknames
// and heads are never labels.
package metrics

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/wire"
	"github.com/p2pbeat/heartbeat/wire2"
)

// The values of the reason label of heartbeat_rejected_total. The first
// three are the wire decoder's own (wire.Reason), spelled the same.
const (
	// ReasonNotJSON: a line that is not JSON or not a JSON object.
	ReasonNotJSON = string(wire.ReasonNotJSON)
	// ReasonBadType: a known field with the wrong JSON type or range.
	ReasonBadType = string(wire.ReasonBadType)
	// ReasonInvalidUTF8: a line that is not valid UTF-8.
	ReasonInvalidUTF8 = string(wire.ReasonInvalidUTF8)
	// ReasonLineTooLong: a line longer than the limit, or no newline
	// within it.
	ReasonLineTooLong = "line_too_long"
	// ReasonIdleTimeout: no complete line within the idle timeout.
	ReasonIdleTimeout = "idle_timeout"
	// ReasonTooManyNodes: a new peer past the tracker's MaxNodes
	// (tracker.ErrFull).
	ReasonTooManyNodes = "too_many_nodes"
	// ReasonNotAllowed: a peer outside the allowlist.
	ReasonNotAllowed = "not_allowed"
	// ReasonSuperseded: an older stream reset because the same peer opened
	// a newer one.
	ReasonSuperseded = "superseded"
	// ReasonResourceLimit: the resource manager refused memory for the
	// stream's line buffer.
	ReasonResourceLimit = "resource_limit"
	// ReasonDuplicateIdentity: a peer whose streams superseded each other
	// more than the tracker's DuplicateThreshold within its
	// DuplicateWindow (two senders with one key); counted once per window,
	// on top of the superseded streams themselves.
	ReasonDuplicateIdentity = "duplicate_identity"
	// ReasonOther: anything else, including a reason not in this list.
	ReasonOther = "other"

	// Protocol v2: the frame decoder's reasons (wire2.Reason), spelled the
	// same, then the session's.
	ReasonMalformedFrame = string(wire2.ReasonMalformed)
	ReasonFrameTooLong   = string(wire2.ReasonFrameTooLong)
	ReasonUnknownMessage = string(wire2.ReasonUnknownType)
	ReasonBadField       = string(wire2.ReasonBadField)
	// ReasonBeatBeforeHello: a v2 stream whose first frame is not a Hello.
	ReasonBeatBeforeHello = "beat_before_hello"
	// ReasonSecondHello: a second Hello on one stream.
	ReasonSecondHello = "second_hello"
	// ReasonSeqBackwards: a Beat whose seq is not above the previous one
	// on its stream.
	ReasonSeqBackwards = "seq_backwards"
	// ReasonUnexpectedMessage: an aggregator-to-sender message (Welcome,
	// Ack, GoAway) sent by a sender.
	ReasonUnexpectedMessage = "unexpected_message"
	// ReasonPaced: a new v2 stream past the accept rate, sent GoAway.
	ReasonPaced = "paced"
)

// Reasons lists every value of the reason label, in a fixed order.
func Reasons() []string {
	return []string{
		ReasonNotJSON, ReasonBadType, ReasonInvalidUTF8, ReasonLineTooLong,
		ReasonIdleTimeout, ReasonTooManyNodes, ReasonNotAllowed,
		ReasonSuperseded, ReasonResourceLimit, ReasonDuplicateIdentity, ReasonOther,
		ReasonMalformedFrame, ReasonFrameTooLong, ReasonUnknownMessage, ReasonBadField,
		ReasonBeatBeforeHello, ReasonSecondHello, ReasonSeqBackwards,
		ReasonUnexpectedMessage, ReasonPaced,
	}
}

// The values of the how label of heartbeat_streams_closed_total.
const (
	// ClosedEOF: the sender ended the stream cleanly.
	ClosedEOF = "eof"
	// ClosedReset: the sender reset the stream or the connection dropped.
	ClosedReset = "reset"
	// ClosedError: the aggregator ended the stream (a rejection, a timeout,
	// its own shutdown).
	ClosedError = "error"
)

// Closes lists every value of the how label.
func Closes() []string { return []string{ClosedEOF, ClosedReset, ClosedError} }

// The values of the field label of heartbeat_labels_truncated_total: the
// node-supplied strings of a heartbeat, in the API's names.
const (
	FieldNickname     = "nickname"
	FieldHead         = "head"
	FieldMinerAddress = "miner_address"
	FieldGenesis      = "genesis"
)

// Fields lists every value of the field label.
func Fields() []string {
	return []string{FieldNickname, FieldHead, FieldMinerAddress, FieldGenesis}
}

// Metrics holds the aggregator's collectors. Its methods are safe for
// concurrent use and do not allocate.
type Metrics struct {
	rejected map[string]prometheus.Counter // one child per Reasons value
	opened   prometheus.Counter
	unpaced  prometheus.Counter
	closed   map[string]prometheus.Counter // one child per Closes value
	trunc    map[string]prometheus.Counter // one child per Fields value
	rtt      prometheus.Histogram
	skew     prometheus.Histogram
	lag      map[string]prometheus.Observer // one child per LagSources value
}

// New registers the aggregator's metrics on reg and a collector that reads
// t on every scrape. It fails, naming the metric, if reg already holds one of
// them (e.g. New called twice on one registry).
func New(reg prometheus.Registerer, t *tracker.Tracker) (*Metrics, error) {
	if reg == nil {
		return nil, errors.New("metrics: nil prometheus.Registerer")
	}
	if t == nil {
		return nil, errors.New("metrics: nil tracker")
	}
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "heartbeat_rejected_total",
		Help: "Heartbeat streams ended or refused by the aggregator, by reason.",
	}, []string{"reason"})
	opened := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "heartbeat_streams_opened_total",
		Help: "Heartbeat streams accepted.",
	})
	unpaced := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "heartbeat_v2_streams_unpaced_total",
		Help: "New v2 streams admitted without pacing because their node was Up or Suspect (beating moments ago in this process: a reset storm, a NAT rebinding).",
	})
	closed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "heartbeat_streams_closed_total",
		Help: "Accepted heartbeat streams that ended, by how: eof (clean), reset (by the sender or the network), error (by the aggregator).",
	}, []string{"how"})
	trunc := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "heartbeat_labels_truncated_total",
		Help: "Node-supplied strings (nickname, head, miner_address, genesis) longer than the label cap, cut before they were stored.",
	}, []string{"field"})
	lag := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "heartbeat_aggregator_lag_seconds",
		Help:    "The aggregator's own lag measured at each sweep, by source: sweep (how late the sweep timer fired), scheduler (p99 goroutine scheduling latency since the last sweep), gc (longest GC pause since the last sweep).",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 9), // 1 ms .. 65 s
	}, []string{"source"})
	rtt := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "heartbeat_v2_rtt_seconds",
		Help:    "Round-trip times protocol v2 senders reported in their Beats (Beat written to Ack read), all nodes together.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15), // 0.5 ms to ~8 s
	})
	skew := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "heartbeat_v2_clock_skew_seconds",
		Help:    "Estimated clock skew of protocol v2 senders (sender clock minus aggregator clock, from each Beat's time and RTT), all nodes together.",
		Buckets: []float64{-60, -10, -2, -0.5, -0.1, -0.02, -0.005, 0, 0.005, 0.02, 0.1, 0.5, 2, 10, 60},
	})
	m := &Metrics{
		rtt:      rtt,
		skew:     skew,
		lag:      make(map[string]prometheus.Observer),
		rejected: make(map[string]prometheus.Counter),
		opened:   opened,
		unpaced:  unpaced,
		closed:   make(map[string]prometheus.Counter),
		trunc:    make(map[string]prometheus.Counter),
	}
	// Every series exists from the start at 0, so rate() and absence
	// alerts work before the first event.
	for _, r := range Reasons() {
		m.rejected[r] = rejected.WithLabelValues(r)
	}
	for _, h := range Closes() {
		m.closed[h] = closed.WithLabelValues(h)
	}
	for _, f := range Fields() {
		m.trunc[f] = trunc.WithLabelValues(f)
	}
	for _, src := range LagSources() {
		m.lag[src] = lag.WithLabelValues(src)
	}
	cs := []struct {
		name string
		c    prometheus.Collector
	}{
		{"heartbeat_rejected_total", rejected},
		{"heartbeat_streams_opened_total", opened},
		{"heartbeat_v2_streams_unpaced_total", unpaced},
		{"heartbeat_streams_closed_total", closed},
		{"heartbeat_labels_truncated_total", trunc},
		{"heartbeat_v2_rtt_seconds", rtt},
		{"heartbeat_v2_clock_skew_seconds", skew},
		{"heartbeat_aggregator_lag_seconds", lag},
		{"the tracker collector (heartbeat_nodes...)", newTrackerCollector(t)},
	}
	for _, c := range cs {
		if err := reg.Register(c.c); err != nil {
			return nil, fmt.Errorf("metrics: register %s: %w", c.name, err)
		}
	}
	return m, nil
}

// Rejected counts one stream ended or refused for reason, one of the
// Reason constants; any other string is counted as ReasonOther.
func (m *Metrics) Rejected(reason string) {
	c, ok := m.rejected[reason]
	if !ok {
		c = m.rejected[ReasonOther]
	}
	c.Inc()
}

// BeatV2 observes one v2 Beat's reported RTT (when it has one: rtt > 0)
// and estimated skew.
func (m *Metrics) BeatV2(rtt, skew time.Duration) {
	if rtt > 0 {
		m.rtt.Observe(rtt.Seconds())
	}
	m.skew.Observe(skew.Seconds())
}

// StreamUnpaced counts one new v2 stream admitted without pacing: its node
// was Up or Suspect.
func (m *Metrics) StreamUnpaced() { m.unpaced.Inc() }

// StreamOpened counts one accepted heartbeat stream.
func (m *Metrics) StreamOpened() { m.opened.Inc() }

// StreamClosed counts the end of an accepted stream: ClosedEOF when
// graceful, ClosedError otherwise. Use StreamClosedHow to tell a reset by
// the sender from an error.
func (m *Metrics) StreamClosed(graceful bool) {
	if graceful {
		m.closed[ClosedEOF].Inc()
		return
	}
	m.closed[ClosedError].Inc()
}

// StreamClosedHow counts the end of an accepted stream; how is one of the
// Closed constants, any other string counts as ClosedError.
func (m *Metrics) StreamClosedHow(how string) {
	c, ok := m.closed[how]
	if !ok {
		c = m.closed[ClosedError]
	}
	c.Inc()
}

// Truncated counts one node-supplied string cut to the label cap; field is
// one of Fields (any other string is ignored: label values are a fixed set).
func (m *Metrics) Truncated(field string) {
	if c, ok := m.trunc[field]; ok {
		c.Inc()
	}
}

// trackerCollector turns one tracker.Summary per scrape into metrics.
type trackerCollector struct {
	t                                                *tracker.Tracker
	maxNodes                                         float64
	received, connected, nodes, inCons, inDisp, high *prometheus.Desc
	max, disrupted, dup, nodeUp, health              *prometheus.Desc
}

func newTrackerCollector(t *tracker.Tracker) *trackerCollector {
	return &trackerCollector{
		t:        t,
		maxNodes: float64(t.Config().MaxNodes),
		received: prometheus.NewDesc("heartbeat_heartbeats_received_total",
			"Heartbeats received and recorded by the tracker.", nil, nil),
		connected: prometheus.NewDesc("heartbeat_connected_nodes",
			"Nodes with an open heartbeat stream (2018: connected_nodes).", nil, nil),
		nodes: prometheus.NewDesc("heartbeat_nodes",
			"Tracked nodes by state: joining (stream open, no heartbeat yet), up, suspect, down, left, unknown (known before a restart, not seen since).", []string{"state"}, nil),
		inCons: prometheus.NewDesc("heartbeat_nodes_in_consensus",
			"Up nodes on the consensus head: the largest group of Up nodes sharing a head and height (2018: nodes_in_consensus).", nil, nil),
		inDisp: prometheus.NewDesc("heartbeat_nodes_in_dispute",
			"Up nodes not on the consensus head (2018: nodes_in_dispute).", nil, nil),
		high: prometheus.NewDesc("heartbeat_consensus_height",
			"Chain height of the consensus head; 0 when no node is Up.", nil, nil),
		max: prometheus.NewDesc("heartbeat_max_nodes",
			"The most nodes the aggregator tracks; new peers past it are rejected as too_many_nodes.", nil, nil),
		disrupted: prometheus.NewDesc("heartbeat_aggregator_disrupted",
			"1 while the aggregator is in disrupted mode: more than the disruption fraction of its live nodes fell silent at once, which points at the aggregator's own network, so no node is marked Down; else 0.", nil, nil),
		dup: prometheus.NewDesc("heartbeat_nodes_duplicate_identity",
			"Nodes whose streams keep superseding each other: two senders share one key.", nil, nil),
		nodeUp: prometheus.NewDesc("heartbeat_node_up",
			"1 while the node is Up, 0 while Suspect or Down, and after an aggregator restart while not yet seen again if it was Suspect or Down before; no series for a Joining or Left node, nor one not yet seen since a restart that was Up before. One series per tracked node (at most heartbeat_max_nodes).", []string{"peer_id"}, nil),
		health: prometheus.NewDesc("heartbeat_aggregator_health",
			"The local-health multiplier of every node's Suspect and Down thresholds: 1 when the aggregator is healthy, more while its own lag (heartbeat_aggregator_lag_seconds) would make beats look late.", nil, nil),
	}
}

func (c *trackerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.received, c.connected, c.nodes, c.inCons, c.inDisp, c.high, c.max, c.disrupted, c.dup, c.nodeUp, c.health} {
		ch <- d
	}
}

func (c *trackerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.t.Summary()
	ch <- prometheus.MustNewConstMetric(c.received, prometheus.CounterValue, float64(s.Beats))
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, float64(s.Connected))
	for _, st := range tracker.States() {
		ch <- prometheus.MustNewConstMetric(c.nodes, prometheus.GaugeValue, float64(s.ByState[st]), st.String())
	}
	ch <- prometheus.MustNewConstMetric(c.inCons, prometheus.GaugeValue, float64(s.InConsensus))
	ch <- prometheus.MustNewConstMetric(c.inDisp, prometheus.GaugeValue, float64(s.InDispute))
	ch <- prometheus.MustNewConstMetric(c.high, prometheus.GaugeValue, float64(s.ConsensusHeight))
	ch <- prometheus.MustNewConstMetric(c.max, prometheus.GaugeValue, c.maxNodes)
	disrupted := 0.0
	if s.Disrupted {
		disrupted = 1
	}
	ch <- prometheus.MustNewConstMetric(c.disrupted, prometheus.GaugeValue, disrupted)
	ch <- prometheus.MustNewConstMetric(c.dup, prometheus.GaugeValue, float64(s.DuplicateIdentity))
	ch <- prometheus.MustNewConstMetric(c.health, prometheus.GaugeValue, c.t.Health().Multiplier)
	for _, n := range c.t.AppendStates(nil) {
		var up float64
		switch n.State {
		case tracker.Up:
			up = 1
		case tracker.Suspect, tracker.Down:
		case tracker.Unknown:
			// Not judged until it beats or the startup grace ends. One
			// that was Suspect or Down before the restart keeps its 0, so
			// that its alert neither resolves nor pages again; one that
			// was Up has no series, so that a restart does not page for
			// every node that is still reconnecting.
			if !n.WasDown {
				continue
			}
		default:
			// Joining never beat and Left left on purpose: neither is a
			// node to page for.
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.nodeUp, prometheus.GaugeValue, up, n.Peer.String())
	}
}

// The values of the source label of heartbeat_aggregator_lag_seconds.
const (
	// LagSweep: how late the sweep's timer fired after its scheduled time.
	LagSweep = "sweep"
	// LagScheduler: the p99 goroutine scheduling latency since the last
	// sweep (runtime/metrics /sched/latencies:seconds).
	LagScheduler = "scheduler"
	// LagGC: the longest GC pause since the last sweep (/gc/pauses:seconds).
	LagGC = "gc"
)

// LagSources lists the values of the source label of
// heartbeat_aggregator_lag_seconds.
func LagSources() []string { return []string{LagSweep, LagScheduler, LagGC} }

// Lag records one sweep's lag from source, one of LagSources; any other
// source is ignored.
func (m *Metrics) Lag(source string, d time.Duration) {
	if o, ok := m.lag[source]; ok {
		o.Observe(d.Seconds())
	}
}
