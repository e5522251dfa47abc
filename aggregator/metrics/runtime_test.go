package metrics

import (
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/stretchr/testify/require"
)

// RegisterProcess adds the Go and process collectors and build info, and
// leaves alone a registry that already has some of them.
func TestRegisterProcess(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(collectors.NewGoCollector())) // an embedder's
	require.NoError(t, RegisterProcess(reg))
	require.NoError(t, RegisterProcess(reg), "idempotent")
	mfs, err := reg.Gather()
	require.NoError(t, err)
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
		if mf.GetName() == "heartbeat_build_info" {
			require.Len(t, mf.GetMetric(), 1)
			m := mf.GetMetric()[0]
			require.Equal(t, 1.0, m.GetGauge().GetValue())
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			version, _ := BuildVersion()
			require.Equal(t, map[string]string{"version": version, "goversion": runtime.Version()}, labels)
		}
	}
	for _, want := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_resident_memory_bytes", "process_open_fds", "heartbeat_build_info"} {
		require.True(t, names[want], want)
	}
	require.Error(t, RegisterProcess(nil))
}

// The version is the module's own in build info: in a test binary the main
// module is this one, built locally.
func TestBuildVersion(t *testing.T) {
	version, goversion := BuildVersion()
	require.Equal(t, runtime.Version(), goversion)
	bi, ok := debug.ReadBuildInfo()
	require.True(t, ok)
	require.Equal(t, ModulePath, bi.Main.Path)
	require.Equal(t, bi.Main.Version, version)
	require.NotEmpty(t, version)
}
