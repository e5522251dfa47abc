package aggregator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator/api"
	"github.com/p2pbeat/heartbeat/aggregator/store"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/clockwork"
)

func openStore(t *testing.T, dir string) store.Backend {
	t.Helper()
	b, err := store.OpenSQLite(context.Background(), dir)
	require.NoError(t, err)
	return b
}

func beatLine(nick string, height int) string {
	return fmt.Sprintf(`{"Head":"{ h }","Height":%d,"Nickname":%q}`+"\n", height, nick)
}

// Nodes known before a restart come back as Unknown with their last seen,
// then Down after the startup grace (a new flip, its alert fires again); a
// node that left does not come back, and a retired one stays retired.
func TestRestartRestoresNodes(t *testing.T) {
	checkLeaks(t)
	ctx := context.Background()
	dir := t.TempDir()
	mock := clockwork.NewMock(t0)
	h := newHost(t)
	cfg := Config{ExpectedPeriod: time.Second, StartupGrace: 10 * time.Second}

	b := openStore(t, dir)
	rec := newRecorder()
	a, err := New(h, cfg, WithClock(mock), withHooks(rec.hooks()), WithStore(b, store.WriterConfig{}))
	require.NoError(t, err)
	alive, retired, leaving := randomPeer(t), randomPeer(t), randomPeer(t)
	done := make(chan error, 3)
	var pipes []*io.PipeWriter
	for i, id := range []peer.ID{alive, retired} {
		pr, pw := io.Pipe()
		pipes = append(pipes, pw)
		go func() { done <- a.ServeLines(id, pr) }()
		_, err := io.WriteString(pw, beatLine(fmt.Sprint("n", i), 10+i))
		require.NoError(t, err)
		rec.waitBeats(t, id, 1)
	}
	go func() { done <- a.ServeLines(leaving, strings.NewReader(beatLine("bye", 3))) }()
	require.NoError(t, <-done) // EOF: Left
	require.NoError(t, a.Retire(ctx, retired, "decommissioned"))
	_, tracked := a.Tracker().Node(retired)
	require.False(t, tracked)
	// The aggregator is killed under them: streams lost, not EOF.
	for _, pw := range pipes {
		pw.CloseWithError(errors.New("connection reset"))
	}
	require.Error(t, <-done)
	require.Error(t, <-done)
	lastSeen := t0
	require.NoError(t, a.Close())
	require.NoError(t, b.Close())

	// Restart on the same store (same peer id: the same host).
	clockwork.Advance(mock, time.Hour)
	restart := mock.Now()
	b = openStore(t, dir)
	t.Cleanup(func() { _ = b.Close() })
	a, err = New(h, cfg, WithClock(mock), WithStore(b, store.WriterConfig{}))
	require.NoError(t, err)
	defer a.Close()
	n, ok := a.Tracker().Node(alive)
	require.True(t, ok)
	require.Equal(t, tracker.Unknown, n.State)
	require.Equal(t, "n0", n.Nickname)
	require.Equal(t, uint64(10), n.Height)
	require.True(t, n.LastSeen.Equal(lastSeen), "last seen %v", n.LastSeen)
	_, ok = a.Tracker().Node(retired)
	require.False(t, ok, "a retired node stays retired")
	_, ok = a.Tracker().Node(leaving)
	require.False(t, ok, "a node that left is not restored")
	require.Equal(t, 1, a.Tracker().Len())

	clockwork.AdvanceTo(mock, restart.Add(cfg.StartupGrace)) // exactly the grace: not yet
	n, _ = a.Tracker().Node(alive)
	require.Equal(t, tracker.Unknown, n.State)
	clockwork.AdvanceTo(mock, restart.Add(cfg.StartupGrace+time.Second))
	n, _ = a.Tracker().Node(alive)
	require.Equal(t, tracker.Down, n.State)
	require.NoError(t, a.Close())

	rn, err := b.Node(ctx, alive)
	require.NoError(t, err)
	require.Equal(t, "down", rn.State)
	flips, err := b.RecentFlips(ctx, alive, 1)
	require.NoError(t, err)
	require.Len(t, flips, 1)
	require.Equal(t, "unknown", flips[0].From)
	require.Equal(t, "down", flips[0].To)
	require.Equal(t, "silent_since_restart", flips[0].Reason)
	rn, err = b.Node(ctx, retired)
	require.NoError(t, err)
	require.Equal(t, store.StateRetired, rn.State)
}

