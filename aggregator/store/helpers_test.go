package store

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// PostgresEnv names the environment variable with the URL of a PostgreSQL
// server for the tests; .ci/run starts one and sets it.
const PostgresEnv = "HEARTBEAT_TEST_POSTGRES"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir) // never returns
	}
	goleak.VerifyTestMain(m)
}

// t0 is a fixed instant with whole milliseconds (the store's resolution).
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// pid returns a realistic peer id (the identity multihash of an Ed25519
// key, as go-libp2p makes them) derived from i, without crypto.
func pid(i int) peer.ID {
	b := make([]byte, 0, 38)
	b = append(b, 0x00, 0x24, 0x08, 0x01, 0x12, 0x20)
	var key [32]byte
	binary.BigEndian.PutUint64(key[:8], uint64(i)*0x9e3779b97f4a7c15)
	binary.BigEndian.PutUint64(key[24:], uint64(i))
	return peer.ID(append(b, key[:]...))
}

// aggA and aggB are two aggregators sharing a store.
var (
	aggA = pid(1_000_001)
	aggB = pid(1_000_002)
)

// backend opens one storage location, as often as a test asks (to test a
// reopen).
type backend struct {
	name string
	open func(t testing.TB) Backend
}

// backends returns a fresh storage location per backend: a temporary
// directory for SQLite, a fresh schema for PostgreSQL (skipped, or failed
// under CI=true, without a server).
func backends(t testing.TB) []backend {
	dir := t.TempDir()
	bs := []backend{{name: "sqlite", open: func(t testing.TB) Backend {
		t.Helper()
		b, err := OpenSQLite(context.Background(), dir)
		require.NoError(t, err)
		t.Cleanup(func() { b.Close() })
		return b
	}}}
	if dsn, ok := postgresSchema(t); ok {
		bs = append(bs, backend{name: "postgres", open: func(t testing.TB) Backend {
			t.Helper()
			b, err := OpenPostgres(context.Background(), dsn)
			require.NoError(t, err)
			t.Cleanup(func() { b.Close() })
			return b
		}})
	}
	return bs
}

// openSQLite opens a SQLite store in a fresh directory, closed at cleanup.
func openSQLite(t testing.TB) Backend {
	t.Helper()
	b, err := OpenSQLite(context.Background(), t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	return b
}

var schemaSeq atomic.Int64

// postgresSchema creates a fresh schema on the test server and returns a
// URL that uses it; the schema is dropped at cleanup. Without a server it
// logs how to get one and returns false, unless CI=true: then it fails.
func postgresSchema(t testing.TB) (string, bool) {
	t.Helper()
	dsn := os.Getenv(PostgresEnv)
	if dsn == "" {
		msg := "PostgreSQL backend not tested: set " + PostgresEnv + "=postgres://user@127.0.0.1:5432/db?sslmode=disable, or run `bash .ci/run`, which installs and starts a throwaway server"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + " (required under CI=true)")
		}
		t.Log(msg)
		return "", false
	}
	admin, err := sql.Open("pgx", dsn)
	require.NoError(t, err)
	defer admin.Close()
	name := fmt.Sprintf("t_%d_%d", os.Getpid(), schemaSeq.Add(1))
	_, err = admin.Exec("CREATE SCHEMA " + name)
	require.NoError(t, err, "create a schema on %s", PostgresEnv)
	t.Cleanup(func() {
		admin, err := sql.Open("pgx", dsn)
		if err != nil {
			return
		}
		defer admin.Close()
		admin.Exec("DROP SCHEMA " + name + " CASCADE") //nolint:errcheck // best effort
	})
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + "search_path=" + name, true
}

var _ = stdlib.GetDefaultDriver // the "pgx" database/sql driver

// forEach runs f once per backend, each on a fresh storage location.
func forEach(t *testing.T, f func(t *testing.T, be backend)) {
	for _, be := range backends(t) {
		t.Run(be.name, func(t *testing.T) { f(t, be) })
	}
}

func node(p, agg peer.ID, state string, updated time.Time) Node {
	return Node{
		Peer: p, Aggregator: agg, Nickname: "n-" + p.String()[len(p.String())-4:], Miner: "f01234",
		Genesis: "bafy-genesis", Head: "bafy-head", Height: 100, State: state,
		FirstSeen: t0, LastSeen: updated, Updated: updated,
	}
}

func apply(t testing.TB, b Backend, batch Batch) {
	t.Helper()
	require.NoError(t, b.Apply(context.Background(), batch))
}
