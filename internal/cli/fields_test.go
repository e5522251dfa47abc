package cli

import (
	"errors"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/sim"
)

// goField matches a Go field name (two or more capitalised words run
// together, "IdleTimeout") or a library's "Config."/"Params." prefix.
var goField = regexp.MustCompile(`\b[A-Z][a-z]+[A-Z]\w*\b|\b(?:Config|Params)\.`)

// Every invalid-field error of the libraries that a flag of sim or
// aggregate can cause names the flags, not the Go fields; exit 2.
func TestInvalidFieldsNameTheFlags(t *testing.T) {
	agg := []string{"aggregate", "--listen", "/ip4/127.0.0.1/tcp/0", "--http", "", "--data", ""}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"sim", "--nodes", "0"}, "heartbeat sim: --nodes must be between 1 and 1000000, got 0\n"},
		{[]string{"sim", "--nodes", "2000000"}, "--nodes must be between 1 and 1000000, got 2000000\n"},
		{[]string{"sim", "--duration", "0s"}, "--duration must be positive, got 0s\n"},
		{[]string{"sim", "--duration", "100000h"}, "--duration must be at most ten years of virtual time"},
		{[]string{"sim", "--scenario", "nope"}, `--scenario "nope" is not a scenario; choose one of [steady `},
		{[]string{"sim", "--duration", "1m", "--scenario", "partition"}, `--duration (1m0s) is too short for the scenario: scenario "partition" needs at least`},
		{append(agg, "--max-line-bytes", "10"), "heartbeat aggregate: --max-line-bytes (10) must be between 256 and 1048576\n"},
		{append(agg, "--max-line-bytes", "100000000"), "--max-line-bytes (100000000) must be between"},
		{append(agg, "--idle-timeout", "1s"), "--idle-timeout (1s) must be longer than --expected-period (3s), or beating senders would be cut off\n"},
		{append(agg, "--expected-period", "1m"), "--idle-timeout (30s) must be longer than --expected-period (1m0s)"},
		{append(agg, "--expected-period", "3h"), "--expected-period (3h0m0s) must be at most 2h24m0s: by default a node's learned period may reach 10 times it"},
	} {
		code, out, errs := run(t, c.args...)
		require.Equal(t, 2, code, "%v: %s", c.args, errs)
		require.Empty(t, out, c.args)
		require.Contains(t, errs, c.want, c.args)
		require.NotRegexp(t, goField, errs, c.args)
	}
}

// The libraries' own errors keep naming the field, by its Go name, and
// carry it for errors.As; a default derived from another field names the
// field it came from.
func TestLibraryErrorsNameTheField(t *testing.T) {
	_, err := sim.Run(sim.Params{Nodes: 0, Duration: time.Hour})
	var pe *sim.ParamError
	require.ErrorAs(t, err, &pe)
	require.Equal(t, "Nodes", pe.Field)
	require.ErrorContains(t, err, "sim: Params.Nodes must be between")

	_, err = aggregator.HostOptions(aggregator.Config{IdleTimeout: time.Second}, nil)
	var ae *aggregator.ConfigError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, "IdleTimeout", ae.Field)
	require.EqualError(t, err, "aggregator: Config.IdleTimeout (1s) must be longer than ExpectedPeriod (3s), or beating senders would be cut off")

	_, err = aggregator.HostOptions(aggregator.Config{ExpectedPeriod: 3 * time.Hour}, nil)
	var te *tracker.ConfigError
	require.ErrorAs(t, err, &te)
	require.Equal(t, "ExpectedPeriod", te.Field, "MaxPeriod was left to its default")
	require.ErrorContains(t, err, "aggregator: tracker: Config.ExpectedPeriod (3h0m0s) must be at most 2h24m0s")
	require.False(t, errors.As(err, &ae), "a tracker field is the tracker's error")

	// Not a field of the command: the library's message as it is.
	require.EqualError(t, aggregateFlags.usage(errors.New("disk full")), "disk full")
	require.EqualError(t, simFlags.usage(err), err.Error())
}
