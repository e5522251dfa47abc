package cli

import (
	"errors"
	"regexp"
	"slices"
	"strings"

	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/sim"
)

// fieldFlags names, for one command, the flag that sets each library field
// (by its Go name, as the library's error names it) whose invalid value
// can reach the command.
type fieldFlags map[string]string

// simFlags are sim's: sim.Params fields.
var simFlags = fieldFlags{"Nodes": "nodes", "Duration": "duration", "Seed": "seed", "Scenario": "scenario",
	"Protocol": "protocol", "Pacing.AcceptRate": "accept-rate", "Pacing.PacingWindow": "pacing-window"}

// aggregateFlags are aggregate's: aggregator.Config fields, and the
// tracker.Config fields the aggregator passes on under the same names.
var aggregateFlags = fieldFlags{
	"MaxNodes": "max-nodes", "ExpectedPeriod": "expected-period", "MaxLineBytes": "max-line-bytes",
	"IdleTimeout": "idle-timeout", "DownRetention": "down-retention", "Protocols": "protocols",
	"AcceptRate": "accept-rate", "PacingWindow": "pacing-window",
}

// usage turns err into a usage error (exit 2). An invalid-field error of
// the aggregator, tracker or sim package whose field one of the command's
// flags sets is said in terms of the flags: "--idle-timeout (1s) must be
// longer than --expected-period (3s)…", not "aggregator: Config.IdleTimeout
// (1s) must be longer than ExpectedPeriod (3s)…", which stays the
// library's own message. Any other error is kept as it is.
func (f fieldFlags) usage(err error) error {
	var (
		ae    *aggregator.ConfigError
		te    *tracker.ConfigError
		pe    *sim.ParamError
		field string
		why   string
	)
	switch {
	case errors.As(err, &ae):
		field, why = ae.Field, ae.Reason
	case errors.As(err, &te):
		field, why = te.Field, te.Reason
	case errors.As(err, &pe):
		field, why = pe.Field, pe.Reason
	}
	flag, ok := f[field]
	if !ok {
		return usageError("%v", err)
	}
	return usageError("--%s %s", flag, f.names().ReplaceAllStringFunc(why, func(name string) string { return "--" + f[name] }))
}

// names matches the field names of f as whole words.
func (f fieldFlags) names() *regexp.Regexp {
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range f {
			if !yield(regexp.QuoteMeta(k)) {
				return
			}
		}
	})
	return regexp.MustCompile(`\b(?:` + strings.Join(keys, "|") + `)\b`)
}
