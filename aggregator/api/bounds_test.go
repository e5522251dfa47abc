package api

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/wire"
)

// Past MaxInFlight /api requests in flight, the next one gets 503 with
// Retry-After and is counted; /healthz and /metrics are not held up, and
// the requests in flight finish normally. The handler's clock blocks to
// hold the slots, so the test needs no timing.
func TestOverloadRefused(t *testing.T) {
	tr, err := tracker.New(tracker.Config{StartupGrace: -1}, t0)
	require.NoError(t, err)
	_, _, err = tr.Beat(pid(1), &wire.Heartbeat{Nickname: "alice"}, t0)
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	entered, release := make(chan struct{}), make(chan struct{})
	now := func() time.Time {
		select {
		case entered <- struct{}{}:
			<-release
		case <-release:
		}
		return t0
	}
	srv := httptest.NewServer(NewHandler(tr, reg, now))
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: MaxInFlight}}
	defer client.CloseIdleConnections()

	codes := make(chan int, MaxInFlight)
	for range MaxInFlight {
		go func() {
			resp, err := client.Get(srv.URL + "/api/nodes")
			if err != nil {
				codes <- -1
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	for range MaxInFlight {
		<-entered
	}
	for _, path := range []string{"/api/nodes", "/api/summary"} {
		resp, err := client.Get(srv.URL + path)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, path)
		require.Equal(t, "1", resp.Header.Get("Retry-After"))
		require.Contains(t, string(body), "too many API requests in flight")
	}
	resp, err := client.Get(srv.URL + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, 2.0, testutil.ToFloat64(mustFind(t, reg, "heartbeat_api_requests_refused_total")))
	require.Equal(t, float64(MaxInFlight), testutil.ToFloat64(mustFind(t, reg, "heartbeat_api_requests_in_flight")))

	close(release)
	for range MaxInFlight {
		require.Equal(t, http.StatusOK, <-codes)
	}
	require.Zero(t, testutil.ToFloat64(mustFind(t, reg, "heartbeat_api_requests_in_flight")))
}

// mustFind returns the collector registered under name, for testutil.
func mustFind(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return gathered{reg, name}
		}
	}
	require.FailNowf(t, "no such metric", "%s", name)
	return nil
}

// gathered re-exposes one metric family of a registry as a collector.
type gathered struct {
	reg  *prometheus.Registry
	name string
}

func (g gathered) Describe(chan<- *prometheus.Desc) {}

func (g gathered) Collect(ch chan<- prometheus.Metric) {
	mfs, _ := g.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != g.name {
			continue
		}
		for _, m := range mf.GetMetric() {
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(g.name, "", nil, nil), prometheus.UntypedValue, v)
		}
	}
}

// rawGet sends one GET on a new connection and returns the status and the
// number of node lines in the body (the body has one node per line).
func rawGet(addr, path string) (int, int, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n", path); err != nil {
		return 0, 0, err
	}
	br := bufio.NewReaderSize(c, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	n := 0
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), `{"peer_id":`) {
			n++
		}
	}
	return resp.StatusCode, n, sc.Err()
}

// vmKiB reads a Vm* field (VmRSS, VmHWM) of /proc/self/status, in KiB.
func vmKiB(t *testing.T, field string) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if ok && name == field {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			require.NoError(t, err)
			return kb
		}
	}
	require.FailNowf(t, "no field", "%s in /proc/self/status", field)
	return 0
}

// 1,000 concurrent requests for the largest page, at 10,000 nodes whose
// labels are all at the cap and all '<' (which HTML escaping would have
// made six times longer), raise the process's peak RSS by less than
// 200 MiB. The peak is the kernel's VmHWM, reset just before the burst
// (clear_refs 5), so it counts every byte the server and the clients
// touched, allocator and GC included.
//
// Under the race detector, RSS measures the detector (about 290 MiB of
// shadow memory and goroutine state for this burst's 2,000 goroutines), so
// the test re-runs itself in a test binary built without it.
func TestConcurrentRequestsBoundedRSS(t *testing.T) {
	if raceEnabled {
		exe := filepath.Join(t.TempDir(), "api.test")
		build := exec.Command("go", "test", "-c", "-o", exe, ".")
		build.Env = append(os.Environ(), "GOFLAGS=") // no -race from the environment
		out, err := build.CombinedOutput()
		require.NoError(t, err, "go test -c: %s", out)
		run := exec.Command(exe, "-test.run", "^TestConcurrentRequestsBoundedRSS$", "-test.v", "-test.count=1")
		out, err = run.CombinedOutput()
		t.Logf("without -race:\n%s", out)
		require.NoError(t, err)
		require.Contains(t, string(out), "--- PASS: TestConcurrentRequestsBoundedRSS")
		return
	}
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Skipf("peak RSS cannot be reset here (%v): Linux only", err)
	}
	const (
		nodes    = 10000
		requests = 1000
		budget   = 200 << 10 // KiB
	)
	tr, err := tracker.New(tracker.Config{StartupGrace: -1, MaxNodes: nodes}, t0)
	require.NoError(t, err)
	label := strings.Repeat("<", 256)
	for i := range nodes {
		id := peer.ID(fmt.Sprintf("peer-%05d", i))
		hb := wire.Heartbeat{Head: label[:250] + fmt.Sprintf("%06d", i), Height: uint64(i), Nickname: label, MinerAddress: label, Genesis: label}
		_, _, err := tr.Beat(id, &hb, t0)
		require.NoError(t, err)
	}
	reg := prometheus.NewRegistry()
	srv := httptest.NewServer(NewHandler(tr, reg, func() time.Time { return t0 }))
	defer srv.Close()
	runtime.GC()
	debug.FreeOSMemory()
	require.NoError(t, os.WriteFile("/proc/self/clear_refs", []byte("5"), 0))
	base := vmKiB(t, "VmRSS")

	// A bare HTTP/1.1 client per request (no transport goroutines or
	// pools), so that the figure is mostly the server's.
	addr := srv.Listener.Addr().String()
	start := make(chan struct{})
	var (
		wg                sync.WaitGroup
		mu                sync.Mutex
		ok, refused, errs int
		served            int
	)
	for range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			code, n, err := rawGet(addr, "/api/nodes?limit="+strconv.Itoa(MaxLimit))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				errs++
			case code == http.StatusOK:
				ok++
				served += n
			case code == http.StatusServiceUnavailable:
				refused++
			}
		}()
	}
	close(start)
	wg.Wait()
	peak := vmKiB(t, "VmHWM")
	t.Logf("%d requests at %d nodes: %d ok (%d nodes served), %d refused (503), %d errors; RSS %d MiB before, peak %d MiB, growth %d MiB",
		requests, nodes, ok, served, refused, errs, base>>10, peak>>10, (peak-base)>>10)
	require.Zero(t, errs)
	require.Equal(t, requests, ok+refused)
	require.Positive(t, ok)
	require.Equal(t, ok*MaxLimit, served, "every 200 is a full page")
	require.Equal(t, float64(refused), testutil.ToFloat64(mustFind(t, reg, "heartbeat_api_requests_refused_total")))
	require.Less(t, peak-base, int64(budget), "peak RSS growth %d MiB", (peak-base)>>10)
}
