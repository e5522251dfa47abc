package store

import (
	"bytes"
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// A file that is not a SQLite database: a clear error naming it, and the
// file is left exactly as it was (never a silent wipe).
func TestCorruptFileNamedNeverWiped(t *testing.T) {
	for name, content := range map[string][]byte{
		"garbage":   bytes.Repeat([]byte("not a database, an operator's mistake\n"), 200),
		"truncated": nil, // filled below: the first half of a real store
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, SQLiteFile)
			if content == nil {
				src := t.TempDir()
				b, err := OpenSQLite(context.Background(), src)
				require.NoError(t, err)
				apply(t, b, Batch{Nodes: []Node{node(pid(1), aggA, "up", t0)}})
				require.NoError(t, b.Close())
				whole, err := os.ReadFile(filepath.Join(src, SQLiteFile))
				require.NoError(t, err)
				// Keep the header but overwrite the schema page.
				content = append(bytes.Clone(whole[:100]), bytes.Repeat([]byte{0xA5}, len(whole)-100)...)
			}
			require.NoError(t, os.WriteFile(path, content, 0o600))
			_, err := OpenSQLite(context.Background(), dir)
			require.Error(t, err)
			require.Contains(t, err.Error(), path)
			t.Log(err)
			after, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, content, after, "the file is untouched")
		})
	}
}

// A database written by a newer binary is refused, not downgraded.
func TestNewerSchemaRefused(t *testing.T) {
	dir := t.TempDir()
	b, err := OpenSQLite(context.Background(), dir)
	require.NoError(t, err)
	_, err = b.(*sqlBackend).db.Exec("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
	require.NoError(t, err)
	require.NoError(t, b.Close())
	_, err = OpenSQLite(context.Background(), dir)
	require.ErrorContains(t, err, "schema_version \"99\"")
	require.ErrorContains(t, err, filepath.Join(dir, SQLiteFile))
}

func TestOpenChoosesBackend(t *testing.T) {
	_, err := Open(context.Background(), "postgres://nobody:s3cret@127.0.0.1:1/none?sslmode=disable&connect_timeout=1")
	require.ErrorContains(t, err, "postgres://127.0.0.1:1/none")
	require.NotContains(t, err.Error(), "s3cret", "no password in errors")
	b, err := Open(context.Background(), t.TempDir())
	require.NoError(t, err)
	require.IsType(t, &sqlBackend{}, b)
	require.NoError(t, b.Close())
}

// Another program's SQLite database named heartbeat.db (tables of its own,
// no meta table) is refused with an error naming the file and its tables,
// and never gets our schema.
func TestForeignSQLiteDatabaseRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, SQLiteFile)
	db, err := sql.Open("sqlite", "file:"+path)
	require.NoError(t, err)
	_, err = db.Exec(`CREATE TABLE invoices (id INTEGER PRIMARY KEY, total INTEGER); INSERT INTO invoices (total) VALUES (42)`)
	require.NoError(t, err)
	require.NoError(t, db.Close())

	_, err = OpenSQLite(context.Background(), dir)
	require.ErrorContains(t, err, path)
	require.ErrorContains(t, err, "not a heartbeat store: it holds tables invoices")

	db, err = sql.Open("sqlite", "file:"+path)
	require.NoError(t, err)
	defer db.Close()
	var tables []string
	rows, err := db.Query(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`)
	require.NoError(t, err)
	for rows.Next() {
		var n string
		require.NoError(t, rows.Scan(&n))
		tables = append(tables, n)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"invoices"}, tables, "no table of ours was added")

	// An empty file (a fresh store) and our own store still open.
	fresh := t.TempDir()
	b, err := OpenSQLite(context.Background(), fresh)
	require.NoError(t, err)
	require.NoError(t, b.Close())
	b, err = OpenSQLite(context.Background(), fresh)
	require.NoError(t, err)
	require.NoError(t, b.Close())
}