// The per-node routes over a real store: the record with its flips and
// uptime, the history with its range errors, and retiring (loopback only,
// or a bearer token).
func TestNodeRoutesWithStore(t *testing.T) {
	checkLeaks(t)
	mock := clockwork.NewMock(t0)
	b := openStore(t, t.TempDir())
	t.Cleanup(func() { _ = b.Close() })
	rec := newRecorder()
	cfg := Config{ExpectedPeriod: time.Second, StartupGrace: -1, MinPeriod: time.Second, MaxPeriod: time.Second, ReconnectAllowance: -1}
	a, err := New(newHost(t), cfg, WithClock(mock), withHooks(rec.hooks()), WithStore(b, store.WriterConfig{}))
	require.NoError(t, err)
	defer a.Close()
	id := randomPeer(t)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- a.ServeLines(id, pr) }()
	_, err = io.WriteString(pw, beatLine("n1", 5))
	require.NoError(t, err)
	rec.waitBeats(t, id, 1)
	clockwork.Advance(mock, 10*time.Second) // Suspect, then Down; flushed
	pw.CloseWithError(errors.New("reset"))
	require.Error(t, <-done)
	clockwork.Advance(mock, time.Minute)

	srv := httptest.NewServer(a.HTTPHandler())
	defer srv.Close()
	call := func(method, path string, hdr ...string) (int, string) {
		req, err := http.NewRequest(method, srv.URL+path, nil)
		require.NoError(t, err)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}
	code, body := call("GET", "/api/nodes/"+id.String())
	require.Equal(t, http.StatusOK, code, body)
	var d api.NodeDetail
	require.NoError(t, json.Unmarshal([]byte(body), &d))
	require.True(t, d.Tracked)
	require.Equal(t, "down", d.Node.State)
	var tos []string
	for _, f := range d.Flips {
		tos = append(tos, f.To)
	}
	require.Equal(t, []string{"down", "suspect", "up"}, tos, "newest first")
	require.NotNil(t, d.Uptime["1h"])
	// Up from t0 to the Suspect flip at t0+3s, known from t0 to now.
	require.InDelta(t, 3.0/70, *d.Uptime["1h"], 0.001)

	from := t0.Add(-time.Minute).Format(time.RFC3339)
	to := mock.Now().Format(time.RFC3339)
	code, body = call("GET", "/api/nodes/"+id.String()+"/history?from="+from+"&to="+to)
	require.Equal(t, http.StatusOK, code, body)
	var h api.History
	require.NoError(t, json.Unmarshal([]byte(body), &h))
	require.Len(t, h.Flips, 3)
	for _, bad := range []struct{ q, why string }{
		{"?from=" + to + "&to=" + from, "must be before"},
		{"?from=yesterday", `from "yesterday"`},
		{"?to=2026-13-01T00:00:00Z", "RFC 3339"},
		{"?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "longer than the maximum"},
		{"?limit=100000", "limit"},
		{"?flips_after=nope", "cursor"},
	} {
		code, body = call("GET", "/api/nodes/"+id.String()+"/history"+bad.q)
		require.Equal(t, http.StatusBadRequest, code, bad.q)
		require.Contains(t, body, bad.why, bad.q)
	}
	code, _ = call("GET", "/api/nodes/notapeer")
	require.Equal(t, http.StatusBadRequest, code)
	code, _ = call("GET", "/api/nodes/"+randomPeer(t).String())
	require.Equal(t, http.StatusNotFound, code)

	// Not from loopback: refused.
	rr := httptest.NewRecorder()
	req := httptest.NewRequest("DELETE", "/api/nodes/"+id.String(), nil)
	req.RemoteAddr = "192.0.2.7:4242"
	a.HTTPHandler().ServeHTTP(rr, req)
	require.Equal(t, http.StatusForbidden, rr.Code)
	// With a token: required from anywhere, loopback included.
	withToken := httptest.NewServer(a.HTTPHandler(api.WithAdminToken("s3cret")))
	defer withToken.Close()
	req, err = http.NewRequest("DELETE", withToken.URL+"/api/nodes/"+id.String(), nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	req.Header.Set("Authorization", "Bearer wrong")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	other := randomPeer(t)
	go func() { done <- a.ServeLines(other, strings.NewReader(beatLine("n2", 1))) }()
	require.NoError(t, <-done)
	req, err = http.NewRequest("DELETE", withToken.URL+"/api/nodes/"+other.String(), nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNoContent, resp.StatusCode)

	code, body = call("DELETE", "/api/nodes/"+id.String())
	require.Equal(t, http.StatusNoContent, code, body)
	_, tracked := a.Tracker().Node(id)
	require.False(t, tracked)
	code, body = call("GET", "/api/nodes/"+id.String())
	require.Equal(t, http.StatusOK, code, body)
	require.NoError(t, json.Unmarshal([]byte(body), &d))
	require.False(t, d.Tracked)
	require.Equal(t, store.StateRetired, d.Node.State)
	require.Equal(t, "retired", d.Flips[0].To)
	code, _ = call("DELETE", "/api/nodes/"+randomPeer(t).String())
	require.Equal(t, http.StatusNotFound, code)
}

// readOnly is a real SQLite store that refuses writes while ro is set,
// with the error SQLite gives for a read-only database file (SQLITE_READONLY),
// like a data directory remounted read-only under a running aggregator.
type readOnly struct {
	store.Backend
	ro atomic.Bool
}

func (r *readOnly) Apply(ctx context.Context, b store.Batch) error {
	if r.ro.Load() {
		return errors.New("store heartbeat.db: attempt to write a readonly database (8)")
	}
	return r.Backend.Apply(ctx, b)
}

// While the store cannot be written the aggregator keeps tracking in
// memory; the failures are logged and counted, and the flips of the
// outage are written once the store works again.
func TestStoreFailureKeepsTracking(t *testing.T) {
	checkLeaks(t)
	mock := clockwork.NewMock(t0)
	real := openStore(t, t.TempDir())
	t.Cleanup(func() { _ = real.Close() })
	b := &readOnly{Backend: real}
	b.ro.Store(true)
	logs := &logBuffer{}
	rec := newRecorder()
	cfg := Config{ExpectedPeriod: time.Second, StartupGrace: -1, MinPeriod: time.Second, MaxPeriod: time.Second, ReconnectAllowance: -1}
	a, err := New(newHost(t), cfg, WithClock(mock), withHooks(rec.hooks()), WithStore(b, store.WriterConfig{}),
		WithLogger(hclog.New(&hclog.LoggerOptions{Output: logs, JSONFormat: true, Level: hclog.Info})))
	require.NoError(t, err)
	defer a.Close()
	id := randomPeer(t)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- a.ServeLines(id, pr) }()
	defer func() { pw.Close(); <-done }()
	_, err = io.WriteString(pw, beatLine("n1", 5))
	require.NoError(t, err)
	rec.waitBeats(t, id, 1)
	clockwork.Advance(mock, 10*time.Second) // Suspect, Down: tracked all the same
	n, _ := a.Tracker().Node(id)
	require.Equal(t, tracker.Down, n.State)
	require.GreaterOrEqual(t, counter(t, a.Registry(), "heartbeat_store_flush_errors_total"), 1.0)
	require.Contains(t, logs.String(), "store write failed")
	require.Contains(t, logs.String(), "readonly database")

	_, err = io.WriteString(pw, beatLine("n1", 6)) // still ingesting
	require.NoError(t, err)
	rec.waitBeats(t, id, 2)
	b.ro.Store(false)
	clockwork.Advance(mock, time.Second)
	flips, err := real.RecentFlips(context.Background(), id, 10)
	require.NoError(t, err)
	var tos []string
	for _, f := range flips {
		tos = append(tos, f.To)
	}
	require.Equal(t, []string{"up", "down", "suspect", "up"}, tos, "every flip of the outage, newest first")
	require.Contains(t, logs.String(), "store writes recovered")
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// With a store, the dashboard's node view reads its history: the flips
// the aggregator wrote.
func TestDashboardHistoryFromStore(t *testing.T) {
	checkLeaks(t)
	mock := clockwork.NewMock(t0)
	b := openStore(t, t.TempDir())
	t.Cleanup(func() { _ = b.Close() })
	rec := newRecorder()
	cfg := Config{ExpectedPeriod: time.Second, StartupGrace: -1, MinPeriod: time.Second, MaxPeriod: time.Second, ReconnectAllowance: -1}
	a, err := New(newHost(t), cfg, WithClock(mock), withHooks(rec.hooks()), WithStore(b, store.WriterConfig{}), WithDashboard())
	require.NoError(t, err)
	defer a.Close()
	id := randomPeer(t)
	done := make(chan error, 1)
	go func() { done <- a.ServeLines(id, strings.NewReader(beatLine("n1", 5))) }()
	require.NoError(t, <-done)           // Joining -> Up -> Left
	clockwork.Advance(mock, time.Second) // flushed

	rr := httptest.NewRecorder()
	q := "?from=" + t0.Add(-time.Hour).Format(time.RFC3339) + "&to=" + mock.Now().Add(time.Second).Format(time.RFC3339)
	a.HTTPHandler().ServeHTTP(rr, httptest.NewRequest("GET", "/api/history/"+id.String()+q, nil))
	require.Equal(t, http.StatusOK, rr.Code, rr.Body.String())
	var h struct {
		Flips []struct{ From, To string }
	}
	require.NoError(t, json.Unmarshal(rr.Body.Bytes(), &h))
	require.Equal(t, []struct{ From, To string }{{"joining", "up"}, {"up", "left"}}, h.Flips)
}

// A clean shutdown writes every node's last seen, height and head as of the
// shutdown, not as of the last per-minute snapshot or flip: the restarted
// aggregator restores the last beat's time (injected clock), over the real
// SQLite store on the same data dir.
func TestCloseWritesFinalSnapshot(t *testing.T) {
	checkLeaks(t)
	ctx := context.Background()
	dir := t.TempDir()
	mock := clockwork.NewMock(t0)
	h := newHost(t)
	// Beats 36 s apart are on time (no Suspect, no flip): only the
	// periodic snapshot, one per minute, or the final one write them.
	cfg := Config{ExpectedPeriod: time.Minute, IdleTimeout: 5 * time.Minute, StartupGrace: 10 * time.Second}

	b := openStore(t, dir)
	rec := newRecorder()
	a, err := New(h, cfg, WithClock(mock), withHooks(rec.hooks()), WithStore(b, store.WriterConfig{}))
	require.NoError(t, err)
	id := randomPeer(t)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- a.ServeLines(id, pr) }()
	_, err = io.WriteString(pw, `{"Head":"{ h1 }","Height":10,"Nickname":"n"}`+"\n")
	require.NoError(t, err)
	rec.waitBeats(t, id, 1)
	clockwork.Advance(mock, 36*time.Second)
	lastBeat := mock.Now()
	_, err = io.WriteString(pw, `{"Head":"{ h2 }","Height":11,"Nickname":"n"}`+"\n")
	require.NoError(t, err)
	rec.waitBeats(t, id, 2)
	n, _ := a.Tracker().Node(id)
	require.Equal(t, tracker.Up, n.State)
	require.NoError(t, a.Close())
	pw.Close()
	require.NoError(t, <-done)
	require.NoError(t, b.Close())

	b = openStore(t, dir)
	t.Cleanup(func() { _ = b.Close() })
	a, err = New(h, cfg, WithClock(mock), WithStore(b, store.WriterConfig{}))
	require.NoError(t, err)
	defer a.Close()
	n, ok := a.Tracker().Node(id)
	require.True(t, ok)
	require.Equal(t, tracker.Unknown, n.State)
	require.True(t, n.LastSeen.Equal(lastBeat), "last seen %v, the last beat was at %v", n.LastSeen, lastBeat)
	require.Equal(t, uint64(11), n.Height)
	require.Equal(t, "{ h2 }", n.Head)
	rn, err := b.Node(ctx, id)
	require.NoError(t, err)
	require.Equal(t, "up", rn.State)
}

