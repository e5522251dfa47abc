package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/internal/keyfile"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// runMisuse runs a command that should be refused before it starts, with a
// context already cancelled and in a scratch directory: one that starts
// after all stops at once (exit 0, which the caller's check rejects)
// instead of serving until the test times out, and leaves no
// ./heartbeat-data behind.
func runMisuse(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb bytes.Buffer
	code := Main(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestDiagram(t *testing.T) {
	code, out, _ := run(t, "diagram")
	require.Equal(t, 0, code)
	require.Equal(t, fsm.Mermaid(), out)
	code, out, _ = run(t, "diagram", "--format", "dot")
	require.Equal(t, 0, code)
	require.Equal(t, fsm.DOT(), out)
	code, _, errs := run(t, "diagram", "--format", "svg")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "mermaid or dot")
}

// Help goes to stdout with exit 0; misuse goes to stderr with exit 2.
func TestHelpGoesToStdout(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}} {
		code, out, errs := run(t, args...)
		require.Equal(t, 0, code, args)
		require.Empty(t, errs, args)
		for _, c := range commands() {
			require.Contains(t, out, "  "+c.name+" ", args)
		}
	}
	for _, c := range commands() {
		code, viaHelp, errs := run(t, "help", c.name)
		require.Equal(t, 0, code, c.name)
		require.Empty(t, errs, c.name)
		require.True(t, strings.HasPrefix(viaHelp, "usage: heartbeat "+c.name), viaHelp)
		code, viaFlag, _ := run(t, c.name, "--help")
		require.Equal(t, 0, code, c.name)
		require.Equal(t, viaHelp, viaFlag, "heartbeat help %s is %s --help", c.name, c.name)
	}
	code, out, errs := run(t)
	require.Equal(t, 2, code)
	require.Empty(t, out)
	require.Contains(t, errs, "usage: heartbeat <command>")
	code, out, errs = run(t, "help", "nope")
	require.Equal(t, 2, code)
	require.Empty(t, out)
	require.Contains(t, errs, `unknown command "nope"`)
}

func TestVersion(t *testing.T) {
	bi, ok := debug.ReadBuildInfo()
	require.True(t, ok)
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		code, out, errs := run(t, args...)
		require.Equal(t, 0, code, args)
		require.Empty(t, errs)
		require.True(t, strings.HasPrefix(out, "heartbeat "+bi.Main.Version+" "), out)
		require.Contains(t, out, runtime.Version())
	}
}

