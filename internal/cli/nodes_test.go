package cli

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/p2pbeat/heartbeat/aggregator/api"
)

// With --admin-token, forget needs the same token, also from loopback;
// nodes needs none.
func TestForgetNeedsTheAdminToken(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	tok := filepath.Join(dir, "admin.token")
	require.NoError(t, os.WriteFile(tok, []byte("s3cret\n"), 0o600))
	wrong := filepath.Join(dir, "wrong.token")
	require.NoError(t, os.WriteFile(wrong, []byte("guess"), 0o600))
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuffer
	done := make(chan int)
	go func() {
		done <- Main(ctx, []string{"aggregate", "--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0",
			"--data", filepath.Join(dir, "data"), "--admin-token", tok}, &out, &errb)
	}()
	url := strings.Fields(out.waitFor(t, "http      "))[1]
	unknown := "12D3KooWHHzSeKaY8xuZVzkLbKFfvNgPPeKhFBGrMbNzbm5akpqu"

	code, _, errs := run(t, "forget", unknown, "--url", url)
	require.Equal(t, 1, code, errs)
	require.Contains(t, errs, "401")
	code, _, errs = run(t, "forget", "--admin-token", wrong, unknown, "--url", url)
	require.Equal(t, 1, code, errs)
	require.Contains(t, errs, "401")
	code, _, errs = run(t, "forget", unknown, "--url", url, "--admin-token", tok)
	require.Equal(t, 1, code, errs)
	require.Contains(t, errs, "404 Not Found", "past the token: the node is unknown")
	code, stdout, errs := run(t, "nodes", "--url", url)
	require.Equal(t, 0, code, errs)
	require.Contains(t, stdout, "0 node(s)")

	cancel()
	require.Equal(t, 0, <-done, errb.String())
}

// A nickname is quoted, and cut to maxNickWidth characters between two of
// its characters (never inside a multi-byte character or an escape).
func TestNickCell(t *testing.T) {
	long := strings.Repeat("n", 256)
	for _, c := range []struct{ in, want string }{
		{"", `""`},
		{"alpha", `"alpha"`},
		{strings.Repeat("a", 30), `"` + strings.Repeat("a", 30) + `"`},              // 32: fits
		{strings.Repeat("a", 31), `"` + strings.Repeat("a", 29) + `"…`},             // 33: cut
		{long, `"` + strings.Repeat("n", 29) + `"…`},                                // the 256-byte label
		{strings.Repeat("é", 100), `"` + strings.Repeat("é", 29) + `"…`},            // 2-byte characters
		{strings.Repeat("界", 100), `"` + strings.Repeat("界", 29) + `"…`},            // 3-byte characters
		{strings.Repeat("a", 27) + "\x1b[2J", `"` + strings.Repeat("a", 27) + `"…`}, // "\x1b" (4) does not fit after 27
		{strings.Repeat("a", 25) + "\x1b[2J", `"` + strings.Repeat("a", 25) + `\x1b"…`},
		{strings.Repeat("\xff", 40), `"` + strings.Repeat(`\xff`, 7) + `"…`}, // invalid UTF-8, byte by byte
	} {
		got := nickCell(c.in)
		require.Equal(t, c.want, got, "%q", c.in)
		require.True(t, utf8.ValidString(got), got)
		require.LessOrEqual(t, utf8.RuneCountInString(got), maxNickWidth, got)
	}
}

// The nodes table stays as wide as its columns with a 256-byte nickname:
// the nickname column is cut, the other columns stay aligned.
func TestNodesTableCutsLongNicknames(t *testing.T) {
	long := strings.Repeat("界", api.MaxLimit) // far over any label limit: the CLI must not trust it
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/api/nodes", r.URL.Path)
		require.NoError(t, json.NewEncoder(w).Encode(api.NodePage{Nodes: []api.Node{
			{PeerID: "12D3KooWA", Nickname: "short", State: "up", Since: "2026-11-30T12:00:00Z", Height: 7},
			{PeerID: "12D3KooWB", Nickname: long, State: "down", Since: "2026-11-30T12:00:00Z", Height: 8},
		}}))
	}))
	defer srv.Close()
	code, out, errs := run(t, "nodes", "--url", srv.URL)
	require.Equal(t, 0, code, errs)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 4, out)
	col := func(line, word string) int { return utf8.RuneCountInString(line[:strings.Index(line, word)]) }
	require.Equal(t, col(lines[0], "STATE"), col(lines[1], "up"), out)
	require.Equal(t, col(lines[0], "STATE"), col(lines[2], "down"), out)
	require.Contains(t, lines[2], `"`+strings.Repeat("界", maxNickWidth-3)+`"…`)
	require.Less(t, utf8.RuneCountInString(lines[2]), 120, "one terminal line")
}
