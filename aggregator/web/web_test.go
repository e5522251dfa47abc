package web

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/clockwork"
)

// guard bounds every wait; a healthy run never reaches it.
const guard = 30 * time.Second

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// fakeSource is a Source a test edits. gate, when set, blocks Nodes until
// closed (a stuck store or tracker).
type fakeSource struct {
	mu    sync.Mutex
	nodes map[string]Node
	gate  chan struct{}
	in    chan struct{} // receives when Nodes is entered, if set
}

func newFakeSource(ns ...Node) *fakeSource {
	f := &fakeSource{nodes: map[string]Node{}}
	for _, n := range ns {
		f.nodes[n.Peer] = n
	}
	return f
}

func (f *fakeSource) set(n Node) {
	f.mu.Lock()
	f.nodes[n.Peer] = n
	f.mu.Unlock()
}

func (f *fakeSource) remove(p string) {
	f.mu.Lock()
	delete(f.nodes, p)
	f.mu.Unlock()
}

func (f *fakeSource) Nodes(dst []Node) []Node {
	f.mu.Lock()
	gate, in := f.gate, f.in
	f.mu.Unlock()
	if in != nil {
		in <- struct{}{}
	}
	if gate != nil {
		<-gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.nodes {
		dst = append(dst, n)
	}
	return dst
}

func (f *fakeSource) Summary() Summary {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := Summary{Nodes: len(f.nodes), States: map[string]int{}}
	for _, n := range f.nodes {
		s.States[n.State]++
	}
	return s
}

func node(peer, state string, height uint64) Node {
	return Node{Peer: peer, Nickname: "n-" + peer, State: state, Height: height, Head: "{ h }",
		SinceMs: t0.UnixMilli(), LastSeenMs: t0.UnixMilli(), RTTMs: Unknown, Uptime24h: Unknown}
}

func newDash(t *testing.T, src Source, opts ...Option) (*Dashboard, *clockwork.Mock) {
	t.Helper()
	m := clockwork.NewMock(t0)
	d, err := New(src, append([]Option{WithClock(m)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, d.Close()) })
	return d, m
}

// parsed is one SSE event.
type parsed struct {
	name string
	ev   event
}

func parse(t *testing.T, msg []byte) parsed {
	t.Helper()
	s := string(msg)
	require.True(t, strings.HasPrefix(s, "event: "), s)
	name, rest, ok := strings.Cut(strings.TrimPrefix(s, "event: "), "\ndata: ")
	require.True(t, ok, s)
	require.True(t, strings.HasSuffix(rest, "\n\n"), "an event ends with a blank line")
	require.NotContains(t, strings.TrimSuffix(rest, "\n\n"), "\n", "one data line")
	var ev event
	require.NoError(t, json.Unmarshal([]byte(rest), &ev))
	return parsed{name, ev}
}

func recv(t *testing.T, ch <-chan []byte) parsed {
	t.Helper()
	select {
	case msg, ok := <-ch:
		require.True(t, ok, "subscriber channel closed")
		return parse(t, msg)
	case <-time.After(guard):
		t.Fatal("no event")
		return parsed{}
	}
}

func peers(ns []Node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.Peer)
	}
	return out
}

func TestNewValidatesOptions(t *testing.T) {
	src := newFakeSource()
	for name, opt := range map[string]Option{
		"WithRefreshInterval":    WithRefreshInterval(0),
		"WithNotifyInterval":     WithNotifyInterval(0),
		"WithMaxSubscribers":     WithMaxSubscribers(0),
		"WithSubscriberBuffer":   WithSubscriberBuffer(0),
		"WithLastSeenResolution": WithLastSeenResolution(-time.Second),
		"WithKeepAlive":          WithKeepAlive(0),
		"WithWriteTimeout":       WithWriteTimeout(-1),
		"WithClock":              WithClock(nil),
	} {
		_, err := New(src, opt)
		require.ErrorContains(t, err, name)
	}
	_, err := New(nil)
	require.ErrorContains(t, err, "nil Source")
}