// Every usage error exits 2 with one error line naming the flag, and a
// hint; none is silently replaced by a default.
func TestUsageErrors(t *testing.T) {
	t.Chdir(t.TempDir())
	const target = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWHHzSeKaY8xuZVzkLbKFfvNgPPeKhFBGrMbNzbm5akpqu"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"beat", "--target", target, "--beat-period", "0s"}, "--beat-period 0s: want a positive duration"},
		{[]string{"beat", "--target", target, "--reconnect-period", "-1s"}, "--reconnect-period -1s"},
		{[]string{"beat", "--target", target, "--reconnect-period", "10"}, `invalid value "10" for flag -reconnect-period`},
		{[]string{"beat", "--target", "/ip4/127.0.0.1/tcp/1"}, `heartbeat beat: --target "/ip4/127.0.0.1/tcp/1": want a multiaddr ending in /p2p/<peer-id>`},
		{[]string{"aggregate", "--idle-timeout", "0s"}, "--idle-timeout 0s"},
		{[]string{"aggregate", "--max-nodes", "0"}, "--max-nodes 0"},
		{[]string{"aggregate", "--max-line-bytes", "-1"}, "--max-line-bytes -1"},
		{[]string{"aggregate", "--protocols", "v1,v3"}, `--protocols "v1,v3"`},
		{[]string{"aggregate", "--accept-rate", "-5"}, "--accept-rate -5"},
		{[]string{"aggregate", "--accept-rate", "NaN"}, "--accept-rate NaN"},
		{[]string{"aggregate", "--accept-rate", "Inf"}, "--accept-rate +Inf"},
		// Past package pacing's bounds (1e19 panicked, 1e-12 paced nothing).
		{[]string{"aggregate", "--accept-rate", "1e19"}, "--accept-rate (1e+19) must be between"},
		{[]string{"aggregate", "--accept-rate", "1e-12"}, "--accept-rate (1e-12) must be between"},
		{[]string{"sim", "--accept-rate", "1e19"}, "--accept-rate must be between"},
		// An empty list item is a mistake, never "everyone": --allow "$IDS"
		// with IDS unset used to start an aggregator open to all.
		{[]string{"aggregate", "--allow", ""}, `invalid value "" for flag -allow: empty item`},
		{[]string{"aggregate", "--allow", "12D3KooWHHzSeKaY8xuZVzkLbKFfvNgPPeKhFBGrMbNzbm5akpqu,"}, `for flag -allow: empty item`},
		{[]string{"aggregate", "--protocols", ""}, `invalid value "" for flag -protocols: empty item`},
		{[]string{"aggregate", "--pacing-window", "2h"}, "--pacing-window 2h0m0s: at most 1h0m0s"},
		{[]string{"aggregate", "--pacing-window", "0s"}, "--pacing-window 0s"},
		{[]string{"aggregate", "--listen", "/dns4/localhost/udp/4001"}, "want a TCP address"},
		{[]string{"sim", "--protocol", "v3"}, `--protocol "v3": want v1, v2 or mixed`},
		{[]string{"sim", "--accept-rate", "-5"}, "--accept-rate -5"},
		{[]string{"sim", "--pacing-window", "2h"}, "--pacing-window 2h0m0s: at most 1h0m0s"},
		{[]string{"sim", "--pacing-window", "0s"}, "--pacing-window 0s"},
		{[]string{"aggregate", "--listen", "/ip4/127.0.0.1"}, "want a TCP address"},
		{[]string{"aggregate", "--listen-quic", "/ip4/127.0.0.1/tcp/4001"}, "want a QUIC address"},
		{[]string{"aggregate", "--listen-quic", "/ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooWHHzSeKaY8xuZVzkLbKFfvNgPPeKhFBGrMbNzbm5akpqu"}, "leave out /p2p/"},
		{[]string{"aggregate", "--listen-quic", "nope"}, `--listen-quic "nope"`},
		{[]string{"aggregate", "--http", "127.0.0.1:http"}, "want a port number"},
		{[]string{"demo", "--http", "nope"}, `--http "nope"`},
		{[]string{"load", "--nodes", "10"}, "--target is required"},
		{[]string{"load", "--target", target}, "--nodes 0: want at least 1"},
		{[]string{"load", "--target", target, "--nodes", "1", "--dial-concurrency", "0"}, "--dial-concurrency 0"},
		{[]string{"load", "--target", target, "--nodes", "1", "--period", "0s"}, "--period 0s"},
		{[]string{"load", "--target", target, "--nodes", "1", "--ramp", "-1s"}, "--ramp -1s"},
		{[]string{"load", "--target", "/ip4/127.0.0.1/tcp/1", "--nodes", "1"}, "--target"},
		{[]string{"load", "--target", target, "--nodes", "1", "--protocol", "v3"}, `--protocol "v3": want v1, v2 or auto`},
		{[]string{"version", "extra"}, `unexpected argument "extra"`},
	} {
		code, out, errs := runMisuse(t, tc.args...)
		require.Equal(t, 2, code, "%v: %s", tc.args, errs)
		require.Empty(t, out, tc.args)
		require.Contains(t, errs, tc.want, tc.args)
		require.Equal(t, "heartbeat "+tc.args[0]+": ", errs[:len("heartbeat "+tc.args[0]+": ")])
		require.Equal(t, 2, strings.Count(errs, "\n"), "the error and the hint: %s", errs)
	}
}

// aggregate prints a ready-to-paste beat command, and stops with exit 0
// when its context ends (SIGINT/SIGTERM in the binary).
func TestAggregatePrintsBeatCommand(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuffer
	done := make(chan int)
	go func() {
		done <- Main(ctx, []string{"aggregate", "--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0", "--expected-period", "2s", "--data", dir}, &out, &errb)
	}()
	line := out.waitFor(t, "\n  heartbeat beat --target ")
	url := strings.Fields(out.waitFor(t, "http      "))[1]
	// /metrics has the Go and process collectors and the build info.
	resp, err := http.Get(url + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	for _, want := range []string{"\ngo_goroutines ", "\nprocess_open_fds ", "\nheartbeat_nodes{",
		`heartbeat_build_info{goversion="` + runtime.Version() + `",version="` + moduleVersion() + `"} 1`} {
		require.Contains(t, string(body), want)
	}
	cancel()
	require.Equal(t, 0, <-done, errb.String())
	m := regexp.MustCompile(`aggregator (\S+)\n`).FindStringSubmatch(out.String())
	require.NotNil(t, m, out.String())
	require.Equal(t, "  heartbeat beat --target "+m[1]+" --beat-period 2s", line)
	// The pasted line parses: only the aggregator it names is missing.
	code, _, errs := run(t, append(strings.Fields(line)[1:], "--help")...)
	require.Equal(t, 0, code, errs)
}

// With --listen-quic the aggregator also prints its QUIC address, and a
// libp2p host dials it over QUIC.
func TestAggregateListensOnQUIC(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuffer
	done := make(chan int)
	go func() {
		done <- Main(ctx, []string{"aggregate", "--listen", "/ip4/127.0.0.1/tcp/0", "--listen-quic", "/ip4/127.0.0.1/udp/0/quic-v1",
			"--http", "", "--data", ""}, &out, &errb)
	}()
	out.waitFor(t, "run a sender with:")
	m := regexp.MustCompile(`also +(/ip4/127\.0\.0\.1/udp/\d+/quic-v1/p2p/\S+)\n`).FindStringSubmatch(out.String())
	require.NotNil(t, m, out.String())
	ai, err := peer.AddrInfoFromString(m[1])
	require.NoError(t, err)
	h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Transport(quic.NewTransport))
	require.NoError(t, err)
	require.NoError(t, h.Connect(ctx, *ai))
	require.NoError(t, h.Close())
	cancel()
	require.Equal(t, 0, <-done, errb.String())
}

