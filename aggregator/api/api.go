// Package api is the aggregator's HTTP interface:
//
//	GET /metrics       Prometheus exposition of the gatherer passed in
//	GET /api/nodes     JSON array of Node, sorted by peer id; ?state=down (or any
//	                   State name) keeps only the nodes in that state
//	GET /api/summary   JSON Summary: state counts by name, consensus, totals
//	GET /healthz       200 "ok"
//
// HEAD is served wherever GET is; any other method gets 405 with an Allow
// header, an unknown path 404. The handler only reads the tracker: silence
// detection (Sweep) belongs to whoever owns the tracker, so serving a request
// never changes a node's state.
package api

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/wire"
)

// Node is one element of /api/nodes.
type Node struct {
	// PeerID is the node's identity: its libp2p peer id in text form.
	PeerID string `json:"peer_id"`
	// Nickname, Head, Height and Genesis are the labels of the node's last
	// heartbeat, as it sent them.
	Nickname string `json:"nickname"`
	Head     string `json:"head"`
	Height   uint64 `json:"height"`
	// MinerAddress is the node's miner address, "" for no address: every
	// spelling of the zero address on the wire ("", "empty", "<empty>") is
	// normalised to "" (wire.MinerAddressOf).
	MinerAddress string `json:"miner_address"`
	// MinerAddressRaw is the miner address exactly as the node sent it.
	MinerAddressRaw string `json:"miner_address_raw"`
	Genesis         string `json:"genesis"`
	// State is "joining", "up", "suspect", "down" or "left".
	State string `json:"state"`
	// Since is when the node entered State (RFC 3339, UTC).
	Since string `json:"since"`
	// FirstSeen is when the aggregator first heard of the node.
	FirstSeen string `json:"first_seen"`
	// LastSeen is the time of the last heartbeat; "" before the first.
	LastSeen string `json:"last_seen"`
	// SilenceSeconds is the time since LastSeen at the response's time; 0
	// before the first heartbeat.
	SilenceSeconds float64 `json:"silence_seconds"`
	// Beats counts the node's heartbeats.
	Beats uint64 `json:"beats"`
	// Streams counts the streams the node opened (reconnects + 1).
	Streams uint64 `json:"streams"`
	// Stream is "none", "open", "closed" or "reset".
	Stream string `json:"stream"`
}

// Summary is the body of /api/summary.
type Summary struct {
	// Time is the aggregator's clock when the summary was made.
	Time string `json:"time"`
	// Nodes is the number of tracked nodes, every state included.
	Nodes int `json:"nodes"`
	// Connected is the number of nodes with an open stream.
	Connected int `json:"connected"`
	// States counts the nodes by state name; every name is present.
	States map[string]int `json:"states"`
	// HeartbeatsReceived counts every heartbeat the tracker accepted.
	HeartbeatsReceived uint64 `json:"heartbeats_received"`
	// ConsensusHead and ConsensusHeight identify the consensus group ("" and
	// 0 when no node is Up); see the tracker package for the tie rules.
	ConsensusHead   string `json:"consensus_head"`
	ConsensusHeight uint64 `json:"consensus_height"`
	// InConsensus and InDispute split the Up nodes.
	InConsensus int `json:"in_consensus"`
	InDispute   int `json:"in_dispute"`
	// MaxNodes is the tracker's limit.
	MaxNodes int `json:"max_nodes"`
}

// Timestamps are RFC 3339 in UTC, with fractional seconds when not zero.
const timeFormat = time.RFC3339Nano

// NewHandler serves the tracker t, the metrics of g and a health check.
// now is the aggregator's clock, used for the response times and the
// silences; pass the same clock the tracker is fed with.
func NewHandler(t *tracker.Tracker, g prometheus.Gatherer, now func() time.Time) http.Handler {
	h := &handler{t: t, now: now}
	mux := http.NewServeMux()
	// A "GET" pattern also matches HEAD; the mux answers other methods
	// with 405 and an Allow header.
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		// Scrapes are O(n) in the nodes: a few at a time is plenty.
		MaxRequestsInFlight: 4,
	}))
	mux.HandleFunc("GET /api/nodes", h.nodes)
	mux.HandleFunc("GET /api/summary", h.summary)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

