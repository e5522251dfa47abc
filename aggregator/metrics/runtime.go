package metrics

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// ModulePath is this module's path, whose version heartbeat_build_info
// reports.
const ModulePath = "github.com/p2pbeat/heartbeat"

// RegisterProcess registers on reg what every Prometheus target exposes
// besides its own metrics: the Go runtime collector (go_*), the process
// collector (process_*: CPU, RSS, open file descriptors against their
// limit) and heartbeat_build_info{version,goversion}, a constant 1. A
// collector reg already holds (an embedder's registry that has them) is
// left as it is.
func RegisterProcess(reg prometheus.Registerer) error {
	if reg == nil {
		return errors.New("metrics: nil prometheus.Registerer")
	}
	version, goversion := BuildVersion()
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "heartbeat_build_info",
		Help:        "A constant 1, labelled with the heartbeat module's version (from the binary's build info) and the Go version it was built with.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": goversion},
	})
	info.Set(1)
	for _, c := range []struct {
		name string
		c    prometheus.Collector
	}{
		{"the Go collector", collectors.NewGoCollector()},
		{"the process collector", collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})},
		{"heartbeat_build_info", info},
	} {
		if err := reg.Register(c.c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				continue
			}
			return fmt.Errorf("metrics: register %s: %w", c.name, err)
		}
	}
	return nil
}

// BuildVersion returns the version of ModulePath in the running binary's
// build info (debug.ReadBuildInfo): the main module's version when the
// binary is this module's (e.g. "v1.2.3" after go install …@v1.2.3,
// "(devel)" for a local build), the dependency's version when a program
// embeds it, and "unknown" without build info. goversion is the Go
// toolchain's version (runtime.Version).
func BuildVersion() (version, goversion string) {
	version, goversion = "unknown", runtime.Version()
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return version, goversion
	}
	if bi.Main.Path == ModulePath && bi.Main.Version != "" {
		return bi.Main.Version, goversion
	}
	for _, d := range bi.Deps {
		if d.Path == ModulePath {
			if d.Replace != nil && d.Replace.Version != "" {
				return d.Replace.Version, goversion
			}
			return d.Version, goversion
		}
	}
	return version, goversion
}
