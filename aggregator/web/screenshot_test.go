package web_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/aggregator/store"
	"github.com/p2pbeat/heartbeat/clockwork"
)

var screenshot = flag.String("screenshot", "", "write a 1280x800 PNG of the dashboard over a live fleet to this file (go generate ./aggregator/web)")

// TestDashboardScreenshot regenerates docs/img/dashboard.png (go generate
// ./aggregator/web): a real aggregator on the wall clock with real senders
// on loopback, one of them on a fork, one lagging, one stopped (Left) and
// one killed (Down once its silence passes its thresholds). It waits on the
// page for each of those states, then takes the picture, and a second one
// (FILE-node.png) of a node's view. The aggregator has a real SQLite store
// holding a made-up day of history of each sender (pastDay), from which
// the uptime column and the node view read. Without
// -screenshot it skips.
func TestDashboardScreenshot(t *testing.T) {
	if *screenshot == "" {
		t.Skip("pass -screenshot FILE (go generate ./aggregator/web) to regenerate docs/img/dashboard.png")
	}
	chromium(t)
	// Short periods and no reconnect allowance after a reset (12 s by
	// default), so that the killed node turns Down within seconds.
	cfg := aggregator.Config{ExpectedPeriod: time.Second, StartupGrace: -1, ReconnectAllowance: -1}
	// A real store, into which the test writes a day of made-up history
	// of every sender below: the uptime column and the node view read it.
	st, err := store.OpenSQLite(context.Background(), t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	f := startFleetWith(t, cfg, clockwork.Real(), func(host.Host) []aggregator.Option {
		return []aggregator.Option{aggregator.WithStore(st, store.WriterConfig{})}
	})

	const height = 4_312_877
	head := "{ bafy2bzacea3wsdh6y3a36tb3skempjoxqpuyompjbmfeyf34fi3uy6uue42v4 }"
	fork := "{ bafy2bzacedjuf5mhtmcn7eiowwgcyfjqrxkr6ohwmwtr4ka6dtzq5f7xzfvv2 }"
	old := "{ bafy2bzaceb4cmxbdzd3dgg2jylqhpcmevgqqkwx7hpeyc3yiuefnrxvl2kwi6 }"
	var (
		stopped, killed, first *sender
	)
	var all []peer.ID
	add := func(nickname, head string, height uint64) *sender {
		s := f.addSender(t, nickname, head, height)
		all = append(all, s.id)
		return s
	}
	for i, city := range []string{"ams", "fra", "sin", "sfo", "nyc", "lon", "tok", "syd", "gru", "jnb"} {
		s := add(fmt.Sprintf("lotus-%s-%02d", city, i+1), head, height)
		if first == nil {
			first = s
		}
	}
	add("venus-par-01", fork, height)
	add("venus-par-02", fork, height)
	add("forest-ber-01", old, height-3)
	stopped = add("lotus-mad-01", head, height)
	killed = add("lotus-waw-01", head, height)
	// Before the page opens: its first subscription reads the uptimes.
	pastDay(t, st, f.host.ID(), all, first.id, height)

	b := newBrowser(t, 1280, 800)
	b.do(t, chromedp.Navigate(f.srv.URL+"/"))
	b.waitJS(t, "fifteen Up rows", `document.querySelectorAll('#rows tr[data-state="up"]').length === 15`)
	b.waitJS(t, "the uptime of the node with the longest outage", uptimeCellJS(first.id)+` === '83.3%'`)

	require.NoError(t, stopped.svc.Close())
	require.NoError(t, killed.host.Close()) // no goodbye: the stream just dies
	b.waitJS(t, "one Left", fmt.Sprintf(`document.querySelector('#rows tr[data-peer=%q]')?.dataset.state === 'left'`, stopped.id.String()))
	b.waitJS(t, "one Down", fmt.Sprintf(`document.querySelector('#rows tr[data-peer=%q]')?.dataset.state === 'down'`, killed.id.String()))

	shoot := func(file string) {
		png, err := chromedp.Run(b.ctx, chromedp.CaptureScreenshot())
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(filepath.Dir(file), 0o755))
		require.NoError(t, os.WriteFile(file, png, 0o644))
		t.Logf("wrote %s (%d bytes)", file, len(png))
	}
	shoot(*screenshot)

	// The node view, next to it: dashboard.png -> dashboard-node.png.
	b.do(t, chromedp.Click(chromedp.CSS(fmt.Sprintf(`#rows tr[data-peer=%q] td.nick`, first.id.String()))))
	b.waitJS(t, "the node's flips", `document.querySelectorAll('#d-flips li').length >= 4`)
	shoot(strings.TrimSuffix(*screenshot, ".png") + "-node.png")
	require.Empty(t, b.errors(), "console errors")
}

// pastDay writes a made-up day of history of the nodes into st, as the
// aggregator self's own records: Up since 30 h ago, a few of them with an
// outage; first 4 h Down (Up 20 h of 24: 83.3%), with its height climbing
// to height, one sample every 6 minutes over the last 6 hours.
func pastDay(t *testing.T, st store.Backend, self peer.ID, nodes []peer.ID, first peer.ID, height uint64) {
	t.Helper()
	now := time.Now()
	var batch store.Batch
	outages := []time.Duration{0, 0, 25 * time.Minute, 0, 0, 0, 90 * time.Minute, 0, 0, 0, 0, 10 * time.Minute}
	for i, p := range nodes {
		out := outages[i%len(outages)]
		if p == first {
			out = 4 * time.Hour
		}
		batch.Nodes = append(batch.Nodes, store.Node{Peer: p, Aggregator: self, State: "up",
			FirstSeen: now.Add(-30 * time.Hour), LastSeen: now.Add(-time.Minute), Updated: now.Add(-time.Minute)})
		flip := func(at time.Time, from, to, reason string) {
			batch.Flips = append(batch.Flips, store.Flip{Peer: p, Aggregator: self, At: at, From: from, To: to, Reason: reason})
		}
		flip(now.Add(-30*time.Hour), "joining", "up", "beat")
		if out > 0 {
			down := now.Add(-time.Duration(5+i) * time.Hour)
			flip(down, "up", "suspect", "silence")
			flip(down.Add(10*time.Second), "suspect", "down", "silence")
			flip(down.Add(out), "down", "up", "beat")
		}
		if p == first {
			for k := range 60 {
				at := now.Add(-6*time.Hour + time.Duration(k)*6*time.Minute)
				batch.Samples = append(batch.Samples, store.Sample{Peer: p, Aggregator: self, At: at, Height: height - 60 + uint64(k)})
			}
		}
	}
	require.NoError(t, st.Apply(context.Background(), batch))
}
