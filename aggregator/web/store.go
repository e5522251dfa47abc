package web

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/aggregator/store"
)

// StoreHistory adapts a store.Backend to History: a node's flips and height
// samples in the range, read page by page (store.MaxPageSize rows a page).
// A peer id that does not parse, or that the store has no record of, is
// ErrUnknownNode.
func StoreHistory(b store.Backend) History { return storeHistory{b} }

type storeHistory struct{ b store.Backend }

func (s storeHistory) NodeHistory(ctx context.Context, id string, from, to time.Time) (NodeHistory, error) {
	p, err := peer.Decode(id)
	if err != nil {
		return NodeHistory{}, fmt.Errorf("%w: %s", ErrUnknownNode, err)
	}
	if _, err := s.b.Node(ctx, p); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return NodeHistory{}, fmt.Errorf("%w: %w", ErrUnknownNode, err)
		}
		return NodeHistory{}, fmt.Errorf("web: node history of %s: %w", id, err)
	}
	r := store.Range{From: from, To: to}
	var h NodeHistory
	flips, more, err := readNewest(ctx, func(ctx context.Context, pg store.Page) ([]store.Flip, string, error) {
		return s.b.Flips(ctx, p, r, pg)
	})
	if err != nil {
		return NodeHistory{}, fmt.Errorf("web: flips of %s: %w", id, err)
	}
	h.Truncated = h.Truncated || more
	for _, f := range flips {
		h.Flips = append(h.Flips, Flip{AtMs: ms(f.At), From: f.From, To: f.To, Reason: f.Reason})
	}
	samples, more, err := readNewest(ctx, func(ctx context.Context, pg store.Page) ([]store.Sample, string, error) {
		return s.b.Samples(ctx, p, r, pg)
	})
	if err != nil {
		return NodeHistory{}, fmt.Errorf("web: height samples of %s: %w", id, err)
	}
	h.Truncated = h.Truncated || more
	for _, x := range samples {
		h.Heights = append(h.Heights, HeightSample{AtMs: ms(x.At), Height: x.Height})
	}
	return h, nil
}

// StoreUptimes adapts a store.Backend to Uptimes: one store.Backend.Uptimes
// query for every node, the same definition of uptime as the per-node API
// (GET /api/nodes/{peer}). Nodes with no known state in the range are left
// out.
func StoreUptimes(b store.Backend) Uptimes { return storeUptimes{b} }

type storeUptimes struct{ b store.Backend }

func (s storeUptimes) Uptimes(ctx context.Context, from, to time.Time) (map[string]float64, error) {
	us, err := s.b.Uptimes(ctx, store.Range{From: from, To: to})
	if err != nil {
		return nil, fmt.Errorf("web: uptime of the nodes: %w", err)
	}
	out := make(map[string]float64, len(us))
	for _, u := range us {
		if u.Known > 0 {
			out[u.Peer.String()] = u.Fraction()
		}
	}
	return out, nil
}

// readNewest pages through a ranged query (oldest first) and returns its
// newest MaxHistoryPoints rows, oldest first; more reports that older rows
// were left out. Memory is bounded by MaxHistoryPoints plus one page; the
// time by the range, which the handler bounds (MaxHistoryRange).
func readNewest[T any](ctx context.Context, page func(context.Context, store.Page) ([]T, string, error)) (rows []T, more bool, err error) {
	var next string
	for {
		got, n, err := page(ctx, store.Page{After: next, Limit: store.MaxPageSize})
		if err != nil {
			return nil, false, err
		}
		rows = append(rows, got...)
		if len(rows) > MaxHistoryPoints {
			// Keep the newest only: memory stays bounded.
			rows = append(rows[:0], rows[len(rows)-MaxHistoryPoints:]...)
			more = true
		}
		next = n
		if next == "" || len(got) == 0 {
			return rows, more, nil
		}
	}
}