type handler struct {
	t   *tracker.Tracker
	now func() time.Time
}

func (h *handler) nodes(w http.ResponseWriter, r *http.Request) {
	var (
		only   tracker.State
		filter bool
	)
	if q := r.URL.Query().Get("state"); q != "" {
		st, ok := parseState(q)
		if !ok {
			http.Error(w, "unknown state "+quote(q)+": want joining, up, suspect, down or left", http.StatusBadRequest)
			return
		}
		only, filter = st, true
	}
	now := h.now()
	nodes := h.t.Nodes(nil)
	out := make([]Node, 0, len(nodes))
	for i := range nodes {
		n := &nodes[i]
		if filter && n.State != only {
			continue
		}
		j := Node{
			PeerID:          n.Peer.String(),
			Nickname:        n.Nickname,
			Head:            n.Head,
			Height:          n.Height,
			MinerAddress:    wire.MinerAddressOf(n.MinerAddress),
			MinerAddressRaw: n.MinerAddress,
			Genesis:         n.Genesis,
			State:           n.State.String(),
			Since:           n.Since.UTC().Format(timeFormat),
			FirstSeen:       n.FirstSeen.UTC().Format(timeFormat),
			Beats:           n.Beats,
			Streams:         n.Streams,
			Stream:          n.Stream.String(),
		}
		if !n.LastSeen.IsZero() {
			j.LastSeen = n.LastSeen.UTC().Format(timeFormat)
			j.SilenceSeconds = max(0, now.Sub(n.LastSeen).Seconds())
		}
		out = append(out, j)
	}
	writeJSON(w, out)
}

func (h *handler) summary(w http.ResponseWriter, _ *http.Request) {
	s := h.t.Summary()
	out := Summary{
		Time:               h.now().UTC().Format(timeFormat),
		Nodes:              s.Nodes,
		Connected:          s.Connected,
		States:             make(map[string]int, len(s.ByState)),
		HeartbeatsReceived: s.Beats,
		ConsensusHead:      s.ConsensusHead,
		ConsensusHeight:    s.ConsensusHeight,
		InConsensus:        s.InConsensus,
		InDispute:          s.InDispute,
		MaxNodes:           h.t.Config().MaxNodes,
	}
	for _, st := range tracker.States() {
		out.States[st.String()] = s.ByState[st]
	}
	writeJSON(w, out)
}

func parseState(name string) (tracker.State, bool) {
	for _, st := range tracker.States() {
		if st.String() == name {
			return st, true
		}
	}
	return 0, false
}

// quote bounds and quotes a client-supplied value for an error message.
func quote(s string) string {
	if len(s) > 32 {
		s = s[:32] + "..."
	}
	b, _ := json.Marshal(s)
	return string(b)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	// Node-supplied text is data, not HTML: escaping would turn each "<"
	// into 6 bytes.
	enc.SetEscapeHTML(false)
	// Our types always encode; an error here is the client going away,
	// with the status already sent: nothing useful left to do.
	_ = enc.Encode(v)
}

// Server timeouts and limits set by NewServer. A response is at most a few
// MB (10,000 nodes), written well within WriteTimeout on any link a
// Prometheus server or an operator uses.
const (
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 10 * time.Second
	WriteTimeout      = 30 * time.Second
	IdleTimeout       = 2 * time.Minute
	MaxHeaderBytes    = 16 << 10
)

// NewServer returns an http.Server for h on addr with every timeout set, so
// a slow or idle client cannot hold a connection (and its goroutine)
// forever. The caller chooses addr; the CLI defaults to a loopback address.
func NewServer(addr string, h http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}
