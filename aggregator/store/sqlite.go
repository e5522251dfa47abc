package store

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver (pure Go)
)

// SQLiteFile is the name of the database file inside the data directory.
// SQLite keeps its write-ahead log beside it (SQLiteFile-wal, -shm).
const SQLiteFile = "heartbeat.db"

// LockFile, inside the data directory, is held locked (flock) by the
// process that has the store open, and holds its pid: one aggregator per
// directory.
const LockFile = "heartbeat.lock"

// sqlitePragmas are set on every connection. WAL lets the API read while
// the Writer writes; synchronous=NORMAL in WAL mode keeps every committed
// transaction through a process crash (kill -9) and may lose the last ones
// only on a power loss or OS crash; busy_timeout makes a writer wait for
// another instead of failing; _txlock=immediate takes the write lock at
// BEGIN, so two writers cannot deadlock upgrading a read lock.
const sqlitePragmas = "?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(5000)&_pragma=foreign_keys(ON)&_txlock=immediate"

// OpenSQLite opens (creating if needed) the SQLite store in dir, which it
// creates with mode 0750 if missing. An existing file that is not a
// heartbeat store, or is damaged, gives an error naming the file; the file
// is never rewritten or removed. A directory another process has open gives
// an error that wraps ErrLocked (see LockFile); the lock is released by
// Close, or by the kernel when the process dies.
func OpenSQLite(ctx context.Context, dir string) (Backend, error) {
	if dir == "" {
		return nil, fmt.Errorf("store: empty data directory")
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("store: create data directory: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, SQLiteFile)
	db, err := sql.Open("sqlite", "file:"+path+sqlitePragmas)
	if err != nil {
		closeLock(lock)
		return nil, fmt.Errorf("store %s: open: %w", path, err)
	}
	b, err := newSQLBackend(ctx, db, sqliteDialect, path)
	if err != nil {
		db.Close()
		closeLock(lock)
		return nil, err
	}
	b.lock = lock
	return b, nil
}

// closeLock releases a lock from lockDir (nil: none).
func closeLock(f *os.File) {
	if f != nil {
		f.Close()
	}
}
