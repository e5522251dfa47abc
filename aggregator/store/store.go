// Package store is what the aggregator remembers: one record per node, the
// node's state transitions (flips) and its height, sampled about once a
// minute. The aggregator writes through a Writer, which batches off the
// ingest path; the HTTP API reads from the Backend directly.
//
// Two backends implement Backend with the same SQL: SQLite (embedded, the
// default; modernc.org/sqlite, pure Go) in a directory, and PostgreSQL
// (github.com/jackc/pgx/v5) for a fleet view shared by several aggregators.
// Open picks one from its argument: a postgres:// or postgresql:// URL, or
// a directory. The schema is in schema.go and documented in
// docs/aggregator.md ("The store").
//
// Every row carries the id of the aggregator that wrote it. Reads answer
// for all aggregators: where several hold a record of the same node, the one
// with the latest Updated time wins (ties go to the smaller aggregator id).
// Uptime follows the flips of the aggregator whose record wins.
//
// Times are stored as Unix milliseconds (the zero time.Time as 0); heights
// above math.MaxInt64 are stored as math.MaxInt64.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Node states the store itself writes or gives a meaning to. Other states
// are the tracker's (joining, up, suspect, down, left): the store keeps them
// as text and does not interpret them, except for StateUp in Uptime.
const (
	// StateUp is the state Uptime counts as up.
	StateUp = "up"
	// StateRetired is a node an operator removed with Retire. Its record and
	// flips are kept for audit; it no longer alerts.
	StateRetired = "retired"
)

// Node is one aggregator's record of one node.
type Node struct {
	// Peer is the node's libp2p peer id (its identity).
	Peer peer.ID
	// Aggregator is the peer id of the aggregator that wrote the record;
	// the Writer sets it.
	Aggregator peer.ID
	// Nickname, Miner and Genesis are the last reported labels ("" when
	// unknown); never an identity.
	Nickname, Miner, Genesis string
	// Head is the last reported head, as opaque text, and Height its height.
	Head   string
	Height uint64
	// State is the tracker's state name ("up", "down", ...) or StateRetired.
	State string
	// FirstSeen is when the writing aggregator first heard of the node; an
	// update never moves it. LastSeen is the time of the last heartbeat
	// (zero if none yet).
	FirstSeen, LastSeen time.Time
	// Updated is when the writing aggregator took this snapshot: the
	// freshness that decides between aggregators.
	Updated time.Time
}

// Flip is one state transition of a node, as the aggregator saw it.
type Flip struct {
	Peer       peer.ID
	Aggregator peer.ID // the aggregator that saw it; the Writer sets it
	At         time.Time
	From, To   string // state names
	Reason     string // free text, e.g. "silent 15s", "stream_reset", "retired by operator"
}

// Sample is a node's reported height at one time.
type Sample struct {
	Peer       peer.ID
	Aggregator peer.ID // the Writer sets it
	At         time.Time
	Height     uint64
}

// Range is the half-open time interval [From, To).
type Range struct {
	From, To time.Time
}

// Epoch is the earliest time a record can have: times are kept as Unix
// milliseconds, 0 reading back as the zero time.Time (unknown). A Range
// given by a user (an HTTP query) that starts before it names nothing the
// store can hold, and the year-1 time that Go takes for "unset" is such a
// time: check against Epoch before Validate, which reads the zero time as
// missing.
var Epoch = time.Unix(0, 0).UTC()

// MaxRange bounds a Range given to a query: longer than the longest
// default retention (flips, 90 days), so any retained history fits in one.
const MaxRange = 100 * 24 * time.Hour

// Validate returns ErrBadRange (wrapped, with the reason) if r is empty
// (From or To the zero time.Time, i.e. unset), reversed, or longer than
// MaxRange.
func (r Range) Validate() error {
	switch {
	case r.From.IsZero() || r.To.IsZero():
		return fmt.Errorf("%w: from and to are both required", ErrBadRange)
	case !r.From.Before(r.To):
		return fmt.Errorf("%w: from (%s) must be before to (%s)", ErrBadRange, r.From.Format(time.RFC3339), r.To.Format(time.RFC3339))
	case r.To.Sub(r.From) > MaxRange:
		return fmt.Errorf("%w: %s is longer than the maximum of %s", ErrBadRange, r.To.Sub(r.From), MaxRange)
	}
	return nil
}

// Page limits: a page holds at most MaxPageSize items, DefaultPageSize when
// the caller gives no limit.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// Page asks for one page of a ranged query. After is the Next of the
// previous page ("" for the first page); Limit is clamped to
// [1, MaxPageSize], 0 meaning DefaultPageSize.
type Page struct {
	After string
	Limit int
}

func (p Page) limit() int {
	switch {
	case p.Limit <= 0:
		return DefaultPageSize
	case p.Limit > MaxPageSize:
		return MaxPageSize
	}
	return p.Limit
}

