package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// insertChunk is the number of rows per multi-row INSERT: few round trips
// to PostgreSQL, and far below both databases' limits on bound parameters
// (SQLite 32766, PostgreSQL 65535) at 11 columns.
const insertChunk = 200

// sqlBackend implements Backend over database/sql for both dialects.
type sqlBackend struct {
	db    *sql.DB
	d     dialect
	where string // names the database in errors: the SQLite file, or host/db

	mu  sync.Mutex
	ids map[peer.ID]int64 // interned peer ids; rows of peers are never deleted
	// pruneAfter is the peers.id after which the next Prune continues its
	// pass over the nodes' samples.
	pruneAfter int64
	closed     bool
	// uptime holds uptimeSQL(false) and uptimeSQL(true), prepared on first
	// use (uptimeStmt).
	uptime [2]*sql.Stmt
	// lock is the SQLite data directory's lock (lockDir), released by
	// Close after the database; nil for PostgreSQL.
	lock *os.File
}

func newSQLBackend(ctx context.Context, db *sql.DB, d dialect, where string) (*sqlBackend, error) {
	b := &sqlBackend{db: db, d: d, where: where, ids: make(map[peer.ID]int64)}
	if err := b.migrate(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *sqlBackend) errf(op string, err error) error {
	return fmt.Errorf("store %s: %s: %w", b.where, op, err)
}

// migrate creates the schema if it is missing and checks its version.
func (b *sqlBackend) migrate(ctx context.Context) error {
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return b.errf("open", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if b.d.schemaLock != "" {
		if _, err := tx.ExecContext(ctx, b.d.schemaLock); err != nil {
			return b.errf("lock schema", err)
		}
	}
	if b.d.foreignTables != "" {
		if err := b.refuseForeign(ctx, tx); err != nil {
			return err
		}
	}
	for _, stmt := range b.d.ddl() {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return b.errf("create schema", err)
		}
	}
	var v string
	err = tx.QueryRowContext(ctx, b.d.bind(`SELECT value FROM meta WHERE key = ?`), "schema_version").Scan(&v)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, b.d.bind(`INSERT INTO meta (key, value) VALUES (?, ?)`), "schema_version", strconv.Itoa(SchemaVersion)); err != nil {
			return b.errf("write schema version", err)
		}
	case err != nil:
		return b.errf("read schema version", err)
	default:
		n, err := strconv.Atoi(v)
		if err != nil || n > SchemaVersion {
			return b.errf("check schema", fmt.Errorf("schema_version %q is not one this binary knows (it knows %d)", v, SchemaVersion))
		}
	}
	if err := tx.Commit(); err != nil {
		return b.errf("create schema", err)
	}
	return nil
}