// A subscriber gets every node, then only what changed, on Notify and on
// the refresh timer of the injected clock.
func TestSnapshotThenDeltas(t *testing.T) {
	src := newFakeSource(node("a", "up", 1), node("b", "up", 1))
	d, m := newDash(t, src, WithRefreshInterval(time.Second), WithLastSeenResolution(10*time.Second))
	ch, cancel, err := d.Subscribe()
	require.NoError(t, err)
	defer cancel()

	snap := recv(t, ch)
	require.Equal(t, "snapshot", snap.name)
	require.ElementsMatch(t, []string{"a", "b"}, peers(snap.ev.Nodes))
	require.Equal(t, t0.UnixMilli(), snap.ev.NowMs)
	require.Equal(t, 2, snap.ev.Summary.Nodes)
	require.False(t, snap.ev.History)

	// A state change and a removal, pushed by Notify.
	b := node("b", "left", 1)
	src.set(b)
	src.remove("a")
	d.Notify()
	delta := recv(t, ch)
	require.Equal(t, "delta", delta.name)
	require.Equal(t, []Node{b}, delta.ev.Nodes)
	require.Equal(t, []string{"a"}, delta.ev.Removed)

	// Last seen alone: held back below the resolution, sent at it.
	b.LastSeenMs += 9_999
	src.set(b)
	clockwork.Advance(m, time.Second) // the refresh timer
	delta = recv(t, ch)
	require.Empty(t, delta.ev.Nodes, "last seen moved less than the resolution")
	require.Equal(t, t0.Add(time.Second).UnixMilli(), delta.ev.NowMs)
	b.LastSeenMs++
	src.set(b)
	clockwork.Advance(m, time.Second)
	delta = recv(t, ch)
	require.Equal(t, []Node{b}, delta.ev.Nodes)

	// A new subscriber's snapshot is what the first one has now.
	ch2, cancel2, err := d.Subscribe()
	require.NoError(t, err)
	defer cancel2()
	snap = recv(t, ch2)
	require.Equal(t, []Node{b}, snap.ev.Nodes)
	require.Equal(t, "delta", recv(t, ch).name, "the first subscriber was brought up to date first")
}

// The refresh goroutine never waits for a subscriber: one that does not
// read is dropped when its queue is full, and counted.
func TestSlowSubscriberIsDropped(t *testing.T) {
	src := newFakeSource(node("a", "up", 1))
	reg := prometheus.NewRegistry()
	d, _ := newDash(t, src, WithSubscriberBuffer(2), WithRegisterer(reg))
	slow, cancelSlow, err := d.Subscribe() // never read: holds its snapshot
	require.NoError(t, err)
	defer cancelSlow()
	fast, cancelFast, err := d.Subscribe()
	require.NoError(t, err)
	defer cancelFast()
	recv(t, fast) // snapshot; the Subscribe also queued a delta on slow
	require.Equal(t, 2, d.Stats().Subscribers)

	for h := uint64(2); h < 6; h++ {
		src.set(node("a", "up", h))
		d.refresh() // would block here if a subscriber could stall it
		require.Equal(t, h, recv(t, fast).ev.Nodes[0].Height)
	}
	st := d.Stats()
	require.Equal(t, uint64(1), st.Dropped)
	require.Equal(t, 1, st.Subscribers)
	require.Equal(t, 1.0, metricValue(t, reg, "heartbeat_dashboard_subscribers_dropped_total"))

	// The slow one finds what was queued, then the end of its stream.
	n := 0
	for range slow {
		n++
	}
	require.Equal(t, 2, n)
}

