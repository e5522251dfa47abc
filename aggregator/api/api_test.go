package api

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/p2pbeat/heartbeat/aggregator/metrics"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func pid(i byte) peer.ID { return peer.ID([]byte{0x00, 0x03, 'p', 'i', i}) }

type fixture struct {
	tr  *tracker.Tracker
	reg *prometheus.Registry
	url string
	now time.Time
}

// start serves a tracker holding: pid(1) Up on a@10 with a genesis, pid(2)
// Up on b@11, pid(3) Down, pid(4) Left, pid(5) Joining. The response clock
// is t0+60s.
func start(t *testing.T) *fixture {
	t.Helper()
	tr, err := tracker.New(tracker.Config{StartupGrace: -1, MaxNodes: 50,
		// A fixed 3s period, no allowance: Suspect after 6s, Down after 15s.
		MinPeriod: 3 * time.Second, MaxPeriod: 3 * time.Second, ReconnectAllowance: -1}, t0)
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg, tr)
	require.NoError(t, err)
	m.StreamOpened()

	beat := func(id peer.ID, hb wire.Heartbeat, at time.Time) {
		_, _, err := tr.Beat(id, &hb, at)
		require.NoError(t, err)
	}
	require.NoError(t, tr.StreamOpened(pid(1), t0))
	beat(pid(1), wire.Heartbeat{Head: "a", Height: 10, Nickname: "alice", MinerAddress: "t01000", Genesis: "bafy2bzacegenesis"}, t0.Add(58*time.Second+500*time.Millisecond))
	beat(pid(2), wire.Heartbeat{Head: "b", Height: 11, Nickname: "bob"}, t0.Add(59*time.Second))
	beat(pid(3), wire.Heartbeat{Head: "a", Height: 9, Nickname: "carol"}, t0)
	beat(pid(4), wire.Heartbeat{Head: "a", Height: 10, Nickname: "dave"}, t0.Add(59*time.Second))
	tr.StreamEnded(pid(4), true, t0.Add(59*time.Second))
	require.NoError(t, tr.StreamOpened(pid(5), t0.Add(59*time.Second)))
	tr.Sweep(t0.Add(time.Minute), nil)

	f := &fixture{tr: tr, reg: reg, now: t0.Add(time.Minute)}
	srv := httptest.NewServer(NewHandler(tr, reg, func() time.Time { return f.now }))
	t.Cleanup(func() {
		srv.Client().CloseIdleConnections()
		srv.Close()
	})
	f.url = srv.URL
	return f
}

func get(t *testing.T, method, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(body)
}

func TestNodes(t *testing.T) {
	f := start(t)
	defer http.DefaultClient.CloseIdleConnections()
	resp, body := get(t, http.MethodGet, f.url+"/api/nodes")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/json; charset=utf-8", resp.Header.Get("Content-Type"))

	var nodes []Node
	require.NoError(t, json.Unmarshal([]byte(body), &nodes))
	require.Len(t, nodes, 5)
	for i := 1; i < len(nodes); i++ {
		a, err := peer.Decode(nodes[i-1].PeerID)
		require.NoError(t, err)
		b, err := peer.Decode(nodes[i].PeerID)
		require.NoError(t, err)
		require.Less(t, string(a), string(b), "sorted by peer id")
	}
	byNick := map[string]Node{}
	for _, n := range nodes {
		byNick[n.Nickname] = n
	}
	require.Equal(t, Node{
		PeerID: pid(1).String(), Nickname: "alice", Head: "a", Height: 10, MinerAddress: "t01000",
		Genesis: "bafy2bzacegenesis", State: "up",
		Since:     "2026-01-02T03:05:03.5Z", // Joining at the stream, Up at the beat
		FirstSeen: "2026-01-02T03:04:05Z", LastSeen: "2026-01-02T03:05:03.5Z", SilenceSeconds: 1.5,
		Beats: 1, Streams: 1, Stream: "open",
	}, byNick["alice"])
	require.Equal(t, "down", byNick["carol"].State)
	require.Equal(t, "2026-01-02T03:05:05Z", byNick["carol"].Since)
	require.Equal(t, float64(60), byNick["carol"].SilenceSeconds)
	require.Equal(t, "none", byNick["carol"].Stream)
	require.Equal(t, "left", byNick["dave"].State)
	require.Equal(t, "closed", byNick["dave"].Stream)
	joining := byNick[""]
	require.Equal(t, pid(5).String(), joining.PeerID)
	require.Equal(t, "joining", joining.State)
	require.Equal(t, "", joining.LastSeen)
	require.Zero(t, joining.SilenceSeconds)

	// The RFC 3339 times parse back to the tracker's.
	ls, err := time.Parse(time.RFC3339, byNick["alice"].LastSeen)
	require.NoError(t, err)
	require.True(t, ls.Equal(t0.Add(58*time.Second+500*time.Millisecond)))
}

