// Package api is the aggregator's HTTP interface:
//
//	GET /metrics       Prometheus exposition of the registry passed in
//	GET /api/nodes     JSON NodePage: one page of Node, sorted by peer id;
//	                   ?limit=N (1..MaxLimit, default DefaultLimit) bounds the page,
//	                   ?cursor=C continues after a page (its "next", also sent as a
//	                   Link header), ?state=down (or any State name) keeps only the
//	                   nodes in that state
//	GET /api/summary   JSON Summary: state counts by name, consensus, totals
//	GET /api/nodes/{peer}, GET /api/nodes/{peer}/history, DELETE /api/nodes/{peer}
//	                   one node's record, flips and uptime; its history; retiring it
//	                   (nodes.go; the store's parts with WithStore, DELETE with WithRetire)
//	GET /healthz       200 "ok"
//
// HEAD is served wherever GET is; any other method gets 405 with an Allow
// header, an unknown path 404. The handler only reads the tracker: silence
// detection (Sweep) belongs to whoever owns the tracker, so serving a request
// never changes a node's state.
//
// # Bounds
//
// Memory per request is bounded, whatever the fleet or the clients do: at
// most MaxInFlight /api requests are served at once (more get 503 with
// Retry-After, counted in heartbeat_api_requests_refused_total), a page
// holds at most MaxLimit nodes, and it is encoded node by node onto the
// connection (no HTML escaping: a "<" stays one byte) rather than built in
// memory. Node-supplied strings are capped where they enter the aggregator
// (see aggregator.MaxLabelBytes), so a page's size is bounded too. /metrics
// has its own bound (MaxScrapesInFlight).
package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/p2pbeat/heartbeat/aggregator/store"
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
	// State is "joining", "up", "suspect", "down", "left" or "unknown"
	// (known before the aggregator restarted, not seen since).
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
	// PeriodSeconds is the node's beat period as the tracker learned it;
	// its Suspect and Down thresholds scale with it.
	PeriodSeconds float64 `json:"period_seconds"`
	// DuplicateIdentity is true while the node's streams keep superseding
	// each other: two senders share its key.
	DuplicateIdentity bool `json:"duplicate_identity"`
	// Protocol is the heartbeat protocol of the node's last heartbeat: 1
	// (fil/heartbeat/1.0.0) or 2 (/fil/heartbeat/2.0.0); 0 before the
	// first.
	Protocol uint8 `json:"protocol"`
	// The rest is reported by protocol v2 nodes only (zero for v1).
	// RTTSeconds is the round trip the node measured last (Beat written to
	// Ack read); SkewSeconds its clock minus the aggregator's, estimated
	// from its last Beat.
	RTTSeconds  float64 `json:"rtt_seconds"`
	SkewSeconds float64 `json:"skew_seconds"`
	// Restarts counts the node's new boot ids; BootID is the current one
	// (32 hex digits) and BootTime when it was first seen ("" for v1).
	Restarts uint64 `json:"restarts"`
	BootID   string `json:"boot_id"`
	BootTime string `json:"boot_time"`
	// LostBeats counts beats missing from the node's seq numbers.
	LostBeats uint64 `json:"lost_beats"`
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
	// Disrupted is true while most live nodes are silent at once (the
	// aggregator's own network or a stall, most likely): no node is marked
	// Down meanwhile. DisruptedSince is when it began; "" when not.
	Disrupted      bool   `json:"disrupted"`
	DisruptedSince string `json:"disrupted_since"`
	// DuplicateIdentity counts the nodes flagged as sharing a key.
	DuplicateIdentity int `json:"duplicate_identity"`
	// HealthMultiplier scales every node's Suspect and Down thresholds:
	// 1 when the aggregator is healthy, more while its own lag (LagSeconds,
	// the largest of the recent window) would make beats look late.
	HealthMultiplier float64 `json:"health_multiplier"`
	LagSeconds       float64 `json:"lag_seconds"`
}