// TestDemoShortRun runs the whole demo, shortened: the aggregator stops at
// 2.25 s (once every sender beats) for 3.4 s, and the run goes on until
// every sender beats to it again and the aggregator sees every node Up.
// The outage outlasts a sender's first retry (2 s ± 20% after the stop) by
// a second, so that retry fails even on a loaded machine.
// Its output is not a terminal: a plain timeline.
func TestDemoShortRun(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	code, out, errs := run(t, "demo", "--duration", "9s")
	require.Equal(t, 0, code, errs)
	require.NotContains(t, out, "\x1b[", "no terminal, no table")
	require.Contains(t, out, "stopping the aggregator")
	require.Contains(t, out, "aggregator back, same identity and address")
	require.Contains(t, out, `node-5 is on a fork on purpose (same heights, other heads), so it shows "in dispute"`)
	require.Regexp(t, `node-\d +WARN  Heartbeat service failed to connect outage=0\.0s failures=1 error="…: [^"]*"\n`, out, "the WARN of the outage, short")
	requireStopSeenByEachSender(t, out)
	require.Contains(t, out, "INFO  Heartbeat service connected to aggregator outage=", "the INFO of the recovery")
	// The senders speak v2 (the default), so each measured its round trip.
	require.Regexp(t, `round trip \(v2 acks\)\s+node-1 \d[.\dµms]*, node-2 \d[.\dµms]*, node-3 \d[.\dµms]*, node-4 \d[.\dµms]*, node-5 \d[.\dµms]*\n`, out)
	require.Regexp(t, `all senders beating\s+\d[.\dms]* after the restart`, out)
	require.Regexp(t, `all nodes up\s+\d[.\dms]* after the restart \(aggregator's view\)`, out)
	for _, line := range strings.Split(out, "\n") {
		require.LessOrEqual(t, len([]rune(line)), 170, "a long line: %s", line)
	}
	for i := 1; i <= demoNodes; i++ {
		// Failed retries after the first fold into the recovery line.
		require.LessOrEqual(t, strings.Count(out, fmt.Sprintf("node-%d           Backoff -> Connecting -> Backoff", i)), 1, out)
	}
	sent := reportNumber(t, out, "heartbeats sent")
	received := reportNumber(t, out, "heartbeats received")
	// Every node was Up at the restarted aggregator: it counted a beat of each.
	require.GreaterOrEqual(t, received, 5)
	require.Positive(t, sent)
	require.GreaterOrEqual(t, reportNumber(t, out, "reconnects"), 5)
	require.Equal(t, demoNodes, strings.Count(out, " to=left\n"), "the stopped senders turn Left at the aggregator, not Down")
	requireReportLast(t, out)
}

