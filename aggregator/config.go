package aggregator

import (
	"fmt"
	"math"
	"time"

	"github.com/p2pbeat/heartbeat/aggregator/pacing"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/wire"
	"github.com/p2pbeat/heartbeat/wire2"
)

// Defaults applied by New (and HostOptions) to zero Config fields.
const (
	// DefaultMaxNodes is the number of nodes one aggregator tracks.
	DefaultMaxNodes = tracker.DefaultMaxNodes
	// DefaultMaxLineBytes bounds one heartbeat line, without its '\n':
	// wire.MaxLineBytes, the limit senders keep to.
	DefaultMaxLineBytes = wire.MaxLineBytes
	// DefaultIdleTimeout ends a stream on which no complete line arrived
	// for that long: ten times the legacy 3 s BeatPeriod.
	DefaultIdleTimeout = 30 * time.Second
	// DefaultSweepInterval is how often silence detection runs.
	DefaultSweepInterval = time.Second
	// DefaultDownRetention is how long a Down node keeps its slot against a
	// newcomer once MaxNodes is reached (see tracker.Config.DownRetention).
	DefaultDownRetention = tracker.DefaultDownRetention
	// DefaultRejectLogInterval is the per-peer interval between two logged
	// rejections; the ones in between are counted, not logged.
	DefaultRejectLogInterval = time.Minute
	// DefaultCloseTimeout is how long Close waits for senders to answer its
	// half-close: our sender answers within a round trip.
	DefaultCloseTimeout = time.Second
	// DefaultAcceptRate paces new v2 streams: past 200 in any second, a new
	// v2 stream gets GoAway.
	// An aggregator restart with 10,000 v2 senders is then absorbed in
	// about 50 s instead of one ReconnectPeriod.
	DefaultAcceptRate = 200
	// DefaultPacingWindow bounds GoAway's retry-after: a paced stream's
	// slot is at most this far ahead, shutdown's draw is uniform over it.
	DefaultPacingWindow = time.Minute
)

// DefaultProtocols are the protocols an aggregator serves by default.
var DefaultProtocols = []string{ProtocolV1, ProtocolV2}

// Limits on Config values that would make the aggregator useless or unsafe.
const (
	minLineBytes = 256     // below this not even the 2019 example fits
	maxLineBytes = 1 << 20 // a line buffer is reserved per stream
)

