package web

import (
	"embed"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"time"

	"github.com/p2pbeat/heartbeat/aggregator/store"
)

// assets holds the page: index.html, app.js, app.css, favicon.svg.
//
//go:embed assets
var assets embed.FS

// contentSecurityPolicy allows nothing but this origin's own files: no
// inline script, no eval, no other host. A nickname that slipped into the
// DOM as markup still could not run.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; " +
	"img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Routes are the ServeMux patterns the dashboard serves. A server that
// mounts it next to other handlers registers each of them to the
// Dashboard, so that the other routes keep their own 404 and 405 answers:
//
//	for _, p := range web.Routes {
//		mux.Handle(p, dashboard)
//	}
var Routes = []string{routeIndex, routeStatic, routeEvents, routeHistory}

const (
	routeIndex   = "GET /{$}"
	routeStatic  = "GET /static/"
	routeEvents  = "GET /api/events"
	routeHistory = "GET /api/history/{peer}"
)

func (d *Dashboard) routes() *http.ServeMux {
	static, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(static)
	mux := http.NewServeMux()
	mux.HandleFunc(routeIndex, func(w http.ResponseWriter, r *http.Request) {
		secure(w)
		http.ServeFileFS(w, r, static, "index.html")
	})
	mux.Handle(routeStatic, http.StripPrefix("/static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secure(w)
		w.Header().Set("Cache-Control", "no-cache")
		if r.URL.Path == "" || r.URL.Path[len(r.URL.Path)-1] == '/' {
			http.NotFound(w, r) // no directory listings
			return
		}
		files.ServeHTTP(w, r)
	})))
	mux.HandleFunc(routeEvents, d.events)
	mux.HandleFunc(routeHistory, d.history)
	return mux
}

// ServeHTTP serves the routes listed in the package documentation.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) { d.mux.ServeHTTP(w, r) }

func secure(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
}

// events streams the dashboard's events to one subscriber.
func (d *Dashboard) events(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	ch, cancel, err := d.Subscribe()
	switch {
	case errors.Is(err, ErrTooManySubscribers):
		w.Header().Set("Retry-After", "10")
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer cancel()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	// The server's WriteTimeout (api.NewServer sets it) would end the
	// stream; each write gets its own deadline instead. (net/http clears
	// the read deadline itself once the request is read.)
	write := func(b []byte) bool {
		if err := rc.SetWriteDeadline(time.Now().Add(d.opts.writeTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return false
		}
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	// retry: the browser's reconnection delay after the stream ends.
	if !write([]byte("retry: 2000\n\n")) {
		return
	}
	// Keep-alives are about the network (idle proxies), so they run on the
	// wall clock, never a mock's.
	keep := time.NewTicker(d.opts.keepAlive)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case msg, ok := <-ch:
			if !ok || !write(msg) {
				return // dropped, cancelled or closed: the browser reconnects
			}
		case <-keep.C:
			if !write([]byte(": keep-alive\n\n")) {
				return
			}
		}
	}
}

// history serves GET /api/history/{peer}?from=&to=.
func (d *Dashboard) history(w http.ResponseWriter, r *http.Request) {
	if d.opts.history == nil {
		writeError(w, http.StatusNotFound, "no history: this aggregator keeps no store")
		return
	}
	peer := r.PathValue("peer")
	if peer == "" || len(peer) > 128 {
		writeError(w, http.StatusBadRequest, "bad peer id")
		return
	}
	to := d.opts.clock.Now()
	from := to.Add(-DefaultHistoryRange)
	q := r.URL.Query()
	for _, p := range []struct {
		name string
		t    *time.Time
	}{{"from", &from}, {"to", &to}} {
		if v := q.Get(p.name); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				writeError(w, http.StatusBadRequest, p.name+": want an RFC 3339 time such as 2026-01-02T15:04:05Z")
				return
			}
			if t.Before(store.Epoch) {
				// No record is that old; the store would take year 1 for unset.
				writeError(w, http.StatusBadRequest, p.name+": before "+store.Epoch.Format(time.RFC3339)+", older than any record")
				return
			}
			*p.t = t
		}
	}
	switch {
	case !from.Before(to):
		writeError(w, http.StatusBadRequest, "from must be before to")
		return
	case to.Sub(from) > MaxHistoryRange:
		writeError(w, http.StatusBadRequest, "range longer than "+MaxHistoryRange.String())
		return
	}
	h, err := d.opts.history.NodeHistory(r.Context(), peer, from, to)
	switch {
	case errors.Is(err, ErrUnknownNode):
		writeError(w, http.StatusNotFound, "unknown node")
		return
	case err != nil:
		d.log.Error("node history failed", "peer_id", peer, "error", err)
		writeError(w, http.StatusInternalServerError, "history unavailable")
		return
	}
	if len(h.Flips) > MaxHistoryPoints {
		h.Flips, h.Truncated = h.Flips[len(h.Flips)-MaxHistoryPoints:], true
	}
	if len(h.Heights) > MaxHistoryPoints {
		h.Heights, h.Truncated = h.Heights[len(h.Heights)-MaxHistoryPoints:], true
	}
	if h.Flips == nil {
		h.Flips = []Flip{}
	}
	if h.Heights == nil {
		h.Heights = []HeightSample{}
	}
	writeJSON(w, http.StatusOK, h)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	// Our types always encode; an error is the client going away.
	_ = json.NewEncoder(w).Encode(v)
}
