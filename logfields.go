package heartbeat

import (
	"errors"
	"strings"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/internal/safetext"
)

// logFields are a record's key/value pairs (docs/logging.md lists them):
// attempt; outage in seconds (a number, for queries) and failures on
// connection lines; the error on one line (libp2p's dial errors list one
// address per line); for a reset stream, its cause; for a GoAway the
// retry-after asked and the wait granted (seconds) and the reason (quoted
// if not printable: it is the aggregator's text); for an asked beat period,
// the period asked and the one used (seconds).
func logFields(r fsm.LogRecord) []any {
	args := []any{"attempt", r.Attempt}
	switch r.Kind {
	case fsm.LogConnectFailed, fsm.LogConnected, fsm.LogProtocolError:
		args = append(args, "outage", r.Outage.Seconds(), "failures", r.Failures)
	case fsm.LogRemoteReset:
		args = append(args, "cause", resetCause(r.Err))
	case fsm.LogGoAway:
		args = append(args, "retry_after", r.Asked.Seconds(), "wait", r.Granted.Seconds(), "reason", printable(r.Reason))
	case fsm.LogBeatPeriod:
		args = append(args, "asked_period", r.Asked.Seconds(), "beat_period", r.Granted.Seconds())
	}
	if r.Err != nil {
		args = append(args, "error", strings.Join(strings.Fields(r.Err.Error()), " "))
	}
	return args
}

// The causes of a reset stream, as the muxer reports them.
const (
	// causeAggregatorReset: the aggregator reset this stream (it refused
	// the node, or a line; or it superseded the stream).
	causeAggregatorReset = "aggregator_reset"
	// causeAggregatorClosedConn: the aggregator closed the whole connection.
	causeAggregatorClosedConn = "aggregator_closed_connection"
	// causeConnectionLost: the connection died under the stream: a
	// keepalive timeout, a network reset, a local close.
	causeConnectionLost = "connection_lost"
)

func resetCause(err error) string {
	var se *network.StreamError
	if errors.As(err, &se) && se.Remote {
		return causeAggregatorReset
	}
	var ce *network.ConnError
	if errors.As(err, &ce) && ce.Remote {
		return causeAggregatorClosedConn
	}
	return causeConnectionLost
}

// printable is a peer's text as it may be logged (safetext.ForLog): it
// cannot forge log lines or send terminal escapes.
func printable(v string) string { return safetext.ForLog(v) }
