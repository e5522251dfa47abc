package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-reuseport"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator/store"
)

// guard bounds every wait on a child process; it is never slept on.
const guard = 60 * time.Second

// buildBinary builds the heartbeat command once per test binary run.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "heartbeat")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Run(), "go build")
	return bin
}

// process is a child process with its stdout and stderr read line by line.
type process struct {
	cmd    *exec.Cmd
	stdout chan string
	stderr chan string
	exited chan error

	mu        sync.Mutex
	stderrAll []string // every stderr line, also those waitLine skipped
}

func start(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = t.TempDir() // aggregate's default --data is ./heartbeat-data
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	errp, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &process{cmd: cmd, stdout: lines(out, nil), exited: make(chan error, 1)}
	p.stderr = lines(errp, func(l string) {
		p.mu.Lock()
		p.stderrAll = append(p.stderrAll, l)
		p.mu.Unlock()
	})
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})
	return p
}

func lines(r io.Reader, record func(string)) chan string {
	ch := make(chan string, 4096)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if record != nil {
				record(sc.Text())
			}
			ch <- sc.Text()
		}
	}()
	return ch
}

// allStderr waits for stderr to end and returns every line it had.
func (p *process) allStderr(t *testing.T) []string {
	t.Helper()
	deadline := time.After(guard)
	for {
		select {
		case _, ok := <-p.stderr:
			if !ok {
				p.mu.Lock()
				defer p.mu.Unlock()
				return p.stderrAll
			}
		case <-deadline:
			t.Fatal("stderr did not end")
		}
	}
}

// waitLine returns the first line from ch that contains every want.
func waitLine(t *testing.T, ch chan string, want ...string) string {
	t.Helper()
	deadline := time.After(guard)
	for {
		select {
		case l, ok := <-ch:
			if !ok {
				t.Fatalf("output ended before a line with %q", want)
			}
			match := true
			for _, w := range want {
				match = match && strings.Contains(l, w)
			}
			if match {
				return l
			}
		case <-deadline:
			t.Fatalf("no line with %q", want)
		}
	}
}

// stop sends SIGTERM and expects a clean exit.
func (p *process) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-p.exited:
		require.NoError(t, err, "exit after SIGTERM")
	case <-time.After(guard):
		t.Fatal("no exit after SIGTERM")
	}
}

// TestAggregateAndBeatProcesses runs `aggregate` and `beat` as separate
// processes, and reads the node as Up from the aggregator's HTTP API.
func TestAggregateAndBeatProcesses(t *testing.T) {
	bin := buildBinary(t)
	key := filepath.Join(t.TempDir(), "aggregator.key")
	agg := start(t, bin, "aggregate", "--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0",
		"--key", key, "--expected-period", "1s", "--log-json")
	target := strings.Fields(waitLine(t, agg.stdout, "aggregator /ip4/127.0.0.1/tcp/", "/p2p/"))[1]
	url := strings.Fields(waitLine(t, agg.stdout, "http", "http://127.0.0.1:"))[1]
	// The ready-to-paste line names the same aggregator.
	require.Equal(t, "heartbeat beat --target "+target+" --beat-period 1s", strings.TrimSpace(waitLine(t, agg.stdout, "heartbeat beat --target")))
	st, err := os.Stat(key)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	beat := start(t, bin, "beat", "--target", target, "--nickname", "cli-node", "--beat-period", "200ms", "--reconnect-period", "500ms", "--log-json", "--log-level", "debug")
	waitLine(t, agg.stderr, `"node state changed"`, `"nickname":"cli-node"`, `"to":"up"`)

	resp, err := http.Get(url + "/api/nodes")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var page struct{ Nodes []map[string]any }
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&page))
	nodes := page.Nodes
	require.Len(t, nodes, 1)
	require.Equal(t, "cli-node", nodes[0]["nickname"])
	require.Equal(t, "up", nodes[0]["state"])

	beat.stop(t)
	agg.stop(t)
	// With --log-json every line is JSON, and each sender line names its
	// own node and the aggregator.
	for _, p := range []*process{agg, beat} {
		all := p.allStderr(t)
		require.NotEmpty(t, all)
		for _, l := range all {
			var m map[string]any
			require.NoError(t, json.Unmarshal([]byte(l), &m), "not JSON: %s", l)
			if p == beat {
				require.Equal(t, "cli-node", m["nickname"], l)
				require.NotEmpty(t, m["peer_id"], l)
				require.Equal(t, target[strings.LastIndex(target, "/")+1:], m["target"], l)
			}
		}
	}
}

