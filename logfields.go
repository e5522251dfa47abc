package heartbeat

import (
	"errors"
	"strings"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/p2pbeat/heartbeat/fsm"
)

// logFields are a record's key/value pairs (docs/logging.md lists them):
// attempt; outage in seconds (a number, for queries) and failures on
// connection lines; the error on one line (libp2p's dial errors list one
// address per line); and, for a reset stream, its cause.
func logFields(r fsm.LogRecord) []any {
	args := []any{"attempt", r.Attempt}
	if r.Kind == fsm.LogConnectFailed || r.Kind == fsm.LogConnected {
		args = append(args, "outage", r.Outage.Seconds(), "failures", r.Failures)
	}
	if r.Kind == fsm.LogRemoteReset {
		args = append(args, "cause", resetCause(r.Err))
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