// requireStopSeenByEachSender checks that the stop shows in every sender's
// log: normally as the aggregator's GoAway (v2: "asked to come back
// later") or orderly close (v1); a stream its shutdown still had to reset
// says so. A sender whose rejoin (within one beat
// period) lands while the aggregator is closing gets its new stream ended
// too, so it may show the stop once more per stream it opened during the
// outage, and no more.
func requireStopSeenByEachSender(t *testing.T, out string) {
	t.Helper()
	from := strings.Index(out, "demo       stopping the aggregator\n")
	to := strings.Index(out, "demo       aggregator back, same identity and address\n")
	require.True(t, from >= 0 && to > from, out)
	outage := out[from:to]
	for i := 1; i <= demoNodes; i++ {
		node := fmt.Sprintf("node-%d", i)
		ended := regexp.MustCompile(node+` +(INFO  aggregator asked to come back later.*|INFO  aggregator closed the heartbeat stream|WARN  heartbeat stream reset cause=.*)\n`).FindAllString(outage, -1)
		opened := regexp.MustCompile(node+` +[A-Za-z >-]*-> Beating\b`).FindAllString(outage, -1)
		require.NotEmpty(t, ended, "%s did not see the stop:\n%s", node, out)
		require.LessOrEqual(t, len(ended), 1+len(opened), "%s saw the stop more often than it had streams:\n%s", node, out)
	}
}

func reportNumber(t *testing.T, out, label string) int {
	t.Helper()
	m := regexp.MustCompile(label + `\s+(\d+)`).FindStringSubmatch(out)
	require.NotNil(t, m, "no %q in the report:\n%s", label, out)
	n, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	return n
}

// The sim command is reproducible: two runs of one seed print the same
// trace hash, and write the same trace file.
func TestSimIsReproducible(t *testing.T) {
	dir := t.TempDir()
	hash := func(name string) (string, string) {
		path := dir + "/" + name
		code, out, errs := run(t, "sim", "--nodes", "20", "--duration", "10m", "--seed", "7",
			"--scenario", "aggregator-restart", "--trace", path)
		require.Equal(t, 0, code, errs)
		m := regexp.MustCompile(`hash fnv64a:([0-9a-f]{16})`).FindStringSubmatch(out)
		require.NotNil(t, m, out)
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		require.NotEmpty(t, b)
		return m[1], string(b)
	}
	h1, t1 := hash("a.trace")
	h2, t2 := hash("b.trace")
	require.Equal(t, h1, h2)
	require.Equal(t, t1, t2)

	code, _, errs := run(t, "sim", "--scenario", "no-such-scenario", "--duration", "10m")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "no-such-scenario")
	code, out, _ := run(t, "sim", "-h")
	require.Equal(t, 0, code)
	require.Contains(t, out, "long-outage")
}

// --down-retention must be positive: misuse exits 2 before anything starts.
func TestAggregateDownRetentionFlag(t *testing.T) {
	for _, v := range []string{"0s", "-1h"} {
		code, _, errs := run(t, "aggregate", "--down-retention", v, "--http", "", "--listen", "/ip4/127.0.0.1/tcp/0")
		require.Equal(t, 2, code, v)
		require.Contains(t, errs, "--down-retention")
	}
	code, out, _ := run(t, "aggregate", "-h")
	require.Equal(t, 0, code)
	require.Contains(t, out, "-down-retention")
}

// `heartbeat beat` whose target is its own peer id (the one its --key gives)
// is a usage error: exit 2, and the message names the field.
func TestBeatToSelfExits2(t *testing.T) {
	path := t.TempDir() + "/node.key"
	key, err := keyfile.LoadOrCreate(path)
	require.NoError(t, err)
	id, err := peer.IDFromPrivateKey(key)
	require.NoError(t, err)
	code, _, errs := run(t, "beat", "--key", path, "--target", "/ip4/127.0.0.1/tcp/4001/p2p/"+id.String())
	require.Equal(t, 2, code, errs)
	require.Contains(t, errs, "heartbeat beat: --target ", "the error names the flag")
	require.Contains(t, errs, "own peer id")
}

// TestAggregateKeepsItsIdentityInTheDataDir: without --key, the key lives
// in --data beside the store, so a restart keeps the peer id the senders
// dial (and the store's nodes stay reachable by them).
func TestAggregateKeepsItsIdentityInTheDataDir(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	start := func() string {
		ctx, cancel := context.WithCancel(context.Background())
		var out, errb syncBuffer
		done := make(chan int)
		go func() {
			done <- Main(ctx, []string{"aggregate", "--listen", "/ip4/127.0.0.1/tcp/0", "--http", "", "--data", dir}, &out, &errb)
		}()
		out.waitFor(t, "\n  heartbeat beat --target ")
		cancel()
		require.Equal(t, 0, <-done, errb.String())
		m := regexp.MustCompile(`aggregator \S+/p2p/(\S+)\n`).FindStringSubmatch(out.String())
		require.NotNil(t, m, out.String())
		return m[1]
	}
	first := start()
	require.FileExists(t, filepath.Join(dir, "aggregator.key"))
	require.Equal(t, first, start(), "a restart with the same --data keeps the peer id")
}
