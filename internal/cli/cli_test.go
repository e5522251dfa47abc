package cli

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/p2pbeat/heartbeat/fsm"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, &out, &errb)
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

func TestUsage(t *testing.T) {
	code, _, errs := run(t)
	require.Equal(t, 2, code)
	for _, c := range commands() {
		require.Contains(t, errs, c.name)
	}
	code, _, _ = run(t, "help")
	require.Equal(t, 0, code)
	code, _, errs = run(t, "beat", "-h")
	require.Equal(t, 0, code)
	require.Contains(t, errs, "--target")
}

// TestDemoShortRun runs the whole demo, shortened: the aggregator stops at
// 1.75 s (once every sender beats) for 2.6 s, and the run goes on until
// every sender beats to it again and the aggregator sees every node Up.
func TestDemoShortRun(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	code, out, errs := run(t, "demo", "--duration", "7s")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "stopping the aggregator")
	require.Contains(t, out, "aggregator back, same identity and address")
	require.Contains(t, out, "Heartbeat service failed to connect for 0s", "the WARN of the outage")
	require.Contains(t, out, "Heartbeat service connected to aggregator", "the INFO of the recovery")
	require.Regexp(t, `all senders beating\s+\d`, out)
	require.Regexp(t, `all nodes up\s+\d`, out, "the aggregator saw every node Up again")
	sent := reportNumber(t, out, "heartbeats sent")
	received := reportNumber(t, out, "heartbeats received")
	// Every node was Up at the restarted aggregator: it counted a beat of each.
	require.GreaterOrEqual(t, received, 5)
	require.Positive(t, sent)
	require.GreaterOrEqual(t, reportNumber(t, out, "reconnects"), 5)
	require.Equal(t, 1, strings.Count(out, "\nreport\n"))
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
	code, _, errs = run(t, "sim", "-h")
	require.Equal(t, 0, code)
	require.Contains(t, errs, "long-outage")
}
