package aggregator

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/wire"
)

// The multiplier: lags under the floor are none; a lag L gives
// 1 + 2L/SuspectAfter (no MinPeriod here), held for DownAfter's worth of
// sweeps, capped at 8.
func TestHealthMonitor(t *testing.T) {
	var sched, gc atomic.Int64
	cfg := Config{SuspectAfter: 6 * time.Second, DownAfter: 15 * time.Second, SweepInterval: time.Second}
	h := newHealthMonitor(cfg, func() (time.Duration, time.Duration) {
		return time.Duration(sched.Load()), time.Duration(gc.Load())
	})
	l, hl := h.observe(100 * time.Millisecond)
	require.Equal(t, 100*time.Millisecond, l.sweep)
	require.Equal(t, tracker.Health{Multiplier: 1}, hl, "under the floor")

	l, hl = h.observe(3 * time.Second) // a sweep 3s late
	require.Equal(t, 3*time.Second, l.max())
	require.Equal(t, tracker.Health{Multiplier: 2, Lag: 3 * time.Second}, hl)

	for i := 1; i < 15; i++ {
		_, hl = h.observe(0)
		require.Equal(t, 2.0, hl.Multiplier, "held for DownAfter/SweepInterval sweeps (%d)", i)
	}
	_, hl = h.observe(0)
	require.Equal(t, 1.0, hl.Multiplier, "falls back after the window")

	sched.Store(int64(1500 * time.Millisecond))
	l, hl = h.observe(0)
	require.Equal(t, 1500*time.Millisecond, l.sched)
	require.Equal(t, 1.5, hl.Multiplier, "scheduler latency counts")
	sched.Store(0)
	gc.Store(int64(time.Minute))
	_, hl = h.observe(0)
	require.Equal(t, float64(maxHealthMultiplier), hl.Multiplier, "capped")

	// At the defaults the reference is the Suspect threshold of a node at
	// MinPeriod (1s): 2s, so a 1s lag gives 2.
	a, err := New(newHost(t), Config{})
	require.NoError(t, err)
	defer a.Close()
	require.Equal(t, 2*time.Second, a.health.ref)

	require.Equal(t, bandHealthy, healthBand(1))
	require.Equal(t, bandDegraded, healthBand(1.5))
	require.Equal(t, bandSlow, healthBand(2))
	require.Equal(t, bandStalled, healthBand(8))
}

// The real runtime reading reports deltas: the first call has nothing to
// compare with, and a forced GC shows as a pause afterwards.
func TestRuntimeLagReadsDeltas(t *testing.T) {
	rt := newRuntimeLag()
	sched, gc := rt()
	require.Zero(t, sched)
	require.Zero(t, gc)
	forceGC()
	_, gc = rt()
	require.Positive(t, gc, "the stop-the-world pauses of the GC just run")
}

// With the injected clock: the aggregator's read loops are 3s behind
// (scheduler lag), so a node beating every second is seen 3s late, a
// silence past its 2s Suspect threshold. With the lag measured the
// multiplier is 4 (1 + 2×3s/2s) and the node stays Up; the same timeline
// without the lag measured marks it Suspect. The multiplier shows in
// heartbeat_aggregator_health, /api/summary and one WARN, and falls back
// with one INFO.
func TestLocalHealthKeepsLateNodeUp(t *testing.T) {
	for _, measured := range []bool{true, false} {
		t.Run(map[bool]string{true: "lag measured", false: "lag not measured"}[measured], func(t *testing.T) {
			checkLeaks(t)
			var schedLag atomic.Int64
			a, mock, rec, logs := mockAggregatorWith(t, fixedPeriod(), func() (time.Duration, time.Duration) {
				return time.Duration(schedLag.Load()), 0
			})
			p := startPipe(t, a)
			p.beat(t, rec)
			clockwork.AdvanceTo(mock, t0.Add(time.Second))
			p.beat(t, rec)
			if measured {
				schedLag.Store(int64(3 * time.Second))
			}
			// The next beats are read 3s late: nothing arrives until t0+4s.
			clockwork.AdvanceTo(mock, t0.Add(4*time.Second))
			n, _ := a.Tracker().Node(p.id)
			if !measured {
				require.Equal(t, tracker.Suspect, n.State, "3s silent, Suspect after 2s")
				p.close(t)
				return
			}
			require.Equal(t, tracker.Up, n.State, "the lag was the aggregator's")
			require.Equal(t, 4.0, a.Tracker().Health().Multiplier)
			require.Equal(t, 4.0, gaugeValue(t, a, "heartbeat_aggregator_health"))
			sum := apiSummary(t, a)
			require.Equal(t, 4.0, sum["health_multiplier"])
			require.Equal(t, 3.0, sum["lag_seconds"])
			require.Len(t, logs.entries(t, "local health changed: Suspect and Down thresholds scaled"), 1)
			p.beat(t, rec) // the backlog
			schedLag.Store(0)
			// Beating on time again; the multiplier is held for DownAfter
			// (5s) of sweeps, then back to 1.
			for s := 5; s <= 8; s++ {
				clockwork.AdvanceTo(mock, t0.Add(time.Duration(s)*time.Second))
				require.Equal(t, 4.0, a.Tracker().Health().Multiplier, "t0+%ds", s)
				p.beat(t, rec)
			}
			clockwork.AdvanceTo(mock, t0.Add(9*time.Second))
			require.Equal(t, 1.0, a.Tracker().Health().Multiplier)
			entries := logs.entries(t, "local health changed: Suspect and Down thresholds scaled")
			require.Len(t, entries, 2)
			require.Equal(t, "healthy", entries[1]["to"])
			n, _ = a.Tracker().Node(p.id)
			require.Equal(t, tracker.Up, n.State)
			p.close(t)
			for _, m := range logs.entries(t, "node state changed") {
				require.NotEqual(t, "suspect", m["to"])
			}
		})
	}
}