// refuseForeign fails when the database holds tables that are not ours and
// no meta table: another program's database, which must not get our schema.
func (b *sqlBackend) refuseForeign(ctx context.Context, tx *sql.Tx) error {
	rows, err := tx.QueryContext(ctx, b.d.foreignTables)
	if err != nil {
		return b.errf("read schema", err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return b.errf("read schema", err)
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		return b.errf("read schema", err)
	}
	if len(names) > 0 {
		return b.errf("check schema", fmt.Errorf("not a heartbeat store: it holds tables %s and no meta table; move it aside", strings.Join(names, ", ")))
	}
	return nil
}

// Close implements Backend.
func (b *sqlBackend) Close() error {
	b.mu.Lock()
	b.closed = true
	for _, st := range b.uptime {
		if st != nil {
			st.Close()
		}
	}
	lock := b.lock
	b.lock = nil
	b.mu.Unlock()
	err := b.db.Close()
	closeLock(lock) // after the database: no write may follow the release
	if err != nil {
		return b.errf("close", err)
	}
	return nil
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

func height(h uint64) int64 {
	if h > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(h)
}

// intern returns the peers.id of each peer in ps, inserting the missing ones
// inside tx. New ids are returned separately and enter the cache only after
// the transaction commits.
func (b *sqlBackend) intern(ctx context.Context, tx *sql.Tx, ps map[peer.ID]int64) (fresh map[peer.ID]int64, err error) {
	b.mu.Lock()
	for p := range ps {
		if id, ok := b.ids[p]; ok {
			ps[p] = id
		}
	}
	b.mu.Unlock()
	ins := b.d.bind(`INSERT INTO peers (peer) VALUES (?) ON CONFLICT (peer) DO NOTHING`)
	sel := b.d.bind(`SELECT id FROM peers WHERE peer = ?`)
	for p, id := range ps {
		if id != 0 {
			continue
		}
		if p == "" {
			return nil, errors.New("empty peer id")
		}
		if _, err := tx.ExecContext(ctx, ins, p.String()); err != nil {
			return nil, fmt.Errorf("intern peer %s: %w", p, err)
		}
		if err := tx.QueryRowContext(ctx, sel, p.String()).Scan(&id); err != nil {
			return nil, fmt.Errorf("intern peer %s: %w", p, err)
		}
		ps[p] = id
		if fresh == nil {
			fresh = make(map[peer.ID]int64)
		}
		fresh[p] = id
	}
	return fresh, nil
}

// Apply implements Backend.
func (b *sqlBackend) Apply(ctx context.Context, batch Batch) error {
	if batch.Len() == 0 {
		return nil
	}
	ps := make(map[peer.ID]int64)
	for _, f := range batch.Flips {
		ps[f.Peer], ps[f.Aggregator] = 0, 0
	}
	for _, r := range batch.Retires {
		ps[r.Peer], ps[r.Aggregator] = 0, 0
	}
	for _, n := range batch.Nodes {
		ps[n.Peer], ps[n.Aggregator] = 0, 0
	}
	for _, s := range batch.Samples {
		ps[s.Peer], ps[s.Aggregator] = 0, 0
	}
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return b.errf("begin", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	fresh, err := b.intern(ctx, tx, ps)
	if err != nil {
		return b.errf("apply", err)
	}
	if err := b.insertFlips(ctx, tx, ps, batch.Flips); err != nil {
		return b.errf("insert flips", err)
	}
	for _, r := range batch.Retires {
		if err := b.retire(ctx, tx, ps, r); err != nil {
			return b.errf("retire "+r.Peer.String(), err)
		}
	}
	if err := b.upsertNodes(ctx, tx, ps, batch.Nodes); err != nil {
		return b.errf("upsert nodes", err)
	}
	if err := b.insertSamples(ctx, tx, ps, batch.Samples); err != nil {
		return b.errf("insert samples", err)
	}
	if err := tx.Commit(); err != nil {
		return b.errf("commit", err)
	}
	b.mu.Lock()
	for p, id := range fresh {
		b.ids[p] = id
	}
	b.mu.Unlock()
	return nil
}

// insertRows runs head + "(?,...),(?,...)" + tail in chunks of insertChunk
// rows; row(i, args) appends the cols values of row i.
func (b *sqlBackend) insertRows(ctx context.Context, tx *sql.Tx, head, tail string, cols, n int, row func(i int, args []any) []any) error {
	one := "(" + strings.TrimSuffix(strings.Repeat("?, ", cols), ", ") + ")"
	for lo := 0; lo < n; lo += insertChunk {
		hi := min(lo+insertChunk, n)
		var q strings.Builder
		q.WriteString(head)
		args := make([]any, 0, (hi-lo)*cols)
		for i := lo; i < hi; i++ {
			if i > lo {
				q.WriteString(", ")
			}
			q.WriteString(one)
			args = row(i, args)
		}
		q.WriteString(tail)
		if _, err := tx.ExecContext(ctx, b.d.bind(q.String()), args...); err != nil {
			return err
		}
	}
	return nil
}

func (b *sqlBackend) insertFlips(ctx context.Context, tx *sql.Tx, ps map[peer.ID]int64, fs []Flip) error {
	return b.insertRows(ctx, tx, `INSERT INTO flips (peer_id, agg_id, at, from_state, to_state, reason) VALUES `, ``, 6, len(fs),
		func(i int, a []any) []any {
			f := fs[i]
			return append(a, ps[f.Peer], ps[f.Aggregator], ms(f.At), f.From, f.To, f.Reason)
		})
}

func (b *sqlBackend) insertSamples(ctx context.Context, tx *sql.Tx, ps map[peer.ID]int64, ss []Sample) error {
	// DO NOTHING: a sample replayed after a failed flush is not an error.
	return b.insertRows(ctx, tx, `INSERT INTO samples (peer_id, at, agg_id, height) VALUES `, ` ON CONFLICT (peer_id, at, agg_id) DO NOTHING`, 4, len(ss),
		func(i int, a []any) []any {
			s := ss[i]
			return append(a, ps[s.Peer], ms(s.At), ps[s.Aggregator], height(s.Height))
		})
}

func (b *sqlBackend) upsertNodes(ctx context.Context, tx *sql.Tx, ps map[peer.ID]int64, ns []Node) error {
	// One row per (peer, aggregator) per statement: PostgreSQL refuses an
	// upsert that touches a row twice. The last record in ns wins.
	type key struct{ p, a peer.ID }
	last := make(map[key]int, len(ns))
	for i, n := range ns {
		last[key{n.Peer, n.Aggregator}] = i
	}
	uniq := ns
	if len(last) < len(ns) {
		uniq = make([]Node, 0, len(last))
		for i, n := range ns {
			if last[key{n.Peer, n.Aggregator}] == i {
				uniq = append(uniq, n)
			}
		}
	}
	// The WHERE keeps a stale record (older Updated, e.g. replayed after a
	// failed flush, or queued before a Retire) from overwriting a fresh one.
	// first_seen is never updated.
	return b.insertRows(ctx, tx,
		`INSERT INTO nodes (peer_id, agg_id, nickname, miner, genesis, head, height, state, first_seen, last_seen, updated) VALUES `,
		` ON CONFLICT (peer_id, agg_id) DO UPDATE SET
			nickname = excluded.nickname, miner = excluded.miner, genesis = excluded.genesis,
			head = excluded.head, height = excluded.height, state = excluded.state,
			last_seen = excluded.last_seen, updated = excluded.updated
		WHERE excluded.updated >= nodes.updated`, 11, len(uniq),
		func(i int, a []any) []any {
			n := uniq[i]
			return append(a, ps[n.Peer], ps[n.Aggregator], n.Nickname, n.Miner, n.Genesis, n.Head, height(n.Height),
				n.State, ms(n.FirstSeen), ms(n.LastSeen), ms(n.Updated))
		})
}

// retire marks every record of r.Peer retired and adds the flip. A node
// with no record is left alone: there is nothing to retire.
func (b *sqlBackend) retire(ctx context.Context, tx *sql.Tx, ps map[peer.ID]int64, r Retire) error {
	var from string
	err := tx.QueryRowContext(ctx, b.d.bind(`SELECT n.state FROM nodes n JOIN peers a ON a.id = n.agg_id
		WHERE n.peer_id = ? ORDER BY n.updated DESC, a.peer LIMIT 1`), ps[r.Peer]).Scan(&from)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, b.d.bind(`UPDATE nodes SET state = ?, updated = ? WHERE peer_id = ?`),
		StateRetired, ms(r.At), ps[r.Peer]); err != nil {
		return err
	}
	if from == StateRetired {
		return nil
	}
	return b.insertFlips(ctx, tx, ps, []Flip{{Peer: r.Peer, Aggregator: r.Aggregator, At: r.At, From: from, To: StateRetired, Reason: r.Reason}})
}

const nodeCols = `p.peer, a.peer, n.nickname, n.miner, n.genesis, n.head, n.height, n.state, n.first_seen, n.last_seen, n.updated`

func scanNode(sc interface{ Scan(...any) error }) (Node, error) {
	var (
		n                   Node
		p, a                string
		h                   int64
		first, last, update int64
	)
	if err := sc.Scan(&p, &a, &n.Nickname, &n.Miner, &n.Genesis, &n.Head, &h, &n.State, &first, &last, &update); err != nil {
		return Node{}, err
	}
	var err error
	if n.Peer, err = peer.Decode(p); err != nil {
		return Node{}, fmt.Errorf("stored peer id %q: %w", p, err)
	}
	if n.Aggregator, err = peer.Decode(a); err != nil {
		return Node{}, fmt.Errorf("stored aggregator id %q: %w", a, err)
	}
	n.Height = uint64(max(h, 0))
	n.FirstSeen, n.LastSeen, n.Updated = fromMS(first), fromMS(last), fromMS(update)
	return n, nil
}

// Node implements Backend.
func (b *sqlBackend) Node(ctx context.Context, p peer.ID) (Node, error) {
	row := b.db.QueryRowContext(ctx, b.d.bind(`SELECT `+nodeCols+` FROM nodes n
		JOIN peers p ON p.id = n.peer_id JOIN peers a ON a.id = n.agg_id
		WHERE p.peer = ? ORDER BY n.updated DESC, a.peer LIMIT 1`), p.String())
	n, err := scanNode(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Node{}, fmt.Errorf("%w: %s", ErrNotFound, p)
	}
	if err != nil {
		return Node{}, b.errf("read node "+p.String(), err)
	}
	return n, nil
}

// Nodes implements Backend.
func (b *sqlBackend) Nodes(ctx context.Context, f NodeFilter) ([]Node, error) {
	var (
		inner, outer string
		args         []any
	)
	if f.Aggregator != "" {
		inner = ` WHERE a.peer = ?`
		args = append(args, f.Aggregator.String())
	}
	if f.State != "" {
		outer = ` AND n.state = ?`
		args = append(args, f.State)
	}
	q := `SELECT ` + nodeCols + ` FROM (
			SELECT n.*, ROW_NUMBER() OVER (PARTITION BY n.peer_id ORDER BY n.updated DESC, a.peer) AS rn
			FROM nodes n JOIN peers a ON a.id = n.agg_id` + inner + `
		) n JOIN peers p ON p.id = n.peer_id JOIN peers a ON a.id = n.agg_id
		WHERE n.rn = 1` + outer + ` ORDER BY p.peer`
	rows, err := b.db.QueryContext(ctx, b.d.bind(q), args...)
	if err != nil {
		return nil, b.errf("read nodes", err)
	}
	defer rows.Close()
	var out []Node
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return nil, b.errf("read nodes", err)
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, b.errf("read nodes", err)
	}
	return out, nil
}

// A cursor is "<unix ms>:<tiebreak>", the key of the last item of a page.
func encodeCursor(at, tie int64) string {
	return strconv.FormatInt(at, 10) + ":" + strconv.FormatInt(tie, 10)
}

func decodeCursor(s string, r Range) (at, tie int64, err error) {
	if s == "" {
		return ms(r.From), -1, nil // at >= From
	}
	a, t, ok := strings.Cut(s, ":")
	if ok {
		at, err = strconv.ParseInt(a, 10, 64)
		if err == nil {
			tie, err = strconv.ParseInt(t, 10, 64)
		}
	}
	if !ok || err != nil {
		return 0, 0, fmt.Errorf("%w: %q", ErrBadCursor, s)
	}
	return at, tie, nil
}

// Flips implements Backend.
func (b *sqlBackend) Flips(ctx context.Context, p peer.ID, r Range, pg Page) ([]Flip, string, error) {
	if err := r.Validate(); err != nil {
		return nil, "", err
	}
	at, tie, err := decodeCursor(pg.After, r)
	if err != nil {
		return nil, "", err
	}
	limit := pg.limit()
	rows, err := b.db.QueryContext(ctx, b.d.bind(`SELECT f.id, a.peer, f.at, f.from_state, f.to_state, f.reason
		FROM flips f JOIN peers p ON p.id = f.peer_id JOIN peers a ON a.id = f.agg_id
		WHERE p.peer = ? AND f.at >= ? AND f.at < ? AND (f.at > ? OR (f.at = ? AND f.id > ?))
		ORDER BY f.at, f.id LIMIT ?`), p.String(), ms(r.From), ms(r.To), at, at, tie, limit+1)
	if err != nil {
		return nil, "", b.errf("read flips", err)
	}
	defer rows.Close()
	var (
		out  []Flip
		ids  []int64
		next string
	)
	for rows.Next() {
		var (
			f     Flip
			id, t int64
			a     string
		)
		if err := rows.Scan(&id, &a, &t, &f.From, &f.To, &f.Reason); err != nil {
			return nil, "", b.errf("read flips", err)
		}
		if len(out) == limit {
			last := out[len(out)-1]
			next = encodeCursor(ms(last.At), ids[len(ids)-1])
			break
		}
		f.Peer, f.At = p, fromMS(t)
		if f.Aggregator, err = peer.Decode(a); err != nil {
			return nil, "", b.errf("read flips", fmt.Errorf("stored aggregator id %q: %w", a, err))
		}
		out = append(out, f)
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, "", b.errf("read flips", err)
	}
	return out, next, nil
}

// RecentFlips implements Backend.
func (b *sqlBackend) RecentFlips(ctx context.Context, p peer.ID, n int) ([]Flip, error) {
	rows, err := b.db.QueryContext(ctx, b.d.bind(`SELECT a.peer, f.at, f.from_state, f.to_state, f.reason
		FROM flips f JOIN peers p ON p.id = f.peer_id JOIN peers a ON a.id = f.agg_id
		WHERE p.peer = ? ORDER BY f.at DESC, f.id DESC LIMIT ?`), p.String(), Page{Limit: n}.limit())
	if err != nil {
		return nil, b.errf("read flips", err)
	}
	defer rows.Close()
	var out []Flip
	for rows.Next() {
		var (
			f Flip
			t int64
			a string
		)
		if err := rows.Scan(&a, &t, &f.From, &f.To, &f.Reason); err != nil {
			return nil, b.errf("read flips", err)
		}
		f.Peer, f.At = p, fromMS(t)
		if f.Aggregator, err = peer.Decode(a); err != nil {
			return nil, b.errf("read flips", fmt.Errorf("stored aggregator id %q: %w", a, err))
		}
		out = append(out, f)
	}
	if err := rows.Err(); err != nil {
		return nil, b.errf("read flips", err)
	}
	return out, nil
}

// Samples implements Backend.
func (b *sqlBackend) Samples(ctx context.Context, p peer.ID, r Range, pg Page) ([]Sample, string, error) {
	if err := r.Validate(); err != nil {
		return nil, "", err
	}
	at, tie, err := decodeCursor(pg.After, r)
	if err != nil {
		return nil, "", err
	}
	limit := pg.limit()
	rows, err := b.db.QueryContext(ctx, b.d.bind(`SELECT s.agg_id, a.peer, s.at, s.height
		FROM samples s JOIN peers p ON p.id = s.peer_id JOIN peers a ON a.id = s.agg_id
		WHERE p.peer = ? AND s.at >= ? AND s.at < ? AND (s.at > ? OR (s.at = ? AND s.agg_id > ?))
		ORDER BY s.at, s.agg_id LIMIT ?`), p.String(), ms(r.From), ms(r.To), at, at, tie, limit+1)
	if err != nil {
		return nil, "", b.errf("read samples", err)
	}
	defer rows.Close()
	var (
		out  []Sample
		aggs []int64
		next string
	)
	for rows.Next() {
		var (
			s        Sample
			aid, t   int64
			a        string
			h        int64
			decodeEr error
		)
		if err := rows.Scan(&aid, &a, &t, &h); err != nil {
			return nil, "", b.errf("read samples", err)
		}
		if len(out) == limit {
			next = encodeCursor(ms(out[len(out)-1].At), aggs[len(aggs)-1])
			break
		}
		s.Peer, s.At, s.Height = p, fromMS(t), uint64(max(h, 0))
		if s.Aggregator, decodeEr = peer.Decode(a); decodeEr != nil {
			return nil, "", b.errf("read samples", fmt.Errorf("stored aggregator id %q: %w", a, decodeEr))
		}
		out = append(out, s)
		aggs = append(aggs, aid)
	}
	if err := rows.Err(); err != nil {
		return nil, "", b.errf("read samples", err)
	}
	return out, next, nil
}

// uptimeSQL computes Uptime (see its documentation) for every node with
// a record, or with onePeer for the node named by the first argument: one
// query, in SQL both dialects accept. It is the only definition of uptime:
// Uptime and Uptimes both run it, so the per-node API and the dashboard's
// table agree.
//
// For each node it takes the flips of the aggregator whose record wins
// (as Node does: latest updated, then the smaller aggregator id), turns
// them into segments (a flip's to_state lasts until the next flip, or the
// window's end) and sums the segments' parts inside the window. The first
// segment starts at the window's start with the state of the last flip
// before it (NULL, hence unknown, without one). Arguments, in order: [the
// peer], from, from, from, to, to, StateUp. Rows: peer text, known ms, up ms.
//
// Cost: one index seek (flips_peer_at) per node for the state at the
// window's start, and the node's flips inside the window.
func uptimeSQL(onePeer bool) string {
	filter := ""
	if onePeer {
		filter = ` JOIN peers p ON p.id = n.peer_id WHERE p.peer = ?`
	}
	return `WITH win AS (
			SELECT peer_id, agg_id FROM (
				SELECT n.peer_id, n.agg_id, ROW_NUMBER() OVER (PARTITION BY n.peer_id ORDER BY n.updated DESC, a.peer) AS rn
				FROM nodes n JOIN peers a ON a.id = n.agg_id` + filter + `
			) w WHERE rn = 1
		), seg AS (
			SELECT w.peer_id, CAST(? AS BIGINT) AS at, CAST(0 AS BIGINT) AS id,
				(SELECT f.to_state FROM flips f WHERE f.peer_id = w.peer_id AND f.agg_id = w.agg_id AND f.at < ?
					ORDER BY f.at DESC, f.id DESC LIMIT 1) AS state
			FROM win w
			UNION ALL
			SELECT f.peer_id, f.at, f.id, f.to_state FROM flips f JOIN win w ON w.peer_id = f.peer_id AND w.agg_id = f.agg_id
			WHERE f.at >= ? AND f.at < ?
		), span AS (
			SELECT peer_id, state, LEAD(at, 1, CAST(? AS BIGINT)) OVER (PARTITION BY peer_id ORDER BY at, id) - at AS d FROM seg
		)
		SELECT p.peer, t.known, t.up FROM (
			SELECT peer_id,
				CAST(COALESCE(SUM(CASE WHEN state IS NOT NULL THEN d END), 0) AS BIGINT) AS known,
				CAST(COALESCE(SUM(CASE WHEN state = ? THEN d END), 0) AS BIGINT) AS up
			FROM span GROUP BY peer_id
		) t JOIN peers p ON p.id = t.peer_id`
}

// uptimeStmt returns uptimeSQL(onePeer), prepared once: the query is long
// enough that parsing it each time would cost more than running it for one
// node (SQLite).
func (b *sqlBackend) uptimeStmt(ctx context.Context, onePeer bool) (*sql.Stmt, error) {
	i := 0
	if onePeer {
		i = 1
	}
	b.mu.Lock()
	st, closed := b.uptime[i], b.closed
	b.mu.Unlock()
	switch {
	case closed:
		return nil, ErrClosed
	case st != nil:
		return st, nil
	}
	// Prepared outside mu, which Apply takes: a round trip to PostgreSQL.
	st, err := b.db.PrepareContext(ctx, b.d.bind(uptimeSQL(onePeer)))
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		st.Close()
		return nil, ErrClosed
	case b.uptime[i] != nil: // prepared meanwhile by another caller
		st.Close()
	default:
		b.uptime[i] = st
	}
	return b.uptime[i], nil
}