// exitRow is a row of the exit-code table in docs/cli.md.
type exitRow struct {
	code    int
	args    []string
	sigterm bool   // "then SIGTERM": wait for the aggregator line, then stop it
	stderr  string // the text stderr must contain
}

var rowRE = regexp.MustCompile("^\\| ([0-9]) \\| [^|]+ \\| `heartbeat ?([^`]*)`([^|]*)\\| (?:`(.*)`)? ?\\|$")

// exitRows reads the exit-code table of docs/cli.md.
func exitRows(t *testing.T) []exitRow {
	t.Helper()
	b, err := os.ReadFile("../../docs/cli.md")
	require.NoError(t, err)
	doc := string(b)
	start := strings.Index(doc, "## Exit codes and signals")
	require.GreaterOrEqual(t, start, 0)
	var rows []exitRow
	for _, line := range strings.Split(doc[start:], "\n")[1:] {
		if strings.HasPrefix(line, "## ") {
			break
		}
		if !strings.HasPrefix(line, "| 0") && !strings.HasPrefix(line, "| 1") && !strings.HasPrefix(line, "| 2") {
			continue
		}
		m := rowRE.FindStringSubmatch(line)
		require.NotNil(t, m, "a row of the exit-code table that the test cannot read: %s", line)
		code, _ := strconv.Atoi(m[1])
		rows = append(rows, exitRow{code: code, args: strings.Fields(m[2]), sigterm: strings.Contains(m[3], "SIGTERM"), stderr: m[4]})
	}
	return rows
}

// TestExitCodes runs every row of the exit-code table in docs/cli.md
// against the built binary: the exit code, where the text went, and what
// stderr says.
func TestExitCodes(t *testing.T) {
	rows := exitRows(t)
	require.GreaterOrEqual(t, len(rows), 20)
	codes := map[int]int{}
	for _, r := range rows {
		codes[r.code]++
	}
	require.Positive(t, codes[0])
	require.Positive(t, codes[1])
	require.Positive(t, codes[2])

	bin := buildBinary(t)
	// A port in use, for the PORT placeholder, held with SO_REUSEPORT as
	// go-libp2p's TCP transport holds it by default: an aggregator that
	// set SO_REUSEPORT too would share it with this listener, so the row
	// "second aggregator on the same port" fails only if it does not.
	taken, err := reuseport.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	port := strconv.Itoa(taken.Addr().(*net.TCPAddr).Port)
	// A data directory whose database file is not a database, for BADDATA.
	bad := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(bad, "heartbeat.db"), bytes.Repeat([]byte("not a database "), 512), 0o600))
	// A data directory this process holds open, as a running aggregator
	// does, for LOCKEDDATA.
	locked := t.TempDir()
	held, err := store.OpenSQLite(context.Background(), locked)
	require.NoError(t, err)
	defer held.Close()

	for _, r := range rows {
		args := make([]string, len(r.args))
		for i, a := range r.args {
			args[i] = strings.NewReplacer("PORT", port, "BADDATA", bad, "LOCKEDDATA", locked).Replace(a)
		}
		name := strings.Join(append([]string{"heartbeat"}, args...), " ")
		wantStderr := strings.ReplaceAll(r.stderr, "PORT", port)
		if r.sigterm {
			p := start(t, bin, args...)
			waitLine(t, p.stdout, "aggregator /ip4/127.0.0.1/tcp/")
			p.stop(t)
			continue
		}
		// A command that should have failed but serves (a port shared
		// after all) is killed rather than hang the test.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Dir = t.TempDir() // aggregate's default --data is ./heartbeat-data
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		code := 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else {
			require.NoError(t, err, name)
		}
		require.Equal(t, r.code, code, "%s\nstdout: %s\nstderr: %s", name, stdout.String(), stderr.String())
		require.Contains(t, stderr.String(), wantStderr, name)
		if r.code != 0 {
			require.NotContains(t, stderr.String(), "aggregator started", "%s: checked before the start", name)
		}
		switch r.code {
		case 0:
			require.NotEmpty(t, stdout.String(), "%s: help and version go to stdout", name)
			require.Empty(t, stderr.String(), name)
		case 1:
			require.NotContains(t, stderr.String(), "source=", "%s: no framework log lines", name)
			require.Equal(t, 1, strings.Count(stderr.String(), "\n"), "%s: one clean error line: %s", name, stderr.String())
		case 2:
			require.Empty(t, stdout.String(), "%s: misuse goes to stderr", name)
			require.NotContains(t, stderr.String(), "source=", "%s: no framework log lines", name)
			if len(args) > 0 {
				require.Equal(t, 2, strings.Count(stderr.String(), "\n"), "%s: the error and a hint, nothing else", name)
			}
		}
	}
}