// The tracker's thresholds scale with the multiplier, and lowering it
// makes the next sweep look again at nodes it had skipped.
func TestTrackerHealthScalesThresholds(t *testing.T) {
	cfg, err := fixedPeriod().withDefaults()
	require.NoError(t, err)
	tr, err := tracker.New(cfg.trackerConfig(), t0)
	require.NoError(t, err)
	id := randomPeer(t)
	require.NoError(t, tr.StreamOpened(id, t0))
	_, _, err = tr.Beat(id, beatOf(1), t0)
	require.NoError(t, err)
	tr.SetHealth(tracker.Health{Multiplier: 3, Lag: 2 * time.Second})
	require.Empty(t, tr.Sweep(t0.Add(5*time.Second), nil), "Suspect after 2s×3")
	tr.SetHealth(tracker.Health{Multiplier: 1})
	ch := tr.Sweep(t0.Add(5*time.Second+time.Millisecond), nil)
	require.Len(t, ch, 1)
	require.Equal(t, tracker.Down, ch[0].To, "5s silent: past Down at multiplier 1")
	tr.SetHealth(tracker.Health{Multiplier: -3})
	require.Equal(t, 1.0, tr.Health().Multiplier, "below 1 is 1")
}

// mockAggregatorWith is mockAggregator with rt as the runtime lag.
func mockAggregatorWith(t *testing.T, cfg Config, rt runtimeLag) (*Aggregator, *clockwork.Mock, *recorder, *logBuffer) {
	t.Helper()
	mock := clockwork.NewMock(t0)
	logs := &logBuffer{}
	rec := newRecorder()
	hk := rec.hooks()
	hk.runtimeLag = rt
	a, err := New(newHost(t), cfg, WithClock(mock), withHooks(hk),
		WithLogger(hclog.New(&hclog.LoggerOptions{Output: logs, JSONFormat: true, Level: hclog.Info})))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, a.Close()) })
	return a, mock, rec, logs
}

// gaugeValue gathers a's registry and returns the unlabelled gauge name.
func gaugeValue(t *testing.T, a *Aggregator, name string) float64 {
	t.Helper()
	mfs, err := a.Registry().Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	require.FailNow(t, "no metric "+name)
	return 0
}

// apiSummary serves /api/summary from a's handler and decodes it.
func apiSummary(t *testing.T, a *Aggregator) map[string]any {
	t.Helper()
	rr := httptest.NewRecorder()
	a.HTTPHandler().ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/api/summary", nil))
	require.Equal(t, http.StatusOK, rr.Code)
	var out map[string]any
	require.NoError(t, json.Unmarshal(rr.Body.Bytes(), &out))
	return out
}

func forceGC() { runtime.GC() }

func beatOf(height uint64) *wire.Heartbeat {
	return &wire.Heartbeat{Head: "{ h }", Height: height, Nickname: "n"}
}