// NodePage is the body of /api/nodes.
type NodePage struct {
	// Next is the cursor of the next page ("" on the last page): pass it as
	// ?cursor= with the same state filter. It is opaque to clients (today
	// the last peer id of this page, as base64url bytes): a page starts
	// after it in peer id order, so nodes that come and go between two
	// requests never make a walk repeat or skip one that stayed.
	Next string `json:"next"`
	// Nodes is the page, sorted by peer id; [] when empty, never null.
	Nodes []Node `json:"nodes"`
}

// Limits of the HTTP API. The aggregator's /api responses are bounded by
// these and by the label cap, not by the number of nodes.
const (
	// DefaultLimit is the page size of /api/nodes without ?limit.
	DefaultLimit = 500
	// MaxLimit is the largest ?limit accepted; more gets 400.
	MaxLimit = 1000
	// MaxInFlight bounds the /api requests served at once; past it a request
	// gets 503 with Retry-After: 1, counted in
	// heartbeat_api_requests_refused_total.
	MaxInFlight = 8
	// MaxScrapesInFlight bounds concurrent /metrics scrapes (O(n) in the
	// nodes); past it promhttp answers 503, counted in
	// promhttp_metric_handler_requests_total{code="503"}.
	MaxScrapesInFlight = 4
)

// Timestamps are RFC 3339 in UTC, with fractional seconds when not zero.
const timeFormat = time.RFC3339Nano

// NewHandler serves the tracker t, the metrics of reg and a health check,
// and registers the API's own metrics on reg (a second handler on the same
// registry shares them):
//
//	heartbeat_api_requests_in_flight       /api requests being served
//	heartbeat_api_requests_refused_total   /api requests refused with 503 (MaxInFlight)
//	promhttp_metric_handler_requests_*     scrapes of /metrics, by code (503 past MaxScrapesInFlight)
//
// now is the aggregator's clock, used for the response times and the
// silences; pass the same clock the tracker is fed with. Each handler
// bounds its own requests (MaxInFlight). It panics if reg holds a
// different kind of collector under one of these names.
func NewHandler(t *tracker.Tracker, reg *prometheus.Registry, now func() time.Time, opts ...Option) http.Handler {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	h := &handler{t: t, now: now, slots: make(chan struct{}, MaxInFlight)}
	h.inFlight = register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "heartbeat_api_requests_in_flight",
		Help: "HTTP /api requests being served.",
	}))
	h.refused = register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "heartbeat_api_requests_refused_total",
		Help: "HTTP /api requests refused with 503 because MaxInFlight were being served.",
	}))
	mux := http.NewServeMux()
	// A "GET" pattern also matches HEAD; the mux answers other methods
	// with 405 and an Allow header.
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{MaxRequestsInFlight: MaxScrapesInFlight})
	mux.Handle("GET /metrics", instrumentMetricHandler(reg, metrics))
	mux.Handle("GET /api/nodes", h.bounded(h.nodes))
	mux.Handle("GET /api/summary", h.bounded(h.summary))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write([]byte("ok\n"))
	})
	h.nodeRoutes(mux, &o)
	for _, m := range o.mounts {
		for _, p := range m.patterns {
			mux.Handle(p, m.h)
		}
	}
	return mux
}

// Option configures NewHandler.
type Option func(*options)

type options struct {
	mounts []mount
	store  store.Backend
	retire func(ctx context.Context, id peer.ID, reason string) error
	token  string
}

type mount struct {
	patterns []string
	h        http.Handler
}

// WithRoutes serves each of the ServeMux patterns with h, beside the API's
// own routes (the aggregator mounts its dashboard with web.Routes). There
// is no catch-all: other paths keep their 404 and 405 answers. A pattern
// that conflicts with the API's makes NewHandler panic, as ServeMux does.
func WithRoutes(patterns []string, h http.Handler) Option {
	return func(o *options) { o.mounts = append(o.mounts, mount{patterns, h}) }
}

// register registers c on reg, or returns the collector of that name
// already there (a second handler on the same registry).
func register[C prometheus.Collector](reg *prometheus.Registry, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(C); ok {
				return old
			}
		}
		panic(fmt.Sprintf("api: register metric: %v", err))
	}
	return c
}

