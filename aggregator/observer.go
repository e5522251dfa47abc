package aggregator

import "time"

// observer is what the aggregator reports besides the tracker's own state
// (which aggregator/metrics collects from the tracker at scrape time). It
// is kept small so that the stream handling does not depend on how the
// counting is done; *metrics.Metrics implements it.
type observer interface {
	// Rejected counts one stream ended (or refused) for reason, one of
	// metrics.Reasons().
	Rejected(reason string)
	// StreamOpened counts one accepted heartbeat stream.
	StreamOpened()
	// StreamUnpaced counts one new v2 stream admitted without pacing
	// because the tracker held its node Up or Suspect.
	StreamUnpaced()
	// StreamClosedHow counts the end of an accepted stream: metrics.ClosedEOF,
	// ClosedReset (by the sender or the network) or ClosedError (by us).
	StreamClosedHow(how string)
	// Truncated counts one node-supplied string cut to MaxLabelBytes; field
	// is one of metrics.Fields().
	Truncated(field string)
	// BeatV2 observes a v2 Beat's reported RTT (0: none) and estimated skew.
	BeatV2(rtt, skew time.Duration)
	// Lag records one sweep's measured lag from source, one of
	// metrics.LagSources().
	Lag(source string, d time.Duration)
}
