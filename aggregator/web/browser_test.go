package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/hashicorp/go-hclog"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat"
	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/aggregator/store"
	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/aggregator/web"
	"github.com/p2pbeat/heartbeat/clockwork"
)

// guard bounds every wait in the browser; a healthy run never reaches it.
const guard = 30 * time.Second

// chromium returns the path of the distribution's chromium. Without it the
// test skips, saying how to run it; under CI=true it fails.
func chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	const how = "install Debian's chromium (apt-get install -y chromium, as bash .ci/run does) to run the browser tests"
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true and no chromium on PATH: " + how)
	}
	t.Skip("no chromium on PATH: " + how)
	return ""
}

// browser is one headless chromium with a fresh profile, and every console
// message its page writes.
type browser struct {
	ctx     context.Context
	mu      sync.Mutex
	msgs    []chromedp.ConsoleMessage
	changed chan struct{} // closed and replaced on every message
}

func newBrowser(t *testing.T, width, height int) *browser {
	t.Helper()
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]),
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(width, height),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	b := &browser{ctx: ctx, changed: make(chan struct{})}
	// Console starts the browser and the tab; subscribe before any page.
	msgs := chromedp.Console(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for m, err := range msgs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.msgs = append(b.msgs, m)
			close(b.changed)
			b.changed = make(chan struct{})
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		cancelAlloc() // waits for the browser process to exit
		wg.Wait()
	})
	b.do(t, chromedp.EmulateViewport(int64(width), int64(height)))
	return b
}

// do runs steps, each bounded by guard.
func (b *browser) do(t *testing.T, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, guard)
	defer cancel()
	require.NoError(t, chromedp.Do(ctx, steps...))
}

// eval evaluates a JavaScript expression and decodes its value into T.
func eval[T any](t *testing.T, b *browser, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, guard)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	require.NoError(t, err, expr)
	return v
}

// evalAsync evaluates an expression that gives a promise and decodes what
// it resolves to.
func evalAsync[T any](t *testing.T, b *browser, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, guard)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	require.NoError(t, err, expr)
	return v
}

// waitJS waits until the expression is truthy in the page: on every
// animation frame, which is when the page renders.
func (b *browser) waitJS(t *testing.T, what, expr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, guard+time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(guard)))
	require.NoError(t, err, "waiting for %s: %s", what, expr)
}

// errors returns the console's errors and exceptions so far.
func (b *browser) errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, m := range b.msgs {
		if m.Type == chromedp.ConsoleError || m.IsException() {
			out = append(out, m.String()+" at "+m.URL)
		}
	}
	return out
}

// waitError waits until the console has an error containing text.
func (b *browser) waitError(t *testing.T, text string) {
	t.Helper()
	deadline := time.After(guard)
	for {
		b.mu.Lock()
		ch := b.changed
		b.mu.Unlock()
		for _, e := range b.errors() {
			if strings.Contains(e, text) {
				return
			}
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("no console error with %q: %v", text, b.errors())
		}
	}
}

// fleet is a real aggregator on a libp2p host on loopback, its dashboard
// and API behind one HTTP server, and real senders.
type fleet struct {
	hook  *changeHook
	agg   *aggregator.Aggregator
	host  host.Host
	dash  *web.Dashboard
	srv   *httptest.Server
	clock clockwork.Clock
}

// changeHook reports the peers whose stream ended by reset ("heartbeat
// stream ended", DEBUG), so that a test can wait for the aggregator to
// notice a killed sender. The dashboard itself is told of every change by
// the aggregator (WithDashboard).
type changeHook struct {
	reset chan string
}

func (h *changeHook) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		if m["@message"] == "heartbeat stream ended" {
			select {
			case h.reset <- fmt.Sprint(m["peer_id"]):
			default:
			}
		}
	}
	return len(p), nil
}

func startFleet(t *testing.T, cfg aggregator.Config, clock clockwork.Clock, opts ...web.Option) *fleet {
	t.Helper()
	return startFleetWith(t, cfg, clock, nil, opts...)
}

