package api

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/aggregator/store"
)

// The per-node routes (see the package documentation):
//
//	GET    /api/nodes/{peer}          NodeDetail: the record, its last flips, uptime over 1 h, 24 h, 7 d
//	GET    /api/nodes/{peer}/history  History: flips and height samples in ?from=&to= (RFC 3339),
//	                                  one page of each (?limit=, ?flips_after=, ?samples_after=)
//	DELETE /api/nodes/{peer}          retire the node (204); loopback only, or a bearer token
//	                                  with WithAdminToken
const (
	// RecentFlips is how many flips GET /api/nodes/{peer} returns.
	RecentFlips = 20
	// DefaultHistoryRange is the range of /history without from.
	DefaultHistoryRange = 24 * time.Hour
)

// UptimeWindows are the windows of NodeDetail.Uptime, by name.
var UptimeWindows = []struct {
	Name string
	D    time.Duration
}{{"1h", time.Hour}, {"24h", 24 * time.Hour}, {"7d", 7 * 24 * time.Hour}}

// NodeDetail is the body of GET /api/nodes/{peer}.
type NodeDetail struct {
	// Node is the live record when the aggregator tracks the node; else
	// the store's (State "retired", or a node another aggregator wrote).
	Node Node `json:"node"`
	// Tracked says whether Node is the tracker's live record.
	Tracked bool `json:"tracked"`
	// Flips are the last RecentFlips flips, newest first ([] without a
	// store).
	Flips []Flip `json:"flips"`
	// Uptime is the fraction of each window (UptimeWindows) the node was
	// Up, from the flips; null without a store or for a window with no
	// known state.
	Uptime map[string]*float64 `json:"uptime"`
}

// Flip is one state transition in the API.
type Flip struct {
	At         string `json:"at"`
	From       string `json:"from"`
	To         string `json:"to"`
	Reason     string `json:"reason"`
	Aggregator string `json:"aggregator"`
}

// Sample is one height sample in the API.
type Sample struct {
	At     string `json:"at"`
	Height uint64 `json:"height"`
}

// History is the body of GET /api/nodes/{peer}/history.
type History struct {
	From    string   `json:"from"`
	To      string   `json:"to"`
	Flips   []Flip   `json:"flips"`
	Samples []Sample `json:"samples"`
	// NextFlips and NextSamples continue each list (?flips_after=,
	// ?samples_after=); "" on its last page.
	NextFlips   string `json:"next_flips"`
	NextSamples string `json:"next_samples"`
}

// WithStore serves the per-node routes from the store b (history, uptime,
// records of nodes no longer tracked). Without it GET /api/nodes/{peer}
// answers from the tracker alone and /history is 404.
func WithStore(b store.Backend) Option { return func(o *options) { o.store = b } }

// WithRetire makes DELETE /api/nodes/{peer} call retire; without it the
// route is 405. retire returns an error wrapping store.ErrNotFound for a
// node nothing knows (404).
func WithRetire(retire func(ctx context.Context, id peer.ID, reason string) error) Option {
	return func(o *options) { o.retire = retire }
}

// WithAdminToken requires "Authorization: Bearer <token>" on DELETE, from
// any address. Without it DELETE is allowed from loopback addresses only.
func WithAdminToken(token string) Option { return func(o *options) { o.token = token } }

func (h *handler) nodeRoutes(mux *http.ServeMux, o *options) {
	h.store, h.retire, h.token = o.store, o.retire, o.token
	mux.Handle("GET /api/nodes/{peer}", h.bounded(h.node))
	if h.store != nil {
		mux.Handle("GET /api/nodes/{peer}/history", h.bounded(h.history))
	}
	if h.retire != nil {
		mux.Handle("DELETE /api/nodes/{peer}", h.bounded(h.retireNode))
	}
}

func peerOf(w http.ResponseWriter, r *http.Request) (peer.ID, bool) {
	v := r.PathValue("peer")
	id, err := peer.Decode(v)
	if err != nil {
		http.Error(w, fmt.Sprintf("peer %s: not a peer id: %v", quote(v), err), http.StatusBadRequest)
		return "", false
	}
	return id, true
}

func toFlip(f store.Flip) Flip {
	return Flip{At: f.At.UTC().Format(timeFormat), From: f.From, To: f.To, Reason: f.Reason, Aggregator: f.Aggregator.String()}
}

