package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
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
}

func start(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	errp, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &process{cmd: cmd, stdout: lines(out), stderr: lines(errp), exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})
	return p
}

func lines(r io.Reader) chan string {
	ch := make(chan string, 4096)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	return ch
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
	st, err := os.Stat(key)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	beat := start(t, bin, "beat", "--target", target, "--nickname", "cli-node", "--beat-period", "200ms", "--reconnect-period", "500ms")
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
}

func TestBadFlagsExitWithUsage(t *testing.T) {
	bin := buildBinary(t)
	for _, args := range [][]string{
		{},
		{"nope"},
		{"beat"},
		{"beat", "--target", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWHHzSeKaY8xuZVzkLbKFfvNgPPeKhFBGrMbNzbm5akpqu", "--beat-period", "soon"},
		{"aggregate", "--no-such-flag"},
		{"aggregate", "--allow", "not-a-peer-id"},
		{"diagram", "--format", "png"},
		{"demo", "--duration", "1s"},
	} {
		cmd := exec.Command(bin, args...)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		require.True(t, errors.As(err, &exit), "%v: %s", args, out)
		require.Equal(t, 2, exit.ExitCode(), "%v: %s", args, out)
		require.Contains(t, string(out), "usage", "%v", args)
	}
}
