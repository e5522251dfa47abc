package aggregator

import (
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/wire2"
)

// apiDoc is the document whose samples and field tables the tests below
// hold to a real aggregator's answers.
const apiDoc = "../docs/aggregator.md"

var (
	nodesSample   = regexp.MustCompile(`(?s)\$ curl -s http://127\.0\.0\.1:\d+/api/nodes\n(.*?)\n\$ curl`)
	summarySample = regexp.MustCompile("(?s)A summary with [^\n]*:\n\n```json\n(.*?)```")
	nodesTable    = regexp.MustCompile("(?s)`/api/nodes` fields:\n(.*?)\n\n")
	summaryFields = regexp.MustCompile("(?s)`/api/summary` fields: (.*?)\n\n")
	backticked    = regexp.MustCompile("`([a-z_]+)`")
)

func keysOf(m map[string]any) []string { return slices.Sorted(maps.Keys(m)) }

// The samples of /api/nodes and /api/summary in docs/aggregator.md have
// exactly the keys a real aggregator answers with (a v1 and a v2 node
// beating over libp2p), and the field lists name every key, so that a
// field added to the API without its documentation fails here.
func TestAPISamplesMatchDocs(t *testing.T) {
	checkLeaks(t)
	raw, err := os.ReadFile(apiDoc)
	require.NoError(t, err)
	doc := string(raw)

	e := newEnv(t, Config{}, nil)
	v1 := newSender(t)
	encode(t, v1.open(t, e), legacyHeartbeat{Head: "{ h }", Height: 7, Nickname: "n1"})
	e.rec.waitBeats(t, v1.id(), 1)
	v2 := newSender(t)
	c := v2.openV2(t, e)
	c.send(t, hello(1, time.Second))
	c.recv(t, wire2.TypeWelcome)
	c.send(t, beatAt(1, 2*time.Millisecond))
	c.recv(t, wire2.TypeAck)

	srv := httptest.NewServer(e.a.HTTPHandler())
	defer srv.Close()
	get := func(path string) map[string]any {
		resp, err := srv.Client().Get(srv.URL + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		t.Logf("GET %s: %s", path, b)
		var m map[string]any
		require.NoError(t, json.Unmarshal(b, &m))
		return m
	}

	// /api/nodes: the sample's page and every node in it.
	m := nodesSample.FindStringSubmatch(doc)
	require.NotNil(t, m, "no `$ curl -s http://127.0.0.1:PORT/api/nodes` sample in %s", apiDoc)
	var sample map[string]any
	require.NoError(t, json.Unmarshal([]byte(m[1]), &sample), "the /api/nodes sample is not JSON")
	real := get("/api/nodes")
	require.Equal(t, keysOf(real), keysOf(sample), "keys of the /api/nodes page")
	realNodes, docNodes := real["nodes"].([]any), sample["nodes"].([]any)
	require.Len(t, realNodes, 2)
	require.NotEmpty(t, docNodes)
	want := keysOf(realNodes[0].(map[string]any))
	protocols := map[float64]bool{}
	for _, n := range realNodes {
		require.Equal(t, want, keysOf(n.(map[string]any)), "every node has the same keys")
	}
	for _, n := range docNodes {
		require.Equal(t, want, keysOf(n.(map[string]any)), "keys of a node in the /api/nodes sample")
		protocols[n.(map[string]any)["protocol"].(float64)] = true
	}
	require.Equal(t, map[float64]bool{1: true, 2: true}, protocols, "the sample shows a v1 and a v2 node")
	table := nodesTable.FindStringSubmatch(doc)
	require.NotNil(t, table, "no `/api/nodes` fields table")
	named := map[string]bool{}
	for _, line := range strings.Split(table[1], "\n") {
		if cell, _, ok := strings.Cut(strings.TrimPrefix(line, "| "), " |"); ok {
			for _, k := range backticked.FindAllStringSubmatch(cell, -1) {
				named[k[1]] = true
			}
		}
	}
	for _, k := range want {
		require.True(t, named[k], "the /api/nodes fields table does not name %q", k)
	}

	// /api/summary: the sample and the field list.
	m = summarySample.FindStringSubmatch(doc)
	require.NotNil(t, m, "no /api/summary sample")
	sample = nil // Unmarshal would merge into the page's keys
	require.NoError(t, json.Unmarshal([]byte(m[1]), &sample), "the /api/summary sample is not JSON")
	real = get("/api/summary")
	require.Equal(t, keysOf(real), keysOf(sample), "keys of the /api/summary sample")
	require.Equal(t, keysOf(real["states"].(map[string]any)), keysOf(sample["states"].(map[string]any)), "state names in the /api/summary sample")
	fields := summaryFields.FindStringSubmatch(doc)
	require.NotNil(t, fields, "no `/api/summary` fields list")
	named = map[string]bool{}
	for _, k := range backticked.FindAllStringSubmatch(fields[1], -1) {
		named[k[1]] = true
	}
	for _, k := range keysOf(real) {
		require.True(t, named[k], "the /api/summary fields list does not name %q", k)
	}
}
