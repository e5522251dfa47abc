package aggregator

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// The reasons a stream ends early, as label values of the rejection counter.
// The decoder's own reasons come from wire.Reason.
const (
	reasonNotJSON      = "not_json"
	reasonBadType      = "bad_type"
	reasonLineTooLong  = "line_too_long"
	reasonInvalidUTF8  = "invalid_utf8"
	reasonIdleTimeout  = "idle_timeout"
	reasonTooManyNodes = "too_many_nodes"
	reasonNotAllowed   = "not_allowed"
	reasonSuperseded   = "superseded"
)

var allReasons = []string{
	reasonNotJSON, reasonBadType, reasonLineTooLong, reasonInvalidUTF8,
	reasonIdleTimeout, reasonTooManyNodes, reasonNotAllowed, reasonSuperseded,
}

// observer is what the aggregator reports besides the tracker's own state.
// It is kept small so that the implementation (the metrics package) can
// change without touching the stream handling.
type observer interface {
	// Rejected counts one stream ended (or refused) for reason.
	Rejected(reason string)
	// StreamOpened counts one accepted heartbeat stream.
	StreamOpened()
	// StreamClosed counts the end of an accepted stream.
	StreamClosed(graceful bool)
}

// promObserver is the interim observer on the aggregator's registry.
type promObserver struct {
	rejected *prometheus.CounterVec
	opened   prometheus.Counter
	closed   *prometheus.CounterVec
}

func newPromObserver(reg prometheus.Registerer) (*promObserver, error) {
	o := &promObserver{
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "heartbeat_rejected_total",
			Help: "Heartbeat streams ended or refused by the aggregator, by reason.",
		}, []string{"reason"}),
		opened: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "heartbeat_streams_opened_total",
			Help: "Heartbeat streams accepted.",
		}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "heartbeat_streams_closed_total",
			Help: "Accepted heartbeat streams that ended, by how (graceful EOF or not).",
		}, []string{"how"}),
	}
	for _, r := range allReasons {
		o.rejected.WithLabelValues(r)
	}
	o.closed.WithLabelValues("eof")
	o.closed.WithLabelValues("error")
	for _, c := range []prometheus.Collector{o.rejected, o.opened, o.closed} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register aggregator metrics: %w", err)
		}
	}
	return o, nil
}

func (o *promObserver) Rejected(reason string) { o.rejected.WithLabelValues(reason).Inc() }
func (o *promObserver) StreamOpened()          { o.opened.Inc() }
func (o *promObserver) StreamClosed(graceful bool) {
	if graceful {
		o.closed.WithLabelValues("eof").Inc()
	} else {
		o.closed.WithLabelValues("error").Inc()
	}
}