// uptimes runs uptimeSQL and calls row for each node.
func (b *sqlBackend) uptimes(ctx context.Context, p peer.ID, r Range, row func(NodeUptime)) error {
	if err := r.Validate(); err != nil {
		return err
	}
	from, to := ms(r.From), ms(r.To)
	args := []any{from, from, from, to, to, StateUp}
	if p != "" {
		args = append([]any{p.String()}, args...)
	}
	stmt, err := b.uptimeStmt(ctx, p != "")
	if err != nil {
		return b.errf("read uptime", err)
	}
	rows, err := stmt.QueryContext(ctx, args...)
	if err != nil {
		return b.errf("read uptime", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id        string
			known, up int64
			u         = NodeUptime{Uptime: Uptime{Window: r}}
		)
		if err := rows.Scan(&id, &known, &up); err != nil {
			return b.errf("read uptime", err)
		}
		if u.Peer, err = peer.Decode(id); err != nil {
			return b.errf("read uptime", fmt.Errorf("stored peer id %q: %w", id, err))
		}
		u.Known, u.Up = time.Duration(known)*time.Millisecond, time.Duration(up)*time.Millisecond
		row(u)
	}
	if err := rows.Err(); err != nil {
		return b.errf("read uptime", err)
	}
	return nil
}

// Uptime implements Backend.
func (b *sqlBackend) Uptime(ctx context.Context, p peer.ID, r Range) (Uptime, error) {
	if p == "" {
		return Uptime{}, fmt.Errorf("%w: empty peer id", ErrNotFound)
	}
	var (
		out   Uptime
		found bool
	)
	err := b.uptimes(ctx, p, r, func(u NodeUptime) { out, found = u.Uptime, true })
	if err != nil {
		return Uptime{}, err
	}
	if !found {
		return Uptime{}, fmt.Errorf("%w: %s", ErrNotFound, p)
	}
	return out, nil
}