// With --log-json every stderr line is JSON, a failure included.
func TestLogJSONFailureIsJSON(t *testing.T) {
	bin := buildBinary(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"aggregate", "--listen", "/ip4/127.0.0.1/tcp/0", "--http", taken.Addr().String(), "--log-json"}, 1},
		{[]string{"beat", "--target", "/ip4/127.0.0.1/tcp/1", "--log-json"}, 2},
	} {
		cmd := exec.Command(bin, tc.args...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		require.True(t, errors.As(err, &exit), "%v", tc.args)
		require.Equal(t, tc.code, exit.ExitCode(), stderr.String())
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		require.NotEmpty(t, lines)
		for _, l := range lines {
			var m map[string]any
			require.NoError(t, json.Unmarshal([]byte(l), &m), "not JSON: %s", l)
		}
		var last map[string]any
		require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &last))
		require.Equal(t, "error", last["@level"])
		require.NotEmpty(t, last["error"])
	}
}

// The README's install line names this package, and the command the
// walkthroughs use exists.
func TestReadmeInstallLine(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	readme := string(b)
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{.Name}}", ".").Output()
	require.NoError(t, err)
	require.Equal(t, "github.com/p2pbeat/heartbeat/cmd/heartbeat main", strings.TrimSpace(string(out)))
	require.Contains(t, readme, "go install github.com/p2pbeat/heartbeat/cmd/heartbeat@latest")
	require.NotContains(t, readme, "go get github.com/p2pbeat/heartbeat\n", "go get of the module root fails outside a module")
	require.Contains(t, readme, "about 3 minutes", "the first run's wait is stated")
}

// Key files and data directories never end up in a commit by accident.
func TestGitignoreCoversKeysAndData(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git")
	}
	if err := exec.Command("git", "rev-parse", "--git-dir").Run(); err != nil {
		t.Skip("not in a git checkout")
	}
	for _, path := range []string{"agg.key", "aggregator.key", "deploy/node.key", "tls.pem", "heartbeat-data/nodes.db",
		"sub/heartbeat-data/x", "heartbeat.db", "heartbeat.db-wal", "heartbeat", "trace.csv"} {
		out, err := exec.Command("git", "-C", "../..", "check-ignore", "--no-index", path).CombinedOutput()
		require.NoError(t, err, "%s is not ignored: %s", path, out)
	}
	// Committed inputs are not ignored.
	for _, path := range []string{"fsm/testdata/scenarios/outage-45m.txt", "docs/cli.md", "internal/keyfile/keyfile.go"} {
		err := exec.Command("git", "-C", "../..", "check-ignore", "--no-index", "-q", path).Run()
		require.Error(t, err, "%s is ignored", path)
	}
}