// instrumentMetricHandler is promhttp.InstrumentMetricHandler, tolerating
// a second handler on the same registry.
func instrumentMetricHandler(reg *prometheus.Registry, h http.Handler) http.Handler {
	cnt := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "promhttp_metric_handler_requests_total",
		Help: "Total number of scrapes by HTTP status code.",
	}, []string{"code"}))
	// Initialize the most likely HTTP status codes, as promhttp does.
	for _, code := range []string{"200", "500", "503"} {
		cnt.WithLabelValues(code)
	}
	gge := register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "promhttp_metric_handler_requests_in_flight",
		Help: "Current number of scrapes being served.",
	}))
	return promhttp.InstrumentHandlerInFlight(gge, promhttp.InstrumentHandlerCounter(cnt, h))
}

type handler struct {
	t        *tracker.Tracker
	now      func() time.Time
	slots    chan struct{} // one token per /api request in flight
	inFlight prometheus.Gauge
	refused  prometheus.Counter
	snaps    sync.Pool // *[]tracker.Node, reused between requests
	store    store.Backend
	retire   func(ctx context.Context, id peer.ID, reason string) error
	token    string
}

// bounded serves f if fewer than MaxInFlight /api requests are in flight,
// and refuses with 503 otherwise: waiting would hold the client's
// connection and goroutine for nothing.
func (h *handler) bounded(f http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case h.slots <- struct{}{}:
		default:
			h.refused.Inc()
			w.Header().Set("Retry-After", "1")
			http.Error(w, "too many API requests in flight; retry later", http.StatusServiceUnavailable)
			return
		}
		h.inFlight.Inc()
		defer func() {
			h.inFlight.Dec()
			<-h.slots
		}()
		f(w, r)
	})
}

// pageQuery is the parsed query of /api/nodes.
type pageQuery struct {
	state  tracker.State
	filter bool
	limit  int
	after  peer.ID // "" for the first page
}

func parsePageQuery(q url.Values) (pageQuery, error) {
	p := pageQuery{limit: DefaultLimit}
	if v := q.Get("state"); v != "" {
		st, ok := parseState(v)
		if !ok {
			return p, fmt.Errorf("unknown state %s: want joining, up, suspect, down, left or unknown", quote(v))
		}
		p.state, p.filter = st, true
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxLimit {
			return p, fmt.Errorf("limit %s: want a whole number from 1 to %d", quote(v), MaxLimit)
		}
		p.limit = n
	}
	if v := q.Get("cursor"); v != "" {
		// A cursor is a peer id's bytes: anything else is no page of ours,
		// and an empty answer would wrongly say the list ended.
		b, err := base64.RawURLEncoding.DecodeString(v)
		if err != nil || len(b) == 0 {
			return p, fmt.Errorf("cursor %s: not a cursor from a previous page", quote(v))
		}
		id, err := peer.IDFromBytes(b)
		if err != nil {
			return p, fmt.Errorf("cursor %s: not a cursor from a previous page", quote(v))
		}
		p.after = id
	}
	return p, nil
}