// metricValue reads the first sample of a counter or gauge named name.
func metricValue(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// Notify returns at once even while a refresh is stuck in the Source.
func TestNotifyNeverBlocks(t *testing.T) {
	src := newFakeSource(node("a", "up", 1))
	d, _ := newDash(t, src)
	_, cancel, err := d.Subscribe()
	require.NoError(t, err)
	defer cancel()

	gate, in := make(chan struct{}), make(chan struct{}, 1)
	src.mu.Lock()
	src.gate, src.in = gate, in
	src.mu.Unlock()
	d.Notify()
	<-in // the refresh goroutine is inside Nodes, stuck
	for range 10_000 {
		d.Notify()
	}
	src.mu.Lock()
	src.gate, src.in = nil, nil
	src.mu.Unlock()
	close(gate)
}

// Past MaxSubscribers /api/events answers 503 with Retry-After, counted;
// a freed slot is reusable.
func TestEventsBoundsSubscribers(t *testing.T) {
	src := newFakeSource(node("a", "up", 1))
	reg := prometheus.NewRegistry()
	d, _ := newDash(t, src, WithMaxSubscribers(2), WithRegisterer(reg))
	removed := make(chan struct{}, 8)
	d.mu.Lock()
	d.onRemove = func() { removed <- struct{}{} }
	d.mu.Unlock()
	srv := httptest.NewServer(d)
	defer srv.Close()

	open := func() (*http.Response, *bufio.Reader) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/api/events", nil)
		require.NoError(t, err)
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		return resp, bufio.NewReader(resp.Body)
	}
	var bodies []io.Closer
	for range 2 {
		resp, r := open()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
		line, err := r.ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "retry: 2000\n", line)
		bodies = append(bodies, resp.Body)
	}
	resp, _ := open()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "10", resp.Header.Get("Retry-After"))
	resp.Body.Close()
	require.Equal(t, uint64(1), d.Stats().Refused)
	require.Equal(t, 1.0, metricValue(t, reg, "heartbeat_dashboard_subscribers_refused_total"))

	// Closing one stream frees its slot: the handler notices the closed
	// connection and cancels its subscription.
	bodies[0].Close()
	<-removed
	resp, r := open()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	_, err := r.ReadString('\n')
	require.NoError(t, err)
	resp.Body.Close()
	bodies[1].Close()
}

// Close ends every stream and Subscribe after it fails.
func TestCloseEndsStreams(t *testing.T) {
	src := newFakeSource()
	m := clockwork.NewMock(t0)
	d, err := New(src, WithClock(m))
	require.NoError(t, err)
	ch, cancel, err := d.Subscribe()
	require.NoError(t, err)
	recv(t, ch)
	require.NoError(t, d.Close())
	_, ok := <-ch
	require.False(t, ok)
	cancel() // after Close: harmless
	require.NoError(t, d.Close())
	_, _, err = d.Subscribe()
	require.ErrorIs(t, err, ErrClosed)
}

type fakeHistory struct {
	h    NodeHistory
	err  error
	from time.Time
	to   time.Time
}

func (f *fakeHistory) NodeHistory(_ context.Context, peer string, from, to time.Time) (NodeHistory, error) {
	f.from, f.to = from, to
	return f.h, f.err
}

func TestHistoryEndpoint(t *testing.T) {
	get := func(d *Dashboard, path string) (int, map[string]any) {
		rec := httptest.NewRecorder()
		d.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		var body map[string]any
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body), rec.Body.String())
		return rec.Code, body
	}
	none, _ := newDash(t, newFakeSource())
	code, body := get(none, "/api/history/p1")
	require.Equal(t, http.StatusNotFound, code)
	require.Contains(t, body["error"], "no history")

	fh := &fakeHistory{}
	d, _ := newDash(t, newFakeSource(), WithHistory(fh))
	for _, c := range []struct{ q, want string }{
		{"?from=yesterday", "from: want an RFC 3339 time"},
		{"?to=2026-13-01T00:00:00Z", "to: want an RFC 3339 time"},
		{"?from=2026-11-30T12:00:00Z&to=2026-11-30T11:00:00Z", "from must be before to"},
		{"?from=2025-01-01T00:00:00Z&to=2026-11-30T11:00:00Z", "range longer than"},
		// Year 1 is Go's zero time, which the store reads as unset: a
		// clear 400, not the store's refusal as a 500.
		{"?from=0001-01-01T00:00:00Z&to=0001-01-01T01:00:00Z", "from: before 1970-01-01T00:00:00Z, older than any record"},
		{"?from=1969-12-31T23:00:00Z&to=1970-01-01T01:00:00Z", "from: before 1970"},
	} {
		code, body := get(d, "/api/history/p1"+c.q)
		require.Equal(t, http.StatusBadRequest, code, c.q)
		require.Contains(t, body["error"], c.want, c.q)
	}

	// Defaults: the last 24 h on the dashboard's clock; lists never null.
	code, body = get(d, "/api/history/p1")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, []any{}, body["flips"])
	require.Equal(t, []any{}, body["heights"])
	require.Equal(t, t0, fh.to)
	require.Equal(t, t0.Add(-DefaultHistoryRange), fh.from)

	// Bounded: the newest MaxHistoryPoints are kept, flagged.
	for i := range MaxHistoryPoints + 3 {
		fh.h.Heights = append(fh.h.Heights, HeightSample{AtMs: int64(i), Height: uint64(i)})
	}
	fh.h.Flips = []Flip{{AtMs: 1, From: "up", To: "down", Reason: "silence"}}
	code, body = get(d, "/api/history/p1")
	require.Equal(t, http.StatusOK, code)
	require.Len(t, body["heights"], MaxHistoryPoints)
	require.Equal(t, 3.0, body["heights"].([]any)[0].(map[string]any)["height"])
	require.Equal(t, true, body["truncated"])

	fh.err = errors.Join(errors.New("store: lookup"), ErrUnknownNode)
	code, _ = get(d, "/api/history/p1")
	require.Equal(t, http.StatusNotFound, code)
	fh.err = errors.New("disk on fire")
	code, body = get(d, "/api/history/p1")
	require.Equal(t, http.StatusInternalServerError, code)
	require.NotContains(t, body["error"], "disk", "internal errors are logged, not shown")
}

