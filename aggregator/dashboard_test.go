package aggregator

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// With WithDashboard the aggregator's handler serves the page at / beside
// the API, without a catch-all: other paths keep their 404 and 405.
// Without it, / is a 404.
func TestDashboardMounted(t *testing.T) {
	checkLeaks(t)
	get := func(h http.Handler, method, path string) *httptest.ResponseRecorder {
		rr := httptest.NewRecorder()
		h.ServeHTTP(rr, httptest.NewRequest(method, path, nil))
		return rr
	}
	a, err := New(newHost(t), Config{}, WithDashboard())
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	require.NotNil(t, a.Dashboard())
	h := a.HTTPHandler()
	rr := get(h, http.MethodGet, "/")
	require.Equal(t, http.StatusOK, rr.Code)
	require.True(t, strings.HasPrefix(rr.Header().Get("Content-Type"), "text/html"), rr.Header().Get("Content-Type"))
	require.Equal(t, http.StatusOK, get(h, http.MethodGet, "/static/app.js").Code)
	require.Equal(t, http.StatusOK, get(h, http.MethodGet, "/api/nodes").Code)
	require.Equal(t, http.StatusNotFound, get(h, http.MethodGet, "/nope").Code)
	require.Equal(t, http.StatusMethodNotAllowed, get(h, http.MethodPost, "/").Code)

	b, err := New(newHost(t), Config{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	require.Nil(t, b.Dashboard())
	require.Equal(t, http.StatusNotFound, get(b.HTTPHandler(), http.MethodGet, "/").Code)
}