func (h *handler) nodes(w http.ResponseWriter, r *http.Request) {
	q, err := parsePageQuery(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	now := h.now()
	page, next := h.page(q)
	if next != "" {
		u := url.URL{Path: r.URL.Path}
		v := url.Values{"cursor": {next}, "limit": {strconv.Itoa(q.limit)}}
		if q.filter {
			v.Set("state", q.state.String())
		}
		u.RawQuery = v.Encode()
		w.Header().Set("Link", "<"+u.String()+">; rel=\"next\"")
	}
	setJSONHeaders(w)
	// Streamed: the page is encoded node by node into fixed buffers, one
	// node per line, never built as one value in memory.
	bw := bufio.NewWriterSize(w, 32<<10)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	put := func(v any, after string) error {
		buf.Reset()
		if err := enc.Encode(v); err != nil {
			return err
		}
		_, _ = bw.Write(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
		_, err := bw.WriteString(after)
		return err
	}
	_, _ = bw.WriteString(`{"next":`)
	_ = put(next, ",\n\"nodes\":[\n")
	var j Node
	for i := range page {
		toNode(&page[i], now, &j)
		sep := ",\n"
		if i == len(page)-1 {
			sep = "\n"
		}
		// Our types always encode; an error here is the client going away,
		// with the status already sent: nothing useful left to do.
		if err := put(&j, sep); err != nil {
			break
		}
	}
	_, _ = bw.WriteString("]}\n")
	_ = bw.Flush()
	clear(page) // drop the string references before the slice is pooled
	p := page[:0]
	h.snaps.Put(&p)
}

// page returns up to q.limit nodes after q.after that pass the filter, in a
// pooled slice the caller puts back, and the cursor of the next page ("" if
// none). The tracker snapshot it reads is reused across requests.
func (h *handler) page(q pageQuery) ([]tracker.Node, string) {
	sp, _ := h.snaps.Get().(*[]tracker.Node)
	if sp == nil {
		sp = new([]tracker.Node)
	}
	all := h.t.Nodes((*sp)[:0]) // sorted by peer id
	i, _ := slices.BinarySearchFunc(all, q.after, func(n tracker.Node, id peer.ID) int {
		return strings.Compare(string(n.Peer), string(id))
	})
	if q.after != "" && i < len(all) && all[i].Peer == q.after {
		i++
	}
	// Compact the page to the front of the snapshot: it is what the caller
	// encodes; the rest is cleared so the pool holds no stale strings.
	n, more := 0, false
	for ; i < len(all); i++ {
		if q.filter && all[i].State != q.state {
			continue
		}
		if n == q.limit {
			more = true
			break
		}
		all[n] = all[i]
		n++
	}
	clear(all[n:])
	next := ""
	if more {
		next = cursorAfter(all[n-1].Peer)
	}
	*sp = all
	return all[:n], next
}

// cursorAfter is the cursor of the page that starts after id: its bytes in
// unpadded base64url, safe in a query string without escaping.
func cursorAfter(id peer.ID) string { return base64.RawURLEncoding.EncodeToString([]byte(id)) }

func toNode(n *tracker.Node, now time.Time, j *Node) {
	*j = Node{
		PeerID:            n.Peer.String(),
		Nickname:          n.Nickname,
		Head:              n.Head,
		Height:            n.Height,
		MinerAddress:      wire.MinerAddressOf(n.MinerAddress),
		MinerAddressRaw:   n.MinerAddress,
		Genesis:           n.Genesis,
		State:             n.State.String(),
		Since:             n.Since.UTC().Format(timeFormat),
		FirstSeen:         n.FirstSeen.UTC().Format(timeFormat),
		Beats:             n.Beats,
		Streams:           n.Streams,
		Stream:            n.Stream.String(),
		PeriodSeconds:     n.Period.Seconds(),
		DuplicateIdentity: n.DuplicateIdentity,
		Protocol:          n.Protocol,
		RTTSeconds:        n.RTT.Seconds(),
		SkewSeconds:       n.Skew.Seconds(),
		Restarts:          n.Restarts,
		LostBeats:         n.LostBeats,
	}
	if !n.BootTime.IsZero() {
		j.BootID = hex.EncodeToString(n.BootID[:])
		j.BootTime = n.BootTime.UTC().Format(timeFormat)
	}
	if !n.LastSeen.IsZero() {
		j.LastSeen = n.LastSeen.UTC().Format(timeFormat)
		j.SilenceSeconds = max(0, now.Sub(n.LastSeen).Seconds())
	}
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
		Disrupted:          s.Disrupted,
		DuplicateIdentity:  s.DuplicateIdentity,
	}
	health := h.t.Health()
	out.HealthMultiplier, out.LagSeconds = health.Multiplier, health.Lag.Seconds()
	if s.Disrupted {
		out.DisruptedSince = s.DisruptedSince.UTC().Format(timeFormat)
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

func setJSONHeaders(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
}

func writeJSON(w http.ResponseWriter, v any) {
	setJSONHeaders(w)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	// Node-supplied text is data, not HTML: escaping would turn each "<"
	// into 6 bytes.
	enc.SetEscapeHTML(false)
	// Our types always encode; an error here is the client going away,
	// with the status already sent: nothing useful left to do.
	_ = enc.Encode(v)
}

// Server timeouts and limits set by NewServer. A response is at most one
// page (MaxLimit nodes of capped labels, about 1.5 MB), written well within
// WriteTimeout on any link a Prometheus server or an operator uses.
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