// Config sets the aggregator's limits and thresholds. Zero fields take the
// defaults; invalid values make New return an error that names the field.
type Config struct {
	// MaxNodes bounds the tracked nodes; past it a new peer's stream is
	// refused and counted as "too_many_nodes". Default 10,000
	// (tracker.DefaultMaxNodes; the tracker validates it). HostOptions
	// sizes the libp2p resource limits from it.
	MaxNodes int
	// MaxLineBytes bounds one line without its '\n'; a longer line, or that
	// many bytes with no newline, ends the stream ("line_too_long"). It is
	// also the memory reserved per stream. Default 8 KiB; 256 B to 1 MiB.
	MaxLineBytes int
	// IdleTimeout ends a stream on which no complete line arrived for that
	// long ("idle_timeout"). It is a wall-clock read deadline on the libp2p
	// stream, re-armed after each line. Default 30 s.
	IdleTimeout time.Duration
	// ExpectedPeriod is the senders' BeatPeriod. Default 3 s
	// (tracker.DefaultExpectedPeriod; the tracker validates it).
	ExpectedPeriod time.Duration
	// SuspectAfter, DownAfter and StartupGrace are the tracker's silence
	// thresholds; zero takes tracker's defaults (2x and 5x ExpectedPeriod,
	// grace DownAfter; a negative StartupGrace means none).
	SuspectAfter time.Duration
	DownAfter    time.Duration
	StartupGrace time.Duration
	// MinPeriod and MaxPeriod clamp each node's learned period (the
	// tracker's thresholds scale with it); zero takes tracker's defaults
	// (ExpectedPeriod/3 and 10x ExpectedPeriod).
	MinPeriod, MaxPeriod time.Duration
	// ReconnectAllowance delays Suspect after a node's stream ends by reset
	// or error, by this plus the node's period; default 12 s, negative none.
	ReconnectAllowance time.Duration
	// DisruptionFraction, DisruptionMinNodes and DisruptionMaxHold set the
	// disruption guard (no node turns Down while more than the fraction of
	// the live nodes is silent); defaults 0.55, 3 and 10 minutes.
	DisruptionFraction float64
	DisruptionMinNodes int
	DisruptionMaxHold  time.Duration
	// DuplicateWindow and DuplicateThreshold: more supersedes of one peer's
	// streams than the threshold within the window flag a duplicate
	// identity; defaults one minute and 3.
	DuplicateWindow    time.Duration
	DuplicateThreshold int
	// DownRetention: a full tracker gives a newcomer the slot of the node
	// Down the longest once it is Down longer than this; default 24 h.
	DownRetention time.Duration
	// SweepInterval is how often silence detection runs on the
	// aggregator's clock; it is the precision of Suspect/Down. Default 1 s,
	// at most ExpectedPeriod.
	SweepInterval time.Duration
	// RejectLogInterval is the minimum interval between two logged
	// rejections of the same peer; rejections are always counted. Default
	// one minute; negative logs every rejection.
	RejectLogInterval time.Duration
	// CloseTimeout is how long Close waits, after half-closing every stream
	// (the senders read EOF), for the senders to close their side before it
	// closes the streams anyway (a legacy sender never reads). Default 1 s.
	CloseTimeout time.Duration
	// Protocols lists the protocols served: "v1" (fil/heartbeat/1.0.0,
	// JSON lines) and "v2" (/fil/heartbeat/2.0.0, CBOR frames with acks).
	// Default both.
	Protocols []string
	// AcceptRate is how many new v2 streams the aggregator admits in any
	// one second (package pacing: a sliding window, no burst beyond it;
	// rounded down to a whole number, a rate below 1 admits one stream per
	// 1/AcceptRate). Past it a new v2 stream gets GoAway whose retry-after
	// is its slot: the earliest free one, slots spaced
	// 1/(pacing.Headroom·AcceptRate) apart, at most PacingWindow ahead (a
	// stream beyond is told PacingWindow); it is counted as "paced". A
	// stream from a node the tracker holds Up or Suspect is not paced
	// (counted by heartbeat_v2_streams_unpaced_total). A full tracker's
	// GoAway draws the retry-after uniformly from [0, PacingWindow),
	// shutdown's from [0, min(PacingWindow, StartupGrace/2))
	// (pacing.ShutdownSpread). Defaults 200/s and one minute; a negative
	// AcceptRate turns pacing off, a positive one is within
	// [pacing.MinRate, pacing.MaxRate]. v1 streams are never paced (a v1
	// sender cannot be told when to come back).
	AcceptRate   float64
	PacingWindow time.Duration
}

// ConfigError is an invalid Config field (the aggregator's own; an invalid
// tracker field is a tracker.ConfigError, wrapped): Field names it by its
// Go name ("IdleTimeout"), Reason says why, naming by their Go names the
// fields it was checked against.
type ConfigError struct {
	Field, Reason string
}

func (e *ConfigError) Error() string { return "aggregator: Config." + e.Field + " " + e.Reason }

