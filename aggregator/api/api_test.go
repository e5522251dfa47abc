package api

import (
	"encoding/json"
	"github.com/multiformats/go-multihash"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/p2pbeat/heartbeat/aggregator/metrics"
	"github.com/p2pbeat/heartbeat/aggregator/store"
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
// Up on b@11 and flagged duplicate identity, pid(3) Down, pid(4) Left, pid(5) Joining. The response clock
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
	beat(pid(2), wire.Heartbeat{Head: "b", Height: 11, Nickname: "bob", MinerAddress: "<empty>"}, t0.Add(59*time.Second))
	beat(pid(3), wire.Heartbeat{Head: "a", Height: 9, Nickname: "carol", MinerAddress: "empty"}, t0)
	beat(pid(4), wire.Heartbeat{Head: "a", Height: 10, Nickname: "dave"}, t0.Add(59*time.Second))
	tr.StreamEnded(pid(4), true, t0.Add(59*time.Second))
	require.NoError(t, tr.StreamOpened(pid(5), t0.Add(59*time.Second)))
	for i := range 4 { // bob's streams supersede each other: a duplicate identity
		tr.Superseded(pid(2), t0.Add(50*time.Second+time.Duration(i)*time.Second))
	}
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

	var page NodePage
	require.NoError(t, json.Unmarshal([]byte(body), &page))
	require.Empty(t, page.Next)
	require.Empty(t, resp.Header.Get("Link"))
	nodes := page.Nodes
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
		PeerID: pid(1).String(), Nickname: "alice", Head: "a", Height: 10, MinerAddress: "t01000", MinerAddressRaw: "t01000",
		Genesis: "bafy2bzacegenesis", State: "up",
		Since:     "2026-01-02T03:05:03.5Z", // Joining at the stream, Up at the beat
		FirstSeen: "2026-01-02T03:04:05Z", LastSeen: "2026-01-02T03:05:03.5Z", SilenceSeconds: 1.5,
		Beats: 1, Streams: 1, Stream: "open", PeriodSeconds: 3, Protocol: 1,
	}, byNick["alice"])
	// Every spelling of the zero address is "no address", the raw text kept.
	for nick, raw := range map[string]string{"bob": "<empty>", "carol": "empty", "dave": ""} {
		require.Equal(t, "", byNick[nick].MinerAddress, nick)
		require.Equal(t, raw, byNick[nick].MinerAddressRaw, nick)
	}
	require.Contains(t, body, `"miner_address_raw":"<empty>"`, "not HTML-escaped")
	require.True(t, strings.HasPrefix(body, "{\"next\":\"\",\n\"nodes\":[\n{\"peer_id\":"), body)
	require.True(t, strings.HasSuffix(body, "\"lost_beats\":0}\n]}\n"), body)
	require.Equal(t, 5+3, strings.Count(body, "\n"), "one node per line")
	require.False(t, byNick["alice"].DuplicateIdentity)
	require.True(t, byNick["bob"].DuplicateIdentity)
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
		var page NodePage
		require.NoError(t, json.Unmarshal([]byte(body), &page))
		nodes := page.Nodes
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
		States:             map[string]int{"joining": 1, "up": 2, "suspect": 0, "down": 1, "left": 1, "unknown": 0},
		HeartbeatsReceived: 4,
		// a@10 and b@11 tie at one node each: the greatest height wins.
		ConsensusHead: "b", ConsensusHeight: 11, InConsensus: 1, InDispute: 1,
		MaxNodes: 50, DuplicateIdentity: 1, HealthMultiplier: 1,
	}, s)
}