func TestNodesFilter(t *testing.T) {
	f := start(t)
	defer http.DefaultClient.CloseIdleConnections()
	for state, want := range map[string][]string{
		"up":      {"alice", "bob"},
		"down":    {"carol"},
		"suspect": nil,
	} {
		resp, body := get(t, http.MethodGet, f.url+"/api/nodes?state="+state)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var nodes []Node
		require.NoError(t, json.Unmarshal([]byte(body), &nodes))
		require.NotNil(t, nodes, "an empty list is [], not null")
		var nicks []string
		for _, n := range nodes {
			nicks = append(nicks, n.Nickname)
		}
		require.ElementsMatch(t, want, nicks, state)
	}
	resp, body := get(t, http.MethodGet, f.url+"/api/nodes?state=dead")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Contains(t, body, `unknown state "dead"`)
}

func TestSummary(t *testing.T) {
	f := start(t)
	defer http.DefaultClient.CloseIdleConnections()
	resp, body := get(t, http.MethodGet, f.url+"/api/summary")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/json; charset=utf-8", resp.Header.Get("Content-Type"))
	var s Summary
	require.NoError(t, json.Unmarshal([]byte(body), &s))
	require.Equal(t, Summary{
		Time:  "2026-01-02T03:05:05Z",
		Nodes: 5, Connected: 2,
		States:             map[string]int{"joining": 1, "up": 2, "suspect": 0, "down": 1, "left": 1},
		HeartbeatsReceived: 4,
		// a@10 and b@11 tie at one node each: the greatest height wins.
		ConsensusHead: "b", ConsensusHeight: 11, InConsensus: 1, InDispute: 1,
		MaxNodes: 50,
	}, s)
}

func TestHealthzAndMetrics(t *testing.T) {
	f := start(t)
	defer http.DefaultClient.CloseIdleConnections()
	resp, body := get(t, http.MethodGet, f.url+"/healthz")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "ok\n", body)

	resp, body = get(t, http.MethodGet, f.url+"/metrics")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, resp.Header.Get("Content-Type"), "text/plain")
	for _, line := range []string{
		`heartbeat_nodes{state="up"} 2`,
		`heartbeat_nodes{state="down"} 1`,
		`heartbeat_connected_nodes 2`,
		`heartbeat_nodes_in_consensus 1`,
		`heartbeat_consensus_height 11`,
		`heartbeat_streams_opened_total 1`,
		`heartbeat_rejected_total{reason="too_many_nodes"} 0`,
	} {
		require.Contains(t, body, line+"\n")
	}
	require.NotContains(t, body, "alice", "no nickname is ever a label")
}

func TestMethodsAndPaths(t *testing.T) {
	f := start(t)
	defer http.DefaultClient.CloseIdleConnections()
	for _, path := range []string{"/metrics", "/api/nodes", "/api/summary", "/healthz"} {
		resp, body := get(t, http.MethodHead, f.url+path)
		require.Equal(t, http.StatusOK, resp.StatusCode, "HEAD %s", path)
		require.Empty(t, body)
		for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
			resp, _ := get(t, m, f.url+path)
			require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode, "%s %s", m, path)
			require.Equal(t, "GET, HEAD", resp.Header.Get("Allow"))
		}
	}
	for _, path := range []string{"/", "/api", "/api/nodes/x", "/healthz/"} {
		resp, _ := get(t, http.MethodGet, f.url+path)
		require.Equal(t, http.StatusNotFound, resp.StatusCode, path)
	}
}

// NewServer sets every timeout and serves the handler on a real listener;
// Shutdown leaves no goroutine behind (goleak in TestMain).
func TestServer(t *testing.T) {
	f := start(t)
	srv := NewServer("127.0.0.1:0", NewHandler(f.tr, f.reg, time.Now))
	require.Equal(t, ReadHeaderTimeout, srv.ReadHeaderTimeout)
	require.Equal(t, ReadTimeout, srv.ReadTimeout)
	require.Equal(t, WriteTimeout, srv.WriteTimeout)
	require.Equal(t, IdleTimeout, srv.IdleTimeout)
	require.Equal(t, MaxHeaderBytes, srv.MaxHeaderBytes)
	for _, d := range []time.Duration{srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout} {
		require.Positive(t, d)
	}

	ln, err := net.Listen("tcp", srv.Addr)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()

	client := &http.Client{Transport: &http.Transport{}}
	resp, err := client.Get("http://" + ln.Addr().String() + "/healthz")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, "ok\n", string(body))
	client.CloseIdleConnections()

	require.NoError(t, srv.Shutdown(t.Context()))
	require.ErrorIs(t, <-done, http.ErrServerClosed)
}

// Many nodes: the list stays complete, sorted and well-formed.
func TestManyNodes(t *testing.T) {
	tr, err := tracker.New(tracker.Config{StartupGrace: -1}, t0)
	require.NoError(t, err)
	for i := range 2000 {
		id := peer.ID("peer-" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + time.Duration(i).String())
		_, _, err := tr.Beat(id, &wire.Heartbeat{Head: "h", Height: uint64(i)}, t0)
		require.NoError(t, err)
	}
	srv := httptest.NewServer(NewHandler(tr, prometheus.NewRegistry(), func() time.Time { return t0 }))
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()
	resp, err := srv.Client().Get(srv.URL + "/api/nodes")
	require.NoError(t, err)
	defer resp.Body.Close()
	var nodes []Node
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&nodes))
	require.Len(t, nodes, 2000)
}