// Uptimes implements Backend.
func (b *sqlBackend) Uptimes(ctx context.Context, r Range) ([]NodeUptime, error) {
	var out []NodeUptime
	if err := b.uptimes(ctx, "", r, func(u NodeUptime) { out = append(out, u) }); err != nil {
		return nil, err
	}
	return out, nil
}

// Prune implements Backend.
func (b *sqlBackend) Prune(ctx context.Context, flipsBefore, samplesBefore time.Time, limit int) (int64, bool, error) {
	if limit <= 0 {
		return 0, false, fmt.Errorf("store: Prune limit %d must be positive", limit)
	}
	res, err := b.db.ExecContext(ctx, b.d.bind(`DELETE FROM flips WHERE id IN (
		SELECT id FROM flips WHERE at < ? ORDER BY at LIMIT ?)`), ms(flipsBefore), limit)
	if err != nil {
		return 0, false, b.errf("prune flips", err)
	}
	flips, err := res.RowsAffected()
	if err != nil {
		return 0, false, b.errf("prune flips", err)
	}
	b.mu.Lock()
	after := b.pruneAfter
	b.mu.Unlock()
	rows, err := b.db.QueryContext(ctx, b.d.bind(`SELECT id FROM peers WHERE id > ? ORDER BY id LIMIT ?`), after, limit)
	if err != nil {
		return flips, false, b.errf("prune samples", err)
	}
	var ids []any
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return flips, false, b.errf("prune samples", err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return flips, false, b.errf("prune samples", err)
	}
	var samples int64
	if len(ids) > 0 {
		q := `DELETE FROM samples WHERE at < ? AND peer_id IN (` + strings.TrimSuffix(strings.Repeat("?, ", len(ids)), ", ") + `)`
		res, err := b.db.ExecContext(ctx, b.d.bind(q), append([]any{ms(samplesBefore)}, ids...)...)
		if err != nil {
			return flips, false, b.errf("prune samples", err)
		}
		if samples, err = res.RowsAffected(); err != nil {
			return flips, false, b.errf("prune samples", err)
		}
	}
	wrapped := len(ids) < limit
	b.mu.Lock()
	if wrapped {
		b.pruneAfter = 0
	} else {
		b.pruneAfter = ids[len(ids)-1].(int64)
	}
	b.mu.Unlock()
	return flips + samples, wrapped && flips < int64(limit), nil
}
