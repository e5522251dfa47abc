package transport_test

import (
	"log/slog"
	"os"
	"testing"

	"github.com/libp2p/go-libp2p/gologshim"
	"go.uber.org/goleak"
)

// TestMain fails the run if any goroutine outlives the tests. libp2p's logs
// (closing a host logs accept errors) are dropped unless GOLOG_LOG_LEVEL asks
// for them.
func TestMain(m *testing.M) {
	if os.Getenv("GOLOG_LOG_LEVEL") == "" {
		gologshim.SetDefaultHandler(slog.DiscardHandler)
	}
	goleak.VerifyTestMain(m)
}

// checkLeaks fails t if a goroutine started during t outlives it, including
// its cleanups (so libp2p hosts are closed by then): it must be called first
// in the test, since cleanups run last-in first-out.
func checkLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}
