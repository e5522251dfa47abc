package aggregator

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator/metrics"
)

// Node-supplied strings over MaxLabelBytes are cut before the tracker
// stores them: a valid UTF-8 prefix, the mark and a digest, at most
// MaxLabelBytes in all, counted per field. Two long heads that differ only
// past the cut stay different; a value at the cap is untouched.
func TestLabelsCapped(t *testing.T) {
	checkLeaks(t)
	a, err := New(newHost(t), Config{})
	require.NoError(t, err)
	defer a.Close()
	line := func(head, nick, miner, genesis string) string {
		b, err := json.Marshal(map[string]any{"Head": head, "Height": 1, "Nickname": nick, "MinerAddress": miner, "GenesisCID": map[string]string{"/": genesis}})
		require.NoError(t, err)
		return string(b) + "\n"
	}
	long := strings.Repeat("h", 300)
	nick := strings.Repeat("<", 1000) // 6,000 bytes on the wire, escaped
	miner := strings.Repeat("é", 200) // 400 bytes, 2-byte runes: the cut must not split one
	genesis := strings.Repeat("b", 300)
	p1, p2, p3 := randomPeer(t), randomPeer(t), randomPeer(t)
	require.NoError(t, a.ServeLines(p1, strings.NewReader(line(long+"1", nick, miner, genesis))))
	require.NoError(t, a.ServeLines(p2, strings.NewReader(line(long+"2", "ok", "t01", "bafy"))))
	atCap := strings.Repeat("n", MaxLabelBytes)
	require.NoError(t, a.ServeLines(p3, strings.NewReader(line("h", atCap, atCap, atCap))))

	n1, _ := a.Tracker().Node(p1)
	n2, _ := a.Tracker().Node(p2)
	for field, pair := range map[string][2]string{
		"head": {n1.Head, long + "1"}, "nickname": {n1.Nickname, nick},
		"miner_address": {n1.MinerAddress, miner}, "genesis": {n1.Genesis, genesis},
	} {
		got, orig := pair[0], pair[1]
		require.LessOrEqual(t, len(got), MaxLabelBytes, field)
		require.True(t, utf8.ValidString(got), field)
		prefix, digest, ok := strings.Cut(got, truncMark)
		require.True(t, ok, "%s has the mark: %q", field, got)
		require.True(t, strings.HasPrefix(orig, prefix), field)
		require.Len(t, digest, digestHex, field)
		require.Greater(t, len(prefix), MaxLabelBytes-len(truncMark)-digestHex-utf8.UTFMax, field)
	}
	require.NotEqual(t, n1.Head, n2.Head, "a digest keeps long heads apart")
	n3, _ := a.Tracker().Node(p3)
	require.Equal(t, atCap, n3.Nickname)
	require.Equal(t, atCap, n3.MinerAddress)
	require.Equal(t, atCap, n3.Genesis)

	for field, want := range map[string]float64{
		metrics.FieldHead: 2, metrics.FieldNickname: 1, metrics.FieldMinerAddress: 1, metrics.FieldGenesis: 1,
	} {
		require.Equal(t, want, counter(t, a.Registry(), "heartbeat_labels_truncated_total", "field", field), field)
	}
}

// The aggregator's registry carries the Go and process collectors and
// heartbeat_build_info, also when an embedder's registry already has the
// Go collector.
func TestRegistryHasProcessMetrics(t *testing.T) {
	checkLeaks(t)
	h := newHost(t)
	reg := prometheus.NewRegistry()
	require.NoError(t, reg.Register(collectors.NewGoCollector()))
	a, err := New(h, Config{}, WithRegistry(reg))
	require.NoError(t, err)
	defer a.Close()
	mfs, err := a.Registry().Gather()
	require.NoError(t, err)
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"go_goroutines", "process_open_fds", "heartbeat_build_info", "heartbeat_nodes"} {
		require.True(t, names[want], want)
	}
}

// One registry for the host (go-libp2p's metrics) and the aggregator: no
// name clashes, and the scrape carries both.
func TestOneRegistryForHostAndAggregator(t *testing.T) {
	checkLeaks(t)
	reg := prometheus.NewRegistry()
	opts := []Option{WithRegistry(reg)}
	hopts, err := HostOptions(Config{}, nil, opts...)
	require.NoError(t, err)
	a, err := New(newHost(t, hopts...), Config{}, opts...)
	require.NoError(t, err)
	defer a.Close()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var libp2p, ours int
	for _, mf := range mfs {
		switch {
		case strings.HasPrefix(mf.GetName(), "libp2p_"):
			libp2p++
		case strings.HasPrefix(mf.GetName(), "heartbeat_"):
			ours++
		}
	}
	require.Positive(t, libp2p)
	require.Positive(t, ours)
}

// A node-supplied string is logged on one line without terminal escapes.
func TestLogTextQuotesControlCharacters(t *testing.T) {
	for in, want := range map[string]string{
		"lotus-ams-01":           "lotus-ams-01",
		"nœud ☃":                 "nœud ☃",
		"x\n[INFO]  forged line": `"x\n[INFO]  forged line"`,
		"x\x1b[31mRED\a":         `"x\x1b[31mRED\a"`,
		"tab\there":              `"tab\there"`,
		"bad utf8 \xff":          `"bad utf8 \xff"`,
	} {
		require.Equal(t, want, logText(in), "%q", in)
	}
}