// Most live nodes silent at once: /api/summary says the aggregator is
// disrupted, and since when; nobody is Down.
func TestSummaryDisrupted(t *testing.T) {
	tr, err := tracker.New(tracker.Config{StartupGrace: -1, MinPeriod: 3 * time.Second, MaxPeriod: 3 * time.Second, ReconnectAllowance: -1}, t0)
	require.NoError(t, err)
	for i := range 4 {
		_, _, err := tr.Beat(pid(byte(i+1)), &wire.Heartbeat{Head: "a", Height: 1}, t0)
		require.NoError(t, err)
	}
	tr.Sweep(t0.Add(7*time.Second), nil)
	tr.Sweep(t0.Add(time.Minute), nil)
	srv := httptest.NewServer(NewHandler(tr, prometheus.NewRegistry(), func() time.Time { return t0.Add(time.Minute) }))
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()
	_, body := get(t, http.MethodGet, srv.URL+"/api/summary")
	var s Summary
	require.NoError(t, json.Unmarshal([]byte(body), &s))
	require.True(t, s.Disrupted)
	require.Equal(t, "2026-01-02T03:04:12Z", s.DisruptedSince)
	require.Equal(t, 4, s.States["suspect"])
	require.Zero(t, s.States["down"])
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
	for _, path := range []string{"/", "/api", "/api/nodes/x/y", "/healthz/"} {
		resp, _ := get(t, http.MethodGet, f.url+path)
		require.Equal(t, http.StatusNotFound, resp.StatusCode, path)
	}
	resp, body := get(t, http.MethodGet, f.url+"/api/nodes/x")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Contains(t, string(body), "not a peer id")
	// Without a store there is no history, and without WithRetire no DELETE.
	resp, _ = get(t, http.MethodGet, f.url+"/api/nodes/12D3KooWHHzSeKaY8xuZVzkLbKFfvNgPPeKhFBGrMbNzbm5akpqu/history")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, _ = get(t, http.MethodDelete, f.url+"/api/nodes/12D3KooWHHzSeKaY8xuZVzkLbKFfvNgPPeKhFBGrMbNzbm5akpqu")
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	resp, _ = get(t, http.MethodGet, f.url+"/api/nodes/12D3KooWHHzSeKaY8xuZVzkLbKFfvNgPPeKhFBGrMbNzbm5akpqu")
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "unknown node")
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

// Many nodes: walking the pages by their next cursor (and the Link header)
// gives every node once, sorted, whatever the page size.
func TestManyNodesPaged(t *testing.T) {
	tr, err := tracker.New(tracker.Config{StartupGrace: -1}, t0)
	require.NoError(t, err)
	for i := range 1200 {
		// Valid peer ids (identity multihashes): a cursor must decode to one.
		mh, err := multihash.Sum([]byte("peer-"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+time.Duration(i).String()), multihash.IDENTITY, -1)
		require.NoError(t, err)
		id := peer.ID(mh)
		_, _, err = tr.Beat(id, &wire.Heartbeat{Head: "h", Height: uint64(i)}, t0)
		require.NoError(t, err)
	}
	srv := httptest.NewServer(NewHandler(tr, prometheus.NewRegistry(), func() time.Time { return t0 }))
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()
	for _, limit := range []string{"", "9", "1000"} {
		t.Run("limit="+limit, func(t *testing.T) {
			want := DefaultLimit
			if limit != "" {
				want, _ = strconv.Atoi(limit)
			}
			path := "/api/nodes"
			if limit != "" {
				path += "?limit=" + limit
			}
			var all []string
			pages := 0
			for path != "" {
				resp, err := srv.Client().Get(srv.URL + path)
				require.NoError(t, err)
				var page NodePage
				require.NoError(t, json.NewDecoder(resp.Body).Decode(&page))
				require.NoError(t, resp.Body.Close())
				require.Equal(t, http.StatusOK, resp.StatusCode)
				pages++
				for _, n := range page.Nodes {
					all = append(all, n.PeerID)
				}
				link := resp.Header.Get("Link")
				if page.Next == "" {
					require.Empty(t, link)
					require.LessOrEqual(t, len(page.Nodes), want)
					path = ""
					continue
				}
				require.Len(t, page.Nodes, want)
				require.True(t, strings.HasPrefix(link, "</api/nodes?") && strings.HasSuffix(link, `>; rel="next"`), link)
				path = strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
				require.Contains(t, path, "cursor="+url.QueryEscape(page.Next))
			}
			require.Len(t, all, 1200)
			require.Equal(t, (1200+want-1)/want, pages)
			require.True(t, slices.IsSortedFunc(all, func(a, b string) int {
				pa, _ := peer.Decode(a)
				pb, _ := peer.Decode(b)
				return strings.Compare(string(pa), string(pb))
			}))
			require.Len(t, slices.Compact(slices.Clone(all)), 1200, "no node twice")
		})
	}
}