func TestPageAndAssets(t *testing.T) {
	d, _ := newDash(t, newFakeSource())
	for path, ctype := range map[string]string{
		"/":                   "text/html; charset=utf-8",
		"/static/app.js":      "text/javascript; charset=utf-8",
		"/static/app.css":     "text/css; charset=utf-8",
		"/static/favicon.svg": "image/svg+xml",
	} {
		rec := httptest.NewRecorder()
		d.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		require.Equal(t, http.StatusOK, rec.Code, path)
		require.Equal(t, ctype, rec.Header().Get("Content-Type"), path)
		require.Equal(t, contentSecurityPolicy, rec.Header().Get("Content-Security-Policy"), path)
		require.Equal(t, "nosniff", rec.Header().Get("X-Content-Type-Options"), path)
	}
	for _, path := range []string{"/static/", "/static/nope.js", "/index.html/x", "/api/nope"} {
		rec := httptest.NewRecorder()
		d.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		require.Equal(t, http.StatusNotFound, rec.Code, path)
	}
	rec := httptest.NewRecorder()
	d.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/api/events", nil))
	require.Equal(t, http.StatusMethodNotAllowed, rec.Code)

	// Mounted by Routes next to another handler, every route reaches the
	// dashboard and nothing else does.
	mux := http.NewServeMux()
	for _, p := range Routes {
		mux.Handle(p, d)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	for path, code := range map[string]int{
		"/": http.StatusOK, "/static/app.js": http.StatusOK,
		"/api/history/p1": http.StatusNotFound, // the dashboard's "no history"
		"/api/nodes":      http.StatusTeapot, "/metrics": http.StatusTeapot,
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		require.Equal(t, code, rec.Code, path)
	}
}

// The page builds every node-supplied string with textContent: the script
// has no innerHTML/outerHTML/insertAdjacentHTML/document.write at all.
func TestScriptHasNoMarkupSinks(t *testing.T) {
	js, err := assets.ReadFile("assets/app.js")
	require.NoError(t, err)
	code := string(js)
	// Drop the header comment, which names the rule.
	_, code, _ = strings.Cut(code, "\"use strict\";")
	for _, sink := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		require.NotContains(t, code, sink)
	}
}

// A storm of Notify calls costs at most one refresh per NotifyInterval
// (plus the first): the rest are merged.
func TestNotifyStormIsCoalesced(t *testing.T) {
	src := newFakeSource(node("a", "up", 1))
	d, _ := newDash(t, src, WithNotifyInterval(time.Hour))
	ch, cancel, err := d.Subscribe()
	require.NoError(t, err)
	defer cancel()
	recv(t, ch)
	base := d.Stats().Refreshes
	src.set(node("a", "down", 1))
	for range 1000 {
		d.Notify()
	}
	require.Equal(t, "down", recv(t, ch).ev.Nodes[0].State)
	// The other 999 wait for the quiet period (an hour) to end.
	for range 1000 {
		d.Notify()
	}
	require.Equal(t, base+1, d.Stats().Refreshes)
	select {
	case msg := <-ch:
		t.Fatalf("a refresh inside the quiet period: %s", msg)
	default:
	}
}

