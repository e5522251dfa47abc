package store

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// benchNodes is the fleet size of the size and query benchmarks; override
// with HEARTBEAT_BENCH_NODES for a quicker, smaller run.
func benchNodes(b *testing.B) int {
	if v := os.Getenv("HEARTBEAT_BENCH_NODES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("HEARTBEAT_BENCH_NODES=%q: want a positive integer", v)
		}
		return n
	}
	return 10000
}

// The aggregator's side of the store: one Node call per accepted heartbeat
// (10,000 nodes beating every 3 s), with the Writer flushing to a real
// SQLite store in the background. Most calls only replace or skip a queued
// record; one in twenty per node queues a record and a sample.
func BenchmarkWriterNode(b *testing.B) {
	be, err := OpenSQLite(context.Background(), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	w, err := NewWriter(be, WriterConfig{Aggregator: aggA})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	const nodes = 10000
	ids := make([]Node, nodes)
	for i := range ids {
		ids[i] = node(pid(i), "", "up", t0)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		n := ids[i%nodes]
		round := i / nodes
		n.LastSeen = t0.Add(time.Duration(round) * 3 * time.Second)
		n.Updated, n.Height = n.LastSeen, uint64(round)
		w.Node(n)
		i++
	}
}

// The pull alternative to BenchmarkWriterNode: one snapshot pull of 10,000
// nodes (WithSource), which the Writer does once per SampleInterval.
// ns/node is the cost per node per minute; with beats every 3 s, divide by
// 20 for the cost per beat.
func BenchmarkWriterPull(b *testing.B) {
	be, err := OpenSQLite(context.Background(), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	const nodes = 10000
	snap := make([]Node, nodes)
	for i := range snap {
		snap[i] = node(pid(i), "", "up", t0)
	}
	w, err := NewWriter(be, WriterConfig{Aggregator: aggA, QueueSize: 4 * nodes, BatchSize: 4 * nodes})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	b.ReportAllocs()
	round := 0
	for b.Loop() {
		at := t0.Add(time.Duration(round) * time.Minute)
		round++
		for i := range snap {
			snap[i].LastSeen, snap[i].Updated = at, at
			w.Node(snap[i])
		}
		b.StopTimer()
		if err := w.Flush(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*nodes), "ns/node")
}

// A state change: one Flip call (never dropped).
func BenchmarkWriterFlip(b *testing.B) {
	be, err := OpenSQLite(context.Background(), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	w, err := NewWriter(be, WriterConfig{Aggregator: aggA})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		w.Flip(Flip{Peer: pid(i % 10000), At: t0.Add(time.Duration(i) * time.Millisecond), From: "up", To: "suspect", Reason: "silent"})
		i++
	}
}

// The SQLite file for benchNodes nodes and one day of samples (one a
// minute) plus their records, after a checkpoint: MB, and bytes per sample.
func BenchmarkDBSizeDayOfSamples(b *testing.B) {
	nodes := benchNodes(b)
	for b.Loop() {
		dir := b.TempDir()
		be, err := OpenSQLite(context.Background(), dir)
		if err != nil {
			b.Fatal(err)
		}
		var batch Batch
		for i := range nodes {
			batch.Nodes = append(batch.Nodes, node(pid(i), aggA, "up", t0.Add(24*time.Hour)))
		}
		apply(b, be, batch)
		for m := range 24 * 60 {
			batch = Batch{Samples: make([]Sample, 0, nodes)}
			for i := range nodes {
				batch.Samples = append(batch.Samples, Sample{Peer: pid(i), Aggregator: aggA, At: t0.Add(time.Duration(m) * time.Minute), Height: uint64(4_000_000 + m*2)})
			}
			apply(b, be, batch)
		}
		if _, err := be.(*sqlBackend).db.Exec("PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
			b.Fatal(err)
		}
		be.Close()
		st, err := os.Stat(filepath.Join(dir, SQLiteFile))
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(st.Size())/1e6, "MB")
		b.ReportMetric(float64(st.Size())/float64(nodes*24*60), "B/sample")
	}
}

// What GET /api/nodes/{peer} asks the store, with benchNodes nodes and 7
// days of flips (one every 2 hours per node, 84 each): the record, the last
// 10 flips and the uptime over 1 h, 24 h and 7 d. Reports the p50 and p99
// of one such request.
func BenchmarkNodeQuery(b *testing.B) {
	for _, be := range benchBackends(b) {
		b.Run(be.name, func(b *testing.B) {
			s := be.open(b)
			nodes := benchNodes(b)
			end := weekOfFlips(b, s, nodes)
			ctx := context.Background()
			var lat []time.Duration
			i := 0
			for b.Loop() {
				p := pid((i * 7919) % nodes)
				i++
				start := time.Now()
				if _, err := s.Node(ctx, p); err != nil {
					b.Fatal(err)
				}
				if fs, err := s.RecentFlips(ctx, p, 10); err != nil || len(fs) != 10 {
					b.Fatal(err, len(fs))
				}
				for _, d := range []time.Duration{time.Hour, 24 * time.Hour, 7 * 24 * time.Hour} {
					if _, err := s.Uptime(ctx, p, Range{From: end.Add(-d), To: end}); err != nil {
						b.Fatal(err)
					}
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// weekOfFlips fills s with nodes records and 7 days of flips (one every 2
// hours per node, alternately to up and to down: 84 each) and returns the
// end of the week.
func weekOfFlips(b *testing.B, s Backend, nodes int) time.Time {
	end := t0.Add(7 * 24 * time.Hour)
	var batch Batch
	for i := range nodes {
		batch.Nodes = append(batch.Nodes, node(pid(i), aggA, "up", end))
		for k := range 84 {
			to := "up"
			if k%2 == 1 {
				to = "down"
			}
			at := t0.Add(time.Duration(k)*2*time.Hour + time.Duration(i)*time.Millisecond)
			batch.Flips = append(batch.Flips, Flip{Peer: pid(i), Aggregator: aggA, At: at, From: "x", To: to, Reason: "bench"})
		}
		if len(batch.Flips) >= 50000 || i == nodes-1 {
			apply(b, s, batch)
			batch = Batch{}
		}
	}
	return end
}

// What the dashboard's uptime column asks the store about once a minute:
// the 24 h uptime of every node (Uptimes, one query), with benchNodes nodes
// and 7 days of flips (BenchmarkNodeQuery's store). ms/op is one query.
func BenchmarkUptimes(b *testing.B) {
	for _, be := range benchBackends(b) {
		b.Run(be.name, func(b *testing.B) {
			s := be.open(b)
			nodes := benchNodes(b)
			end := weekOfFlips(b, s, nodes)
			ctx := context.Background()
			day := Range{From: end.Add(-24 * time.Hour), To: end}
			b.ReportAllocs()
			for b.Loop() {
				us, err := s.Uptimes(ctx, day)
				if err != nil || len(us) != nodes {
					b.Fatal(err, len(us))
				}
				// Every node alternates 2 h up, 2 h down: half the day.
				if f := us[0].Fraction(); f < 0.49 || f > 0.51 {
					b.Fatalf("uptime %v, want 0.5", f)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/query")
		})
	}
}

// benchBackends is backends for benchmarks: SQLite, and PostgreSQL when
// HEARTBEAT_TEST_POSTGRES is set (never required here).
func benchBackends(b *testing.B) []backend {
	if os.Getenv(PostgresEnv) == "" {
		b.Log("PostgreSQL not measured: set " + PostgresEnv)
	}
	return backends(b)
}