// startFleetWith is startFleet with more aggregator options, made once the
// aggregator's host (and so its peer id) exists.
func startFleetWith(t *testing.T, cfg aggregator.Config, clock clockwork.Clock, more func(h host.Host) []aggregator.Option, opts ...web.Option) *fleet {
	t.Helper()
	hopts, err := aggregator.HostOptions(cfg, nil)
	require.NoError(t, err)
	h, err := libp2p.New(append([]libp2p.Option{libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0")}, hopts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	hook := &changeHook{reset: make(chan string, 64)}
	log := hclog.New(&hclog.LoggerOptions{JSONFormat: true, Output: hook, Level: hclog.Debug})
	aopts := []aggregator.Option{aggregator.WithLogger(log), aggregator.WithClock(clock), aggregator.WithDashboard(opts...)}
	if more != nil {
		aopts = append(aopts, more(h)...)
	}
	a, err := aggregator.New(h, cfg, aopts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	d := a.Dashboard()
	require.NotNil(t, d)
	// The aggregator's own handler: the API with the dashboard mounted.
	srv := httptest.NewServer(a.HTTPHandler())
	t.Cleanup(srv.Close)
	return &fleet{hook: hook, agg: a, host: h, dash: d, srv: srv, clock: clock}
}

// sender is one real heartbeat.Service on its own libp2p host.
type sender struct {
	id   peer.ID
	host host.Host
	svc  *heartbeat.Service
}

func (f *fleet) addSender(t *testing.T, nickname, head string, height uint64) *sender {
	t.Helper()
	h, err := libp2p.New(libp2p.NoListenAddrs)
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	target := f.host.Addrs()[0].String() + "/p2p/" + f.host.ID().String()
	svc, err := heartbeat.New(h, heartbeat.Config{
		BeatTarget: target, BeatPeriod: "1s", ReconnectPeriod: "1s", Nickname: nickname,
	}, func() (heartbeat.ChainHead, error) { return heartbeat.ChainHead{Head: head, Height: height}, nil },
		heartbeat.WithLogger(hclog.NewNullLogger()))
	require.NoError(t, err)
	require.NoError(t, svc.Start(context.Background()))
	t.Cleanup(func() { _ = svc.Close() })
	return &sender{id: h.ID(), host: h, svc: svc}
}

// history is a fake store: the same flips and heights for every node,
// over the six hours before the end of the range asked for.
type history struct{}

func (history) NodeHistory(_ context.Context, _ string, from, to time.Time) (web.NodeHistory, error) {
	histStart := to.Add(-6 * time.Hour)
	at := func(d time.Duration) int64 { return histStart.Add(d).UnixMilli() }
	h := web.NodeHistory{Flips: []web.Flip{
		{AtMs: at(0), From: "joining", To: "up", Reason: "beat"},
		{AtMs: at(2 * time.Hour), From: "up", To: "suspect", Reason: "silence"},
		{AtMs: at(2*time.Hour + 10*time.Second), From: "suspect", To: "down", Reason: "silence"},
		{AtMs: at(3 * time.Hour), From: "down", To: "up", Reason: "beat"},
	}}
	for i := range 60 {
		h.Heights = append(h.Heights, web.HeightSample{AtMs: at(time.Duration(i) * 6 * time.Minute), Height: 1000 + uint64(i)*12})
	}
	return h, nil
}

// rowsJS evaluates to the table's rows as [peer, nickname, state, height].
const rowsJS = `Array.from(document.querySelectorAll('#rows tr[data-peer]')).map(tr =>
	[tr.dataset.peer, tr.querySelector('td.nick').textContent, tr.dataset.state, tr.querySelector('td.height').textContent])`

func rows(t *testing.T, b *browser) [][]string { return eval[[][]string](t, b, rowsJS) }

func setInput(id, value string, event string) string {
	v, _ := json.Marshal(value)
	return fmt.Sprintf(`(() => { const e = document.getElementById(%q); e.value = %s; e.dispatchEvent(new Event(%q)); return true })()`, id, v, event)
}

// The page, in a real chromium, against a real aggregator and real senders
// on loopback: it lists the nodes, escapes node text, sorts and filters,
// shows a stopped sender Left without a reload, shows a node's flips, and
// writes no error to the console.
func TestBrowserLiveFleet(t *testing.T) {
	chromium(t)
	// The aggregator's clock never moves: every change below comes from
	// the senders (a first beat, a clean stop), none from silence.
	clock := clockwork.NewMock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	f := startFleet(t, aggregator.Config{}, clock, web.WithHistory(history{}))

	const xss = `<script>window.__xss=1</script><img src=x onerror="window.__xss=2">`
	alpha := f.addSender(t, "alpha", "{ bafyA }", 100)
	bravo := f.addSender(t, "bravo", "{ bafyB }", 101)
	evil := f.addSender(t, xss, "{ bafyA }", 100)

	b := newBrowser(t, 1280, 800)
	b.do(t, chromedp.Navigate(f.srv.URL+"/"))
	b.waitJS(t, "three Up rows", `document.querySelectorAll('#rows tr[data-state="up"]').length === 3`)
	b.waitJS(t, "the live badge", `document.getElementById('conn').dataset.status === 'live'`)
	require.True(t, eval[bool](t, b, `window.__marker = 1; true`))

	// Header: states, consensus, head groups (the fork is visible).
	require.Equal(t, "3", eval[string](t, b, `document.getElementById('sum-up').textContent`))
	require.Equal(t, "2", eval[string](t, b, `document.getElementById('sum-consensus').textContent`))
	require.Equal(t, "1", eval[string](t, b, `document.getElementById('sum-dispute').textContent`))
	require.Equal(t, []string{"A", "B"}, eval[[]string](t, b, `Array.from(document.querySelectorAll('#forklegend [data-group]')).map(e => e.dataset.group)`))

	// Node text is text: shown as sent, nothing executed or inserted.
	var nicks []string
	for _, r := range rows(t, b) {
		nicks = append(nicks, r[1])
	}
	require.ElementsMatch(t, []string{"alpha", "bravo", xss}, nicks)
	require.True(t, eval[bool](t, b, `window.__xss === undefined && document.querySelectorAll('#rows img, #rows script').length === 0`))

	// Sort by height, both ways.
	b.do(t, chromedp.Click(chromedp.CSS(`th[data-key="height"] button`)))
	b.waitJS(t, "ascending sort", `document.querySelector('th[data-key="height"]').getAttribute('aria-sort') === 'ascending'`)
	require.Equal(t, []string{"100", "100", "101"}, column(rows(t, b), 3))
	b.do(t, chromedp.Click(chromedp.CSS(`th[data-key="height"] button`)))
	b.waitJS(t, "descending sort", `document.querySelector('th[data-key="height"]').getAttribute('aria-sort') === 'descending'`)
	require.Equal(t, []string{"bravo", xss, "alpha"}, column(rows(t, b), 1), "ties by nickname, ascending ('<' < 'a')")

	// Filter by text, then clear it.
	b.do(t, chromedp.SendKeys(chromedp.ID("filter"), "brav"))
	b.waitJS(t, "one row", `document.querySelectorAll('#rows tr[data-peer]').length === 1`)
	require.Equal(t, []string{bravo.id.String()}, column(rows(t, b), 0))
	require.True(t, eval[bool](t, b, setInput("filter", "", "input")))
	b.waitJS(t, "three rows", `document.querySelectorAll('#rows tr[data-peer]').length === 3`)

	// A clean stop turns the node Left on the page, without a reload.
	require.NoError(t, bravo.svc.Close())
	b.waitJS(t, "bravo Left", fmt.Sprintf(`document.querySelector('#rows tr[data-peer=%q]')?.dataset.state === 'left'`, bravo.id.String()))
	require.Equal(t, 1, eval[int](t, b, `window.__marker`), "the page was not reloaded")
	require.Equal(t, "1", eval[string](t, b, `document.getElementById('sum-left').textContent`))
	require.Equal(t, "0", eval[string](t, b, `document.getElementById('sum-dispute').textContent`))

	// Filter by state.
	require.True(t, eval[bool](t, b, setInput("state-filter", "left", "change")))
	b.waitJS(t, "only Left rows", `document.querySelectorAll('#rows tr[data-peer]').length === 1`)
	require.Equal(t, [][]string{{bravo.id.String(), "bravo", "left", "101"}}, rows(t, b))
	require.True(t, eval[bool](t, b, setInput("state-filter", "", "change")))
	b.waitJS(t, "three rows", `document.querySelectorAll('#rows tr[data-peer]').length === 3`)

	// The per-node view: its flips, timeline and height chart.
	b.do(t, chromedp.Click(chromedp.CSS(fmt.Sprintf(`#rows tr[data-peer=%q] td.nick`, alpha.id.String()))))
	b.waitJS(t, "four flips", `document.querySelectorAll('#d-flips li').length === 4`)
	require.Equal(t, "alpha", eval[string](t, b, `document.getElementById('d-title').textContent`))
	flips := eval[[]string](t, b, `Array.from(document.querySelectorAll('#d-flips li')).map(li => li.textContent)`)
	require.Equal(t, "2026-11-30 08:00:00  up → suspect (silence)", flips[2], "newest first")
	require.Equal(t, 4, eval[int](t, b, `document.querySelectorAll('#d-timeline rect').length`))
	require.Equal(t, 60, eval[int](t, b, `document.querySelector('#d-heights polyline').getAttribute('points').split(' ').length`))
	require.True(t, eval[bool](t, b, `document.getElementById('d-nohistory').hidden`))
	b.do(t, chromedp.Click(chromedp.ID("d-close")))
	b.waitJS(t, "detail closed", `document.getElementById('detail').hidden`)

	// The escaped node's own view: its nickname is the title, as text.
	b.do(t, chromedp.Click(chromedp.CSS(fmt.Sprintf(`#rows tr[data-peer=%q] td.peer`, evil.id.String()))))
	b.waitJS(t, "detail of the script nickname", `document.getElementById('d-title').textContent.startsWith('<script>')`)
	require.True(t, eval[bool](t, b, `window.__xss === undefined && document.querySelectorAll('#detail img, #detail script').length === 0`))

	// A node's link, as the alert annotation gives it, opens its view on a
	// fresh load.
	// (A query string makes it a new document, not a hash change.)
	b.do(t, chromedp.Navigate(f.srv.URL+"/?from=alert#node="+alpha.id.String()))
	b.waitJS(t, "four flips from a link", `document.querySelectorAll('#d-flips li').length === 4 && document.getElementById('d-title').textContent === 'alpha'`)

	require.Empty(t, b.errors(), "console errors")
}

// A killed sender (its host closed: no goodbye, the stream is reset) stays
// Up on the page until its silence passes its thresholds on the
// aggregator's clock, then shows Down without a reload.
func TestBrowserKilledSenderGoesDown(t *testing.T) {
	chromium(t)
	start := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	clock := clockwork.NewMock(start)
	f := startFleet(t, aggregator.Config{}, clock)
	victim := f.addSender(t, "victim", "{ h }", 7)

	b := newBrowser(t, 1280, 800)
	b.do(t, chromedp.Navigate(f.srv.URL+"/"))
	row := fmt.Sprintf(`document.querySelector('#rows tr[data-peer=%q]')?.dataset.state`, victim.id.String())
	b.waitJS(t, "victim Up", row+` === 'up'`)
	require.True(t, eval[bool](t, b, `window.__marker = 1; true`))

	require.NoError(t, victim.host.Close())
	select {
	case id := <-f.hook.reset:
		require.Equal(t, victim.id.String(), id)
	case <-time.After(guard):
		t.Fatal("the aggregator never saw the stream end")
	}
	require.Equal(t, "up", eval[string](t, b, row), "a reset alone is no proof of death")

	// Move the aggregator's clock sweep by sweep until the tracker
	// declares the victim Down: its thresholds are its own (learned period,
	// reconnect allowance after a reset, startup grace), the tracker's
	// business; the page's is to follow. Bounded: a Down that never comes
	// fails the test.
	limit := start.Add(time.Hour)
	for {
		n, ok := f.agg.Tracker().Node(victim.id)
		require.True(t, ok)
		if n.State == tracker.Down {
			break
		}
		at, ok := clockwork.AdvanceToNext(clock)
		require.True(t, ok, "no timer armed")
		require.True(t, at.Before(limit), "the victim never went Down")
	}
	b.waitJS(t, "victim Down", row+` === 'down'`)
	require.Equal(t, "1", eval[string](t, b, `document.getElementById('sum-down').textContent`))
	require.Equal(t, 1, eval[int](t, b, `window.__marker`), "the page was not reloaded")
	require.Empty(t, b.errors(), "console errors")
}

func column(rows [][]string, i int) []string {
	out := make([]string, 0, len(rows))
	for _, r := range rows {
		out = append(out, r[i])
	}
	return out
}

// Without a history source the per-node view says so; when the event
// stream goes away the page says it is offline, and it comes back live by
// itself.
func TestBrowserNoHistoryAndOffline(t *testing.T) {
	chromium(t)
	clock := clockwork.NewMock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	f := startFleet(t, aggregator.Config{}, clock)
	s := f.addSender(t, "solo", "{ h }", 7)

	b := newBrowser(t, 390, 844) // a phone
	b.do(t, chromedp.Navigate(f.srv.URL+"/"))
	b.waitJS(t, "one Up row", `document.querySelectorAll('#rows tr[data-state="up"]').length === 1`)
	require.Equal(t, "none", eval[string](t, b, `getComputedStyle(document.querySelector('#rows td.opt')).display`),
		"optional columns are hidden at phone width")
	b.do(t, chromedp.Click(chromedp.CSS(fmt.Sprintf(`#rows tr[data-peer=%q] td.nick`, s.id.String()))))
	b.waitJS(t, "no history", `!document.getElementById('d-nohistory').hidden && document.getElementById('d-nohistory').textContent === 'no history'`)
	require.Zero(t, eval[int](t, b, `document.querySelectorAll('#d-flips li').length`))
	require.Empty(t, b.errors(), "console errors")
	// The console check itself can fail: an error is seen.
	require.True(t, eval[bool](t, b, `console.error("probe " + 6*7); true`))
	b.waitError(t, "probe 42")

	// Cut every stream: the browser reconnects on its own.
	require.True(t, eval[bool](t, b, `window.__marker = 1; true`))
	require.Equal(t, "1", eval[string](t, b, `document.getElementById('conn').dataset.connects`))
	f.srv.CloseClientConnections()
	b.waitJS(t, "live again", `document.getElementById('conn').dataset.connects === '2' && document.getElementById('conn').dataset.status === 'live'`)
	require.Equal(t, 1, eval[int](t, b, `window.__marker`), "the page was not reloaded")

	// The dashboard goes away for good: the page shows it is offline.
	require.NoError(t, f.dash.Close())
	f.srv.CloseClientConnections()
	b.waitJS(t, "offline", `document.getElementById('conn').dataset.status === 'offline'`)
}

// bigSource is a fleet of n synthetic nodes whose states a test flips.
type bigSource struct {
	mu        sync.Mutex
	nodes     []web.Node
	disrupted bool
}

func newBigSource(n int, now time.Time) *bigSource {
	s := &bigSource{}
	for i := range n {
		s.nodes = append(s.nodes, web.Node{
			Peer: fmt.Sprintf("12D3KooWsynthetic%06d", i), Nickname: fmt.Sprintf("node-%05d", i),
			State: "up", SinceMs: now.UnixMilli(), LastSeenMs: now.UnixMilli(),
			Head: fmt.Sprintf("{ head-%d }", i%3), Height: 1000 + uint64(i%3),
			RTTMs: web.Unknown, Uptime24h: web.Unknown,
		})
	}
	return s
}

func (s *bigSource) Nodes(dst []web.Node) []web.Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append(dst, s.nodes...)
}

func (s *bigSource) Summary() web.Summary {
	s.mu.Lock()
	defer s.mu.Unlock()
	sum := web.Summary{Nodes: len(s.nodes), States: map[string]int{}, Disrupted: &s.disrupted}
	for _, n := range s.nodes {
		sum.States[n.State]++
	}
	return sum
}

// 10,000 nodes: the page renders one page of rows, pages through the rest,
// and applies a delta of 1,000 changes without a reload. The render times
// are logged (figures, not assertions: speed is for benchmarks).
func TestBrowserTenThousandNodes(t *testing.T) {
	chromium(t)
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	src := newBigSource(10_000, now)
	d, err := web.New(src, web.WithClock(clockwork.NewMock(now)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Close() })
	srv := httptest.NewServer(d)
	t.Cleanup(srv.Close)

	b := newBrowser(t, 1280, 800)
	b.do(t, chromedp.Navigate(srv.URL+"/"))
	b.waitJS(t, "all nodes", `document.getElementById('count').textContent === '10000 of 10000 nodes'`)
	require.Equal(t, 100, eval[int](t, b, `document.querySelectorAll('#rows tr[data-peer]').length`))
	require.Equal(t, "page 1 of 100", eval[string](t, b, `document.getElementById('page').textContent`))
	require.Equal(t, []string{"A", "B", "C"}, eval[[]string](t, b, `Array.from(document.querySelectorAll('#forklegend [data-group]')).map(e => e.dataset.group)`))

	b.do(t, chromedp.Click(chromedp.ID("next")))
	b.waitJS(t, "page 2", `document.getElementById('page').textContent === 'page 2 of 100'`)

	// A click, then two frames: the render has run and been painted.
	const framed = `(click) => new Promise(done => { const t0 = performance.now(); click();
		requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now() - t0))) })`
	sortMs := evalAsync[float64](t, b, `(`+framed+`)(() => {
		document.querySelector('th[data-key="nickname"] button').click();
		document.querySelector('th[data-key="nickname"] button').click() })`)
	b.waitJS(t, "descending by nickname", `document.querySelector('#rows td.nick').textContent === 'node-09899'`)

	require.True(t, eval[bool](t, b, `document.getElementById('disrupted').hidden`))
	src.mu.Lock()
	for i := 0; i < 1000; i++ {
		src.nodes[i*10].State = "down"
	}
	src.nodes[0].Flags = []string{web.FlagDuplicateIdentity}
	src.disrupted = true
	src.mu.Unlock()
	d.Notify()
	b.waitJS(t, "1,000 Down", `document.getElementById('sum-down').textContent === '1000'`)
	require.False(t, eval[bool](t, b, `document.getElementById('disrupted').hidden`), "the disruption mode is shown")
	require.True(t, eval[bool](t, b, setInput("state-filter", "down", "change")))
	b.waitJS(t, "1,000 Down rows", `document.getElementById('count').textContent === '1000 of 10000 nodes'`)
	require.True(t, eval[bool](t, b, setInput("filter", "node-00000", "input")))
	b.waitJS(t, "the flagged node", `document.querySelector('#rows tr[data-peer] .flag')?.textContent === 'duplicate identity'`)
	require.True(t, eval[bool](t, b, setInput("filter", "", "input")))
	b.waitJS(t, "1,000 Down rows", `document.getElementById('count').textContent === '1000 of 10000 nodes'`)
	renderMs := evalAsync[float64](t, b, `(`+framed+`)(() => document.getElementById('next').click())`)
	require.Empty(t, b.errors(), "console errors")
	t.Logf("10,000 nodes: sort click to painted %.1f ms; filtered page click to painted %.1f ms", sortMs, renderMs)
}

// uptimeCellJS evaluates to the text of the uptime column of peer's row.
func uptimeCellJS(p peer.ID) string {
	return fmt.Sprintf(`(() => {
		const i = Array.from(document.querySelectorAll('thead th')).findIndex(th => th.dataset.key === 'uptime');
		return document.querySelector('#rows tr[data-peer=%q]')?.children[i]?.textContent ?? null })()`, p.String())
}

// The uptime column over a real aggregator with a real SQLite store: a
// node the store knows from before the restart shows its 24 h uptime from
// the flips (Up 18 h of 24: 75.0%), a node with no history in the window
// shows a dash, not 0%.
func TestBrowserUptimeColumn(t *testing.T) {
	chromium(t)
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	clock := clockwork.NewMock(now)
	b, err := store.OpenSQLite(context.Background(), t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	key, _, err := crypto.GenerateEd25519Key(nil)
	require.NoError(t, err)
	veteran, err := peer.IDFromPrivateKey(key)
	require.NoError(t, err)
	h := func(d time.Duration) time.Time { return now.Add(-d * time.Hour) }
	f := startFleetWith(t, aggregator.Config{}, clock, func(self host.Host) []aggregator.Option {
		// The aggregator's own record of a node from before a restart,
		// with its flips: Up, Down at -12 h, Up again at -6 h.
		require.NoError(t, b.Apply(context.Background(), store.Batch{
			Nodes: []store.Node{{Peer: veteran, Aggregator: self.ID(), Nickname: "veteran", Head: "{ h }", Height: 5,
				State: "up", FirstSeen: h(30), LastSeen: h(0).Add(-time.Minute), Updated: h(0).Add(-time.Minute)}},
			Flips: []store.Flip{
				{Peer: veteran, Aggregator: self.ID(), At: h(30), From: "joining", To: "up", Reason: "beat"},
				{Peer: veteran, Aggregator: self.ID(), At: h(12), From: "up", To: "down", Reason: "silence"},
				{Peer: veteran, Aggregator: self.ID(), At: h(6), From: "down", To: "up", Reason: "beat"},
			},
		}))
		return []aggregator.Option{aggregator.WithStore(b, store.WriterConfig{})}
	})
	fresh := f.addSender(t, "fresh", "{ h }", 5)

	br := newBrowser(t, 1280, 800)
	br.do(t, chromedp.Navigate(f.srv.URL+"/"))
	br.waitJS(t, "the fresh node Up", fmt.Sprintf(`document.querySelector('#rows tr[data-peer=%q]')?.dataset.state === 'up'`, fresh.id.String()))
	br.waitJS(t, "the veteran's uptime", uptimeCellJS(veteran)+` === '75.0%'`)
	// Read after the uptime arrived: the fresh node's first flip is at the
	// window's end, so nothing is known of it in the window.
	require.Equal(t, "–", eval[string](t, br, uptimeCellJS(fresh.id)))
	require.Empty(t, br.errors(), "console errors")
}

// Format characters in node text are shown, not obeyed: a U+202E in a
// nickname would otherwise show "mirrored" as "derorrim", and a zero-width
// space in a head would make two heads look alike.
func TestBrowserShowsFormatCharacters(t *testing.T) {
	chromium(t)
	clock := clockwork.NewMock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	f := startFleet(t, aggregator.Config{}, clock)
	s := f.addSender(t, "node\u202emirrored", "{ bafy\u200bA }", 100)

	b := newBrowser(t, 1280, 800)
	b.do(t, chromedp.Navigate(f.srv.URL+"/"))
	b.waitJS(t, "one Up row", `document.querySelectorAll('#rows tr[data-state="up"]').length === 1`)
	require.Equal(t, [][]string{{s.id.String(), "node⟨U+202E⟩mirrored", "up", "100"}}, rows(t, b))
	require.Equal(t, "{ bafy⟨U+200B⟩A }", eval[string](t, b, `document.querySelector('#rows .group').title`))
}