// A kill -9 of `heartbeat aggregate --data DIR` loses no node: restarted on
// the same directory and key, it lists every node it knew, as unknown (not
// seen since the restart).
func TestKill9RestartListsKnownNodes(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	data, key := filepath.Join(dir, "data"), filepath.Join(dir, "aggregator.key")
	args := []string{"aggregate", "--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0",
		"--key", key, "--data", data, "--expected-period", "1s", "--log-json"}
	agg := start(t, bin, args...)
	target := strings.Fields(waitLine(t, agg.stdout, "aggregator /ip4/127.0.0.1/tcp/", "/p2p/"))[1]
	url := strings.Fields(waitLine(t, agg.stdout, "http", "http://127.0.0.1:"))[1]
	nicks := []string{"k1", "k2", "k3"}
	for _, n := range nicks {
		start(t, bin, "beat", "--target", target, "--nickname", n, "--beat-period", "200ms", "--log-level", "error")
	}
	for range nicks {
		waitLine(t, agg.stderr, `"node state changed"`, `"to":"up"`)
	}
	// Wait for a flush that took the three flips: the store loses at most
	// the last flush interval, and this test is about what it keeps.
	metric := func(name string) float64 {
		resp, err := http.Get(url + "/metrics")
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[0] == name {
				v, err := strconv.ParseFloat(f[1], 64)
				require.NoError(t, err)
				return v
			}
		}
		t.Fatalf("no metric %s", name)
		return 0
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(guard)
	for metric("heartbeat_store_flushes_total") < 1 || metric("heartbeat_store_pending_records") > 0 {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatal("the store never flushed")
		}
	}
	require.NoError(t, agg.cmd.Process.Signal(syscall.SIGKILL))
	<-agg.exited

	agg = start(t, bin, args...)
	url = strings.Fields(waitLine(t, agg.stdout, "http", "http://127.0.0.1:"))[1]
	waitLine(t, agg.stderr, `"nodes restored from the store"`, `"restored":3`)
	resp, err := http.Get(url + "/api/nodes")
	require.NoError(t, err)
	defer resp.Body.Close()
	var page struct{ Nodes []map[string]any }
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&page))
	var got []string
	for _, n := range page.Nodes {
		got = append(got, fmt.Sprint(n["nickname"]))
		require.Equal(t, "unknown", n["state"], "not seen since the restart")
		require.NotEmpty(t, n["last_seen"])
	}
	require.ElementsMatch(t, nicks, got)

	// heartbeat nodes lists them; heartbeat forget retires one (from
	// loopback), and it is listed no more.
	run := func(args ...string) string {
		out, err := exec.Command(bin, args...).CombinedOutput()
		require.NoError(t, err, "%s", out)
		return string(out)
	}
	list := run("nodes", "--url", url, "--state", "unknown")
	require.Contains(t, list, "3 node(s)")
	for _, n := range page.Nodes {
		require.Contains(t, list, fmt.Sprint(n["peer_id"]))
	}
	gone := fmt.Sprint(page.Nodes[0]["peer_id"])
	require.Contains(t, run("forget", gone, "--url", url), "retired "+gone)
	list = run("nodes", "--url", url)
	require.Contains(t, list, "2 node(s)")
	require.NotContains(t, list, gone)
	require.Contains(t, run("forget", gone, "--url", url), "retired "+gone, "idempotent")
	unknown := "12D3KooWHHzSeKaY8xuZVzkLbKFfvNgPPeKhFBGrMbNzbm5akpqu"
	out, err := exec.Command(bin, "forget", unknown, "--url", url).CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "404")
	agg.stop(t)
}
