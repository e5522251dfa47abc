package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
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