// NodeFilter selects nodes. Zero fields select everything.
type NodeFilter struct {
	// State keeps only nodes whose winning record has this state.
	State string
	// Aggregator keeps only records written by this aggregator (before the
	// freshest record is picked), e.g. to reload an aggregator's own view.
	Aggregator peer.ID
}

// Uptime is the share of a window a node spent Up, computed from flips.
type Uptime struct {
	// Window is the interval asked for.
	Window Range
	// Known is the part of the window for which the node's state is known:
	// from its first flip (or the window's start, if it had flipped
	// before) to the window's end.
	Known time.Duration
	// Up is the part of Known spent in StateUp.
	Up time.Duration
}

// Fraction is Up/Known, or 0 when Known is 0.
func (u Uptime) Fraction() float64 {
	if u.Known <= 0 {
		return 0
	}
	return float64(u.Up) / float64(u.Known)
}

// NodeUptime is one node's Uptime, as Uptimes returns it.
type NodeUptime struct {
	Peer peer.ID
	Uptime
}

// Batch is what one flush writes, in one transaction: flips, then retires,
// then node records, then samples. A Backend applies all of it or none.
type Batch struct {
	Flips   []Flip
	Retires []Retire
	Nodes   []Node
	Samples []Sample
}

// Len is the number of records in b.
func (b *Batch) Len() int {
	return len(b.Flips) + len(b.Retires) + len(b.Nodes) + len(b.Samples)
}

// Retire asks to mark a node retired: every aggregator's record of Peer
// gets State StateRetired and Updated At, and one flip from the winning
// record's state to StateRetired is added.
type Retire struct {
	Peer       peer.ID
	Aggregator peer.ID // the Writer sets it
	At         time.Time
	Reason     string
}

// Errors the backends return, wrapped with context; test them with
// errors.Is.
var (
	// ErrNotFound: no record of that node.
	ErrNotFound = errors.New("store: node not found")
	// ErrLocked: OpenSQLite found its directory's LockFile held by another
	// process (another aggregator on the same data directory).
	ErrLocked = errors.New("store: data directory locked")
	// ErrBadRange: a Range that is empty, reversed or too long.
	ErrBadRange = errors.New("store: bad time range")
	// ErrBadCursor: a Page.After that no query returned.
	ErrBadCursor = errors.New("store: bad page cursor")
	// ErrClosed: the Writer or Backend was closed.
	ErrClosed = errors.New("store: closed")
)

// Backend is a database holding the store. Both implementations are safe for
// concurrent use. Reads answer for all aggregators (see the package
// documentation).
type Backend interface {
	// Apply writes b in one transaction: all of it or, with an error, none.
	Apply(ctx context.Context, b Batch) error
	// Node returns the winning record of p, or ErrNotFound.
	Node(ctx context.Context, p peer.ID) (Node, error)
	// Nodes returns the winning record of every node that f selects,
	// sorted by peer id.
	Nodes(ctx context.Context, f NodeFilter) ([]Node, error)
	// Flips returns p's flips (every aggregator's) in r, oldest first, one
	// page at a time; next is "" after the last page.
	Flips(ctx context.Context, p peer.ID, r Range, pg Page) (flips []Flip, next string, err error)
	// RecentFlips returns p's last n flips (every aggregator's), newest
	// first; n is clamped like Page.Limit.
	RecentFlips(ctx context.Context, p peer.ID, n int) ([]Flip, error)
	// Samples returns p's height samples (every aggregator's) in r, oldest
	// first, one page at a time; next is "" after the last page.
	Samples(ctx context.Context, p peer.ID, r Range, pg Page) (samples []Sample, next string, err error)
	// Uptime computes p's Uptime over r from the flips of the aggregator
	// whose record wins; ErrNotFound if there is no record.
	Uptime(ctx context.Context, p peer.ID, r Range) (Uptime, error)
	// Uptimes computes the Uptime over r of every node with a record
	// (retired ones too), in one query and by the same definition as
	// Uptime, in no particular order. A node with no known state in r has
	// Known 0. Memory is one NodeUptime per node in the store (the
	// dashboard's table asks for 10,000 about once a minute).
	Uptimes(ctx context.Context, r Range) ([]NodeUptime, error)
	// Prune deletes at most limit flips older than flipsBefore, and the
	// samples older than samplesBefore of at most limit nodes, starting
	// after the node where the previous call stopped. It returns how many
	// rows it deleted and whether a full pass over the nodes' samples and
	// the expired flips is complete (false: call again).
	Prune(ctx context.Context, flipsBefore, samplesBefore time.Time, limit int) (deleted int64, done bool, err error)
	// Close releases the database.
	Close() error
}

// Open opens the store that target names: a postgres:// or postgresql://
// URL opens PostgreSQL (OpenPostgres), anything else is a directory for
// SQLite (OpenSQLite).
func Open(ctx context.Context, target string) (Backend, error) {
	if isPostgresURL(target) {
		return OpenPostgres(ctx, target)
	}
	return OpenSQLite(ctx, target)
}