// A cursor is a position, not an index: nodes that arrive or go between two
// pages never make the walk repeat or skip a node that stayed, and the
// state filter carries over in the Link.
func TestCursorStable(t *testing.T) {
	f := start(t)
	defer http.DefaultClient.CloseIdleConnections()
	resp, body := get(t, http.MethodGet, f.url+"/api/nodes?limit=2")
	var page NodePage
	require.NoError(t, json.Unmarshal([]byte(body), &page))
	require.Equal(t, []string{"alice", "bob"}, nicks(page.Nodes))
	require.Contains(t, resp.Header.Get("Link"), "limit=2")

	// pid(1) goes, a node sorting before the cursor arrives: neither
	// shifts the next page.
	require.True(t, f.tr.Forget(pid(1)))
	_, _, err := f.tr.Beat(pid(0), &wire.Heartbeat{Nickname: "zed"}, f.now)
	require.NoError(t, err)
	_, body = get(t, http.MethodGet, f.url+"/api/nodes?limit=2&cursor="+page.Next)
	require.NoError(t, json.Unmarshal([]byte(body), &page))
	require.Equal(t, []string{"carol", "dave"}, nicks(page.Nodes))

	resp, body = get(t, http.MethodGet, f.url+"/api/nodes?state=up&limit=1")
	require.NoError(t, json.Unmarshal([]byte(body), &page))
	require.Equal(t, []string{"zed"}, nicks(page.Nodes))
	require.Contains(t, resp.Header.Get("Link"), "state=up")
	_, body = get(t, http.MethodGet, f.url+"/api/nodes?state=up&limit=1&cursor="+page.Next)
	require.NoError(t, json.Unmarshal([]byte(body), &page))
	require.Equal(t, []string{"bob"}, nicks(page.Nodes))
	require.Empty(t, page.Next)
}

func nicks(nodes []Node) []string {
	out := []string{}
	for _, n := range nodes {
		out = append(out, n.Nickname)
	}
	return out
}

func TestBadPageQuery(t *testing.T) {
	f := start(t)
	defer http.DefaultClient.CloseIdleConnections()
	for query, msg := range map[string]string{
		"limit=0":        `limit "0"`,
		"limit=-1":       `limit "-1"`,
		"limit=1001":     `limit "1001": want a whole number from 1 to 1000`,
		"limit=x":        `limit "x"`,
		"cursor=nope!":   `cursor "nope!"`,
		"cursor=%3D":     `cursor "="`,
		"cursor=garbage": `cursor "garbage"`, // valid base64url, not a peer id
		"cursor=AAAA":    `cursor "AAAA"`,
		"state=dead":     `unknown state "dead"`,
	} {
		resp, body := get(t, http.MethodGet, f.url+"/api/nodes?"+query)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, query)
		require.Contains(t, body, msg, query)
	}
}

// parseRange names the parameter at fault. A year-1 time is given, not
// missing: it is refused as older than any record, never as "required"
// (Go's zero time.Time is year 1, which store.Range.Validate reads as
// unset).
func TestParseRange(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		q        string
		from, to time.Time
		err      string
	}{
		{q: "", from: now.Add(-DefaultHistoryRange), to: now},
		{q: "to=2026-11-29T00:00:00Z", from: time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC), to: time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)},
		{q: "from=2026-11-30T11:00:00.5Z", from: time.Date(2026, 11, 30, 11, 0, 0, 5e8, time.UTC), to: now},
		{q: "from=1970-01-01T00:00:00Z&to=1970-01-02T00:00:00Z", from: store.Epoch, to: store.Epoch.Add(24 * time.Hour)},
		{q: "from=0001-01-01T00:00:00Z", err: `from "0001-01-01T00:00:00Z": before 1970-01-01T00:00:00Z, older than any record`},
		{q: "to=0001-01-01T00:00:00Z", err: `to "0001-01-01T00:00:00Z": before 1970-01-01T00:00:00Z`},
		{q: "from=0001-01-01T00:00:00Z&to=0001-01-01T01:00:00Z", err: `to "0001-01-01T01:00:00Z": before 1970`},
		{q: "from=1969-12-31T23:59:59Z&to=1970-01-01T01:00:00Z", err: `from "1969-12-31T23:59:59Z": before 1970`},
		{q: "from=yesterday", err: `from "yesterday": want an RFC 3339 time`},
		{q: "to=2026-13-01T00:00:00Z", err: `to "2026-13-01T00:00:00Z": want an RFC 3339 time`},
		{q: "from=2026-11-30T12:00:00Z&to=2026-11-30T11:00:00Z", err: "must be before"},
		{q: "from=2020-01-01T00:00:00Z", err: "longer than the maximum"},
	} {
		rg, err := parseRange(httptest.NewRequest(http.MethodGet, "/api/nodes/x/history?"+c.q, nil), now)
		if c.err != "" {
			require.ErrorContains(t, err, c.err, c.q)
			require.NotContains(t, err.Error(), "required", c.q)
			continue
		}
		require.NoError(t, err, c.q)
		require.True(t, c.from.Equal(rg.From), "%s: from %v", c.q, rg.From)
		require.True(t, c.to.Equal(rg.To), "%s: to %v", c.q, rg.To)
	}
}
