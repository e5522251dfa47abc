package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p/gologshim"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/stretchr/testify/require"
)

// go-libp2p's records go through the command's logger: with --log-json
// they are JSON lines like ours, WARN and above, with our key scheme; fx's
// repeats of a failed start are dropped.
func TestLibp2pLogsUseTheCommandsLogger(t *testing.T) {
	var buf bytes.Buffer
	lf := logFlags{level: "info", json: true}
	_, err := lf.logger("heartbeat", &buf) // routes go-libp2p's records to it
	require.NoError(t, err)
	defer routeLibp2pLogs(hclog.NewNullLogger())

	swarm := gologshim.Logger("swarm2-test")
	swarm.Warn("listening failed", "on", ma.StringCast("/ip4/192.0.2.1/tcp/0"), "err", errors.New("bind: cannot assign requested address"), "remotePeer", "12D3KooW")
	swarm.Info("an info line for go-libp2p's developers")
	swarm.Debug("a debug line")
	gologshim.Logger("p2p-config-test").Error("start failed", "system", "fx", "error", "boom")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, 1, buf.String())
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &m), lines[0])
	require.Equal(t, "warn", m["@level"])
	require.Equal(t, "heartbeat.libp2p.swarm2-test", m["@module"])
	require.Equal(t, "listening failed", m["@message"])
	require.Equal(t, "/ip4/192.0.2.1/tcp/0", m["on"])
	require.Equal(t, "bind: cannot assign requested address", m["error"])
	require.Equal(t, "12D3KooW", m["remote_peer"])
	require.NotContains(t, lines[0], "source")
}