func configErr(field, format string, args ...any) error {
	return &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// withDefaults fills zero fields and validates, naming the bad field. The
// tracker owns the fields it takes (trackerConfig): it validates them and
// applies its defaults, and the aggregator reads back only the values its
// own checks need, so no rule is written twice.
func (c Config) withDefaults() (Config, error) {
	t, err := tracker.New(c.trackerConfig(), time.Time{})
	if err != nil {
		return c, fmt.Errorf("aggregator: %w", err)
	}
	tc := t.Config()
	c.MaxNodes, c.ExpectedPeriod = tc.MaxNodes, tc.ExpectedPeriod
	if c.MaxLineBytes == 0 {
		c.MaxLineBytes = DefaultMaxLineBytes
	}
	if c.MaxLineBytes < minLineBytes || c.MaxLineBytes > maxLineBytes {
		return c, configErr("MaxLineBytes", "(%d) must be between %d and %d", c.MaxLineBytes, minLineBytes, maxLineBytes)
	}
	if c.IdleTimeout < 0 {
		return c, configErr("IdleTimeout", "(%v) must not be negative", c.IdleTimeout)
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.IdleTimeout <= c.ExpectedPeriod {
		return c, configErr("IdleTimeout", "(%v) must be longer than ExpectedPeriod (%v), or beating senders would be cut off", c.IdleTimeout, c.ExpectedPeriod)
	}
	if c.SweepInterval < 0 {
		return c, configErr("SweepInterval", "(%v) must not be negative", c.SweepInterval)
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = min(DefaultSweepInterval, c.ExpectedPeriod)
	}
	if c.SweepInterval > c.ExpectedPeriod {
		return c, configErr("SweepInterval", "(%v) must not exceed ExpectedPeriod (%v)", c.SweepInterval, c.ExpectedPeriod)
	}
	if c.RejectLogInterval == 0 {
		c.RejectLogInterval = DefaultRejectLogInterval
	}
	if c.CloseTimeout < 0 {
		return c, configErr("CloseTimeout", "(%v) must not be negative", c.CloseTimeout)
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = DefaultCloseTimeout
	}
	if len(c.Protocols) == 0 {
		c.Protocols = DefaultProtocols
	}
	seen := map[string]bool{}
	for _, p := range c.Protocols {
		if p != ProtocolV1 && p != ProtocolV2 || seen[p] {
			return c, configErr("Protocols", "(%q) must list %q and/or %q, each once", c.Protocols, ProtocolV1, ProtocolV2)
		}
		seen[p] = true
	}
	c.Protocols = append([]string(nil), c.Protocols...)
	switch {
	case c.AcceptRate == 0:
		c.AcceptRate = DefaultAcceptRate
	case c.AcceptRate < 0:
		c.AcceptRate = -1
	}
	if math.IsNaN(c.AcceptRate) || math.IsInf(c.AcceptRate, 0) {
		return c, configErr("AcceptRate", "(%v) must be a finite number", c.AcceptRate)
	}
	if c.AcceptRate > 0 && (c.AcceptRate < pacing.MinRate || c.AcceptRate > pacing.MaxRate) {
		return c, configErr("AcceptRate", "(%v) must be between %g and %g a second, or negative (pacing off)", c.AcceptRate, float64(pacing.MinRate), float64(pacing.MaxRate))
	}
	if c.PacingWindow < 0 || c.PacingWindow > wire2.MaxRetryAfter {
		return c, configErr("PacingWindow", "(%v) must be between 0 and %v", c.PacingWindow, wire2.MaxRetryAfter)
	}
	if c.PacingWindow == 0 {
		c.PacingWindow = DefaultPacingWindow
	}
	return c, nil
}

// trackerConfig is the part of c the tracker takes.
func (c Config) trackerConfig() tracker.Config {
	return tracker.Config{
		ExpectedPeriod: c.ExpectedPeriod,
		SuspectAfter:   c.SuspectAfter,
		DownAfter:      c.DownAfter,
		StartupGrace:   c.StartupGrace,
		MaxNodes:       c.MaxNodes,

		MinPeriod:          c.MinPeriod,
		MaxPeriod:          c.MaxPeriod,
		ReconnectAllowance: c.ReconnectAllowance,
		DisruptionFraction: c.DisruptionFraction,
		DisruptionMinNodes: c.DisruptionMinNodes,
		DisruptionMaxHold:  c.DisruptionMaxHold,
		DuplicateWindow:    c.DuplicateWindow,
		DuplicateThreshold: c.DuplicateThreshold,
		DownRetention:      c.DownRetention,
	}
}

// withTracker copies the tracker's fields back from tc, defaults applied,
// so that Config() shows what is in force.
func (c Config) withTracker(tc tracker.Config) Config {
	c.SuspectAfter, c.DownAfter, c.StartupGrace = tc.SuspectAfter, tc.DownAfter, tc.StartupGrace
	c.MinPeriod, c.MaxPeriod, c.ReconnectAllowance = tc.MinPeriod, tc.MaxPeriod, tc.ReconnectAllowance
	c.DisruptionFraction, c.DisruptionMinNodes, c.DisruptionMaxHold = tc.DisruptionFraction, tc.DisruptionMinNodes, tc.DisruptionMaxHold
	c.DuplicateWindow, c.DuplicateThreshold, c.DownRetention = tc.DuplicateWindow, tc.DuplicateThreshold, tc.DownRetention
	return c
}