// The server's read and write timeouts (api.NewServer sets both) do not
// end an event stream: it outlives them and still delivers (here, a
// keep-alive comment, due well after both deadlines).
func TestEventsOutliveServerTimeouts(t *testing.T) {
	// The server's timeouts must leave a busy machine time to read the
	// request; the keep-alive comes well after them.
	d, _ := newDash(t, newFakeSource(node("a", "up", 1)), WithKeepAlive(1500*time.Millisecond))
	srv := httptest.NewUnstartedServer(d)
	srv.Config.ReadTimeout = 500 * time.Millisecond
	srv.Config.WriteTimeout = 500 * time.Millisecond
	srv.Start()
	defer srv.Close()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/api/events", nil)
	require.NoError(t, err)
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	for {
		line, err := r.ReadString('\n')
		require.NoError(t, err, "the stream ended")
		if line == ": keep-alive\n" {
			return
		}
	}
}

// stuckClient opens /api/events over TCP with small socket buffers, reads
// the response head and then nothing. It returns the dashboard, its source
// updater (every node changes: a delta of about 500 KB), the server, the
// client's connection and a channel told of every subscriber removal.
func stuckClient(t *testing.T, opts ...Option) (*Dashboard, func(uint64), *httptest.Server, net.Conn, chan struct{}) {
	t.Helper()
	big := strings.Repeat("x", 1000)
	src := newFakeSource()
	bump := func(h uint64) {
		for i := range 500 {
			n := node(fmt.Sprintf("p%04d", i), "up", h)
			n.Nickname = big
			src.set(n)
		}
	}
	bump(1)
	d, _ := newDash(t, src, opts...)
	removed := make(chan struct{}, 8)
	d.mu.Lock()
	d.onRemove = func() { removed <- struct{}{} }
	d.mu.Unlock()
	srv := httptest.NewUnstartedServer(d)
	srv.Listener = smallBuffers{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)

	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	require.NoError(t, conn.(*net.TCPConn).SetReadBuffer(4096))
	_, err = conn.Write([]byte("GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n"))
	require.NoError(t, err)
	// The first line of the body is written after Subscribe.
	r := bufio.NewReaderSize(conn, 64)
	for {
		line, err := r.ReadString('\n')
		require.NoError(t, err)
		if strings.HasSuffix(line, "retry: 2000\r\n") || strings.HasSuffix(line, "retry: 2000\n") {
			break
		}
	}
	return d, bump, srv, conn, removed
}

// refreshUntilRemoved refreshes (each call returns at once whatever the
// client does) until the subscriber is removed.
func refreshUntilRemoved(d *Dashboard, bump func(uint64), removed <-chan struct{}) {
	for h := uint64(2); ; h++ {
		bump(h)
		d.refresh()
		select {
		case <-removed:
			return
		default:
		}
	}
}

// closeWithin fails t unless srv.Close (which waits for the handlers)
// returns within guard.
func closeWithin(t *testing.T, srv *httptest.Server, what string) {
	t.Helper()
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(guard):
		t.Fatal(what)
	}
}

// A client that stops reading: refreshes never wait for it; once the
// socket buffers and its queue are full it is dropped, and counted.
func TestEventsClientThatNeverReadsIsDropped(t *testing.T) {
	d, bump, srv, conn, removed := stuckClient(t, WithSubscriberBuffer(2), WithWriteTimeout(time.Hour))
	refreshUntilRemoved(d, bump, removed)
	require.Equal(t, uint64(1), d.Stats().Dropped)
	require.Zero(t, d.Stats().Subscribers)
	// Its handler is stuck in a write (deadline an hour away) until the
	// connection goes.
	conn.Close()
	closeWithin(t, srv, "the handler did not end when its client went")
}

// A client that stops reading, with room in its queue: its handler ends
// at the write deadline, while the client still holds the connection, and
// that is not a drop.
func TestEventsStuckClientEndsAtWriteDeadline(t *testing.T) {
	d, bump, srv, _, removed := stuckClient(t, WithSubscriberBuffer(1000), WithWriteTimeout(100*time.Millisecond))
	refreshUntilRemoved(d, bump, removed)
	require.Zero(t, d.Stats().Dropped)
	require.Zero(t, d.Stats().Subscribers)
	closeWithin(t, srv, "the handler of a client that never reads did not end at the write deadline")
}

// smallBuffers shrinks the send buffer of every accepted connection, so
// that a client that stops reading blocks the server's writes soon.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}