func (h *handler) node(w http.ResponseWriter, r *http.Request) {
	id, ok := peerOf(w, r)
	if !ok {
		return
	}
	now := h.now()
	out := NodeDetail{Flips: []Flip{}, Uptime: map[string]*float64{}}
	if n, ok := h.t.Node(id); ok {
		toNode(&n, now, &out.Node)
		out.Tracked = true
	}
	if h.store != nil {
		ctx := r.Context()
		rec, err := h.store.Node(ctx, id)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			http.Error(w, "store: "+err.Error(), http.StatusInternalServerError)
			return
		case !out.Tracked:
			out.Node = Node{PeerID: id.String(), Nickname: rec.Nickname, Head: rec.Head, Height: rec.Height,
				MinerAddress: rec.Miner, MinerAddressRaw: rec.Miner, Genesis: rec.Genesis, State: rec.State,
				Since: rec.Updated.UTC().Format(timeFormat), FirstSeen: rec.FirstSeen.UTC().Format(timeFormat), Stream: "none"}
			if !rec.LastSeen.IsZero() {
				out.Node.LastSeen = rec.LastSeen.UTC().Format(timeFormat)
				out.Node.SilenceSeconds = max(0, now.Sub(rec.LastSeen).Seconds())
			}
		}
		if err == nil {
			flips, err := h.store.RecentFlips(ctx, id, RecentFlips)
			if err != nil {
				http.Error(w, "store: "+err.Error(), http.StatusInternalServerError)
				return
			}
			for _, f := range flips {
				out.Flips = append(out.Flips, toFlip(f))
			}
			for _, win := range UptimeWindows {
				u, err := h.store.Uptime(ctx, id, store.Range{From: now.Add(-win.D), To: now})
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					http.Error(w, "store: "+err.Error(), http.StatusInternalServerError)
					return
				}
				if err == nil && u.Known > 0 {
					f := u.Fraction()
					out.Uptime[win.Name] = &f
				} else {
					out.Uptime[win.Name] = nil
				}
			}
		}
		if errors.Is(err, store.ErrNotFound) && !out.Tracked {
			http.Error(w, "unknown node "+id.String(), http.StatusNotFound)
			return
		}
	} else if !out.Tracked {
		http.Error(w, "unknown node "+id.String(), http.StatusNotFound)
		return
	}
	if h.store == nil {
		out.Uptime = nil
	}
	writeJSON(w, out)
}

// parseRange reads ?from= and ?to= (RFC 3339; to defaults to now, from to
// DefaultHistoryRange before to) and checks them with store.Range.Validate.
// A time before store.Epoch (1970) is refused by name: no record is that
// old, and the year-1 time would otherwise read as unset ("required").
func parseRange(r *http.Request, now time.Time) (store.Range, error) {
	q := r.URL.Query()
	rg := store.Range{To: now}
	parse := func(name string, t *time.Time) error {
		v := q.Get(name)
		if v == "" {
			return nil
		}
		got, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return fmt.Errorf("%s %s: want an RFC 3339 time such as 2026-01-02T15:04:05Z", name, quote(v))
		}
		if got.Before(store.Epoch) {
			return fmt.Errorf("%s %s: before %s, older than any record", name, quote(v), store.Epoch.Format(time.RFC3339))
		}
		*t = got
		return nil
	}
	if err := parse("to", &rg.To); err != nil {
		return rg, err
	}
	rg.From = rg.To.Add(-DefaultHistoryRange)
	if err := parse("from", &rg.From); err != nil {
		return rg, err
	}
	return rg, rg.Validate()
}

func (h *handler) history(w http.ResponseWriter, r *http.Request) {
	id, ok := peerOf(w, r)
	if !ok {
		return
	}
	rg, err := parseRange(r, h.now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	q := r.URL.Query()
	limit := store.DefaultPageSize
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxPageSize {
			http.Error(w, fmt.Sprintf("limit %s: want a whole number from 1 to %d", quote(v), store.MaxPageSize), http.StatusBadRequest)
			return
		}
		limit = n
	}
	ctx := r.Context()
	if _, err := h.store.Node(ctx, id); err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, store.ErrNotFound) {
			status = http.StatusNotFound
		}
		http.Error(w, err.Error(), status)
		return
	}
	out := History{From: rg.From.UTC().Format(timeFormat), To: rg.To.UTC().Format(timeFormat), Flips: []Flip{}, Samples: []Sample{}}
	flips, next, err := h.store.Flips(ctx, id, rg, store.Page{After: q.Get("flips_after"), Limit: limit})
	if err != nil {
		historyError(w, err)
		return
	}
	out.NextFlips = next
	for _, f := range flips {
		out.Flips = append(out.Flips, toFlip(f))
	}
	samples, next, err := h.store.Samples(ctx, id, rg, store.Page{After: q.Get("samples_after"), Limit: limit})
	if err != nil {
		historyError(w, err)
		return
	}
	out.NextSamples = next
	for _, s := range samples {
		out.Samples = append(out.Samples, Sample{At: s.At.UTC().Format(timeFormat), Height: s.Height})
	}
	writeJSON(w, out)
}

func historyError(w http.ResponseWriter, err error) {
	if errors.Is(err, store.ErrBadCursor) || errors.Is(err, store.ErrBadRange) {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	http.Error(w, "store: "+err.Error(), http.StatusInternalServerError)
}

// admin reports whether r may change the fleet: with a token, the bearer
// token (compared in constant time); without, a loopback client.
func (h *handler) admin(w http.ResponseWriter, r *http.Request) bool {
	if h.token != "" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(h.token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="heartbeat"`)
			http.Error(w, "a bearer token is required (the aggregator's --admin-token)", http.StatusUnauthorized)
			return false
		}
		return true
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		http.Error(w, "retiring a node is allowed from loopback only (or set the aggregator's --admin-token)", http.StatusForbidden)
		return false
	}
	return true
}

func (h *handler) retireNode(w http.ResponseWriter, r *http.Request) {
	if !h.admin(w, r) {
		return
	}
	id, ok := peerOf(w, r)
	if !ok {
		return
	}
	err := h.retire(r.Context(), id, "retired by operator")
	switch {
	case errors.Is(err, store.ErrNotFound):
		http.Error(w, "unknown node "+id.String(), http.StatusNotFound)
	case err != nil:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}
