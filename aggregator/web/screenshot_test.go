package web_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/p2pbeat/heartbeat/aggregator"
	"github.com/p2pbeat/heartbeat/aggregator/web"
	"github.com/p2pbeat/heartbeat/clockwork"
)

var screenshot = flag.String("screenshot", "", "write a 1280x800 PNG of the dashboard over a live fleet to this file (go generate ./aggregator/web)")

// TestDashboardScreenshot regenerates docs/img/dashboard.png (go generate
// ./aggregator/web): a real aggregator on the wall clock with real senders
// on loopback, one of them on a fork, one lagging, one stopped (Left) and
// one killed (Down once its silence passes its thresholds). It waits on the
// page for each of those states, then takes the picture, and a second one
// (FILE-node.png) of a node's view over a synthetic history. Without
// -screenshot it skips.
func TestDashboardScreenshot(t *testing.T) {
	if *screenshot == "" {
		t.Skip("pass -screenshot FILE (go generate ./aggregator/web) to regenerate docs/img/dashboard.png")
	}
	chromium(t)
	// Short periods so that the killed node turns Down within seconds.
	cfg := aggregator.Config{ExpectedPeriod: time.Second, StartupGrace: -1}
	// The store is not there yet: the node view reads a synthetic history.
	f := startFleet(t, cfg, clockwork.Real(), web.WithHistory(history{}))

	const height = 4_312_877
	head := "{ bafy2bzacea3wsdh6y3a36tb3skempjoxqpuyompjbmfeyf34fi3uy6uue42v4 }"
	fork := "{ bafy2bzacedjuf5mhtmcn7eiowwgcyfjqrxkr6ohwmwtr4ka6dtzq5f7xzfvv2 }"
	old := "{ bafy2bzaceb4cmxbdzd3dgg2jylqhpcmevgqqkwx7hpeyc3yiuefnrxvl2kwi6 }"
	var (
		stopped, killed, first *sender
	)
	for i, city := range []string{"ams", "fra", "sin", "sfo", "nyc", "lon", "tok", "syd", "gru", "jnb"} {
		s := f.addSender(t, fmt.Sprintf("lotus-%s-%02d", city, i+1), head, height)
		if first == nil {
			first = s
		}
	}
	f.addSender(t, "venus-par-01", fork, height)
	f.addSender(t, "venus-par-02", fork, height)
	f.addSender(t, "forest-ber-01", old, height-3)
	stopped = f.addSender(t, "lotus-mad-01", head, height)
	killed = f.addSender(t, "lotus-waw-01", head, height)

	b := newBrowser(t, 1280, 800)
	b.do(t, chromedp.Navigate(f.srv.URL+"/"))
	b.waitJS(t, "fifteen Up rows", `document.querySelectorAll('#rows tr[data-state="up"]').length === 15`)

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
	b.waitJS(t, "the node's flips", `document.querySelectorAll('#d-flips li').length === 4`)
	shoot(strings.TrimSuffix(*screenshot, ".png") + "-node.png")
	require.Empty(t, b.errors(), "console errors")
}
