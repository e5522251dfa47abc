package store

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

func isPostgresURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// OpenPostgres opens the PostgreSQL store at dsn (a postgres:// URL; any
// libpq parameter pgx accepts, e.g. sslmode or search_path, may follow) and
// creates the schema if it is missing. Several aggregators may share one
// database: each writes its own records, and reads answer for all.
func OpenPostgres(ctx context.Context, dsn string) (Backend, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// The error of ParseConfig may quote the DSN, password included.
		return nil, fmt.Errorf("store: parse PostgreSQL URL: invalid connection string")
	}
	where := fmt.Sprintf("postgres://%s:%d/%s", cfg.Host, cfg.Port, cfg.Database)
	db := stdlib.OpenDB(*cfg)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: connect: %w", where, err)
	}
	b, err := newSQLBackend(ctx, db, postgresDialect, where)
	if err != nil {
		db.Close()
		return nil, err
	}
	return b, nil
}