// nodeUp reads heartbeat_node_up{peer_id=id} from g; ok is false when it
// has no series.
func nodeUp(t *testing.T, g prometheus.Gatherer, id peer.ID) (v float64, ok bool) {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "heartbeat_node_up" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelValue(m, "peer_id") == id.String() {
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

// A node Down when the aggregator stops keeps heartbeat_node_up 0 from the
// restarted aggregator's first scrape (its alert neither resolves nor pages
// again), while a node that was Up has no series until it is judged again.
func TestRestartKeepsDownNodeNotUp(t *testing.T) {
	checkLeaks(t)
	dir := t.TempDir()
	mock := clockwork.NewMock(t0)
	h := newHost(t)
	cfg := Config{ExpectedPeriod: time.Second, StartupGrace: 10 * time.Second}

	b := openStore(t, dir)
	rec := newRecorder()
	a, err := New(h, cfg, WithClock(mock), withHooks(rec.hooks()), WithStore(b, store.WriterConfig{}))
	require.NoError(t, err)
	dead, live := randomPeer(t), randomPeer(t)
	done := make(chan error, 2)
	var pipes []*io.PipeWriter
	for _, id := range []peer.ID{dead, live} {
		pr, pw := io.Pipe()
		pipes = append(pipes, pw)
		go func() { done <- a.ServeLines(id, pr) }()
		_, err := io.WriteString(pw, beatLine("n", 10))
		require.NoError(t, err)
		rec.waitBeats(t, id, 1)
	}
	pipes[0].CloseWithError(errors.New("connection reset"))
	require.Error(t, <-done)
	// live beats every second until dead is Down.
	for i := 2; ; i++ {
		require.Less(t, i, 300, "dead never went Down")
		clockwork.Advance(mock, time.Second)
		_, err := io.WriteString(pipes[1], beatLine("n", 10))
		require.NoError(t, err)
		rec.waitBeats(t, live, i)
		if n, _ := a.Tracker().Node(dead); n.State == tracker.Down {
			break
		}
	}
	v, ok := nodeUp(t, a.Registry(), dead)
	require.True(t, ok)
	require.Zero(t, v)
	require.NoError(t, a.Close())
	pipes[1].Close()
	require.NoError(t, <-done)
	require.NoError(t, b.Close())

	b = openStore(t, dir)
	t.Cleanup(func() { _ = b.Close() })
	a, err = New(h, cfg, WithClock(mock), WithStore(b, store.WriterConfig{}))
	require.NoError(t, err)
	defer a.Close()
	for _, id := range []peer.ID{dead, live} {
		n, ok := a.Tracker().Node(id)
		require.True(t, ok)
		require.Equal(t, tracker.Unknown, n.State)
	}
	v, ok = nodeUp(t, a.Registry(), dead)
	require.True(t, ok, "a node Down before the restart has a series at once")
	require.Zero(t, v)
	_, ok = nodeUp(t, a.Registry(), live)
	require.False(t, ok, "a node Up before the restart has no series until it is judged")

	// Restarted again within the startup grace: the Unknown nodes are not
	// rewritten as "unknown", so the store still knows which was Down.
	require.NoError(t, a.Close())
	require.NoError(t, b.Close())
	b = openStore(t, dir)
	t.Cleanup(func() { _ = b.Close() })
	a, err = New(h, cfg, WithClock(mock), WithStore(b, store.WriterConfig{}))
	require.NoError(t, err)
	defer a.Close()
	v, ok = nodeUp(t, a.Registry(), dead)
	require.True(t, ok, "still Down after a second restart within the grace")
	require.Zero(t, v)
	_, ok = nodeUp(t, a.Registry(), live)
	require.False(t, ok)
}
