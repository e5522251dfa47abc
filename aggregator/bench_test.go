package aggregator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/aggregator/store"
	"github.com/p2pbeat/heartbeat/wire"
	"github.com/p2pbeat/heartbeat/wire2"
)

// benchStreams is the number of concurrent in-memory streams: many more
// than cores, as on a real aggregator.
const benchStreams = 1000

// linesPerBlock canonical heartbeat lines make one block; a stream replays
// its block. The head changes every 10 lines, as a Filecoin head changes
// every 30 s epoch under a 3 s BeatPeriod, and all nodes share it.
const linesPerBlock = 100

// beatBlock is one node's block of canonical 2019 lines (json.Encoder
// output) and the byte offset of each line in it.
func beatBlock(tb testing.TB, node int) ([]byte, []int) {
	tb.Helper()
	var block []byte
	offs := make([]int, 0, linesPerBlock+1)
	for i := range linesPerBlock {
		offs = append(offs, len(block))
		epoch := 3_000_000 + i/10
		var err error
		block, err = wire.AppendLine(block, wire.Heartbeat{
			Head:         "{ bafy2bzaceb" + strconv.Itoa(epoch) + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa }",
			Height:       uint64(epoch),
			Nickname:     "node-" + strconv.Itoa(node),
			MinerAddress: "f0" + strconv.Itoa(1000+node),
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
	return block, append(offs, len(block))
}

// blockReader replays block for exactly n lines, copying into the caller's
// buffer as a network read does.
type blockReader struct {
	block     []byte
	pos       int // position in block
	remaining int // bytes left in the stream
}

func newBlockReader(block []byte, offs []int, lines int) *blockReader {
	full, rest := lines/linesPerBlock, lines%linesPerBlock
	return &blockReader{block: block, remaining: full*len(block) + offs[rest]}
}

func (r *blockReader) Read(p []byte) (int, error) {
	if r.remaining == 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && r.remaining > 0 {
		c := copy(p[n:min(len(p), n+r.remaining)], r.block[r.pos:])
		n += c
		r.remaining -= c
		r.pos = (r.pos + c) % len(r.block)
	}
	return n, nil
}

// benchIngest feeds b.N heartbeats through serve, split over benchStreams
// concurrent streams, and reports beats/s.
func benchIngest(b *testing.B, serve func(id peer.ID, r io.Reader) error) {
	ids := make([]peer.ID, benchStreams)
	blocks := make([][]byte, benchStreams)
	offs := make([][]int, benchStreams)
	for i := range ids {
		ids[i] = randomPeer(b)
		blocks[i], offs[i] = beatBlock(b, i)
	}
	readers := make([]*blockReader, benchStreams)
	for i := range readers {
		readers[i] = newBlockReader(blocks[i], offs[i], streamShare(b.N, i))
	}
	runStreams(b, func(i int) error { return serve(ids[i], readers[i]) })
}

// streamShare is stream i's share of n beats spread over benchStreams.
func streamShare(n, i int) int {
	if i < n%benchStreams {
		return n/benchStreams + 1
	}
	return n / benchStreams
}

// runStreams runs serve for every stream at once, timed, and reports the
// process's CPU per beat and the beats a second; it fails b on any error.
func runStreams(b *testing.B, serve func(i int) error) {
	errs := make(chan error, benchStreams)
	var wg sync.WaitGroup
	b.ReportAllocs()
	cpu0 := processCPU(b)
	b.ResetTimer()
	for i := range benchStreams {
		wg.Go(func() {
			if err := serve(i); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	// CPU time of the whole process (the store's goroutine included) per
	// beat: on a shared machine it varies much less than wall time.
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/beat")
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "beats/s")
}

// processCPU is the process's user+system CPU time so far.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIngest is ours: bounded line reader, wire.DecodeLine's fast
// path, the tracker, one timestamp per chunk.
func BenchmarkIngest(b *testing.B) {
	a, err := New(newHost(b), Config{MaxNodes: benchStreams})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	benchIngest(b, a.ServeLines)
	if got := a.Tracker().Summary().Beats; got != uint64(b.N) {
		b.Fatalf("tracker counted %d beats, want %d", got, b.N)
	}
}

// BenchmarkIngestStore is BenchmarkIngest with the store (SQLite in a
// temporary directory, WithStore): each node's flips (Joining -> Up, Up ->
// Left at its stream's EOF) go through the Writer, which flushes every
// second on its own goroutine while the beats come in. Run beside
// BenchmarkIngest: -bench 'Ingest(Store)?$'.
func BenchmarkIngestStore(b *testing.B) {
	st, err := store.OpenSQLite(context.Background(), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	a, err := New(newHost(b), Config{MaxNodes: benchStreams}, WithStore(st, store.WriterConfig{}))
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	benchIngest(b, a.ServeLines)
	if got := a.Tracker().Summary().Beats; got != uint64(b.N) {
		b.Fatalf("tracker counted %d beats, want %d", got, b.N)
	}
}

// legacy2018 is the 2018 aggregator's design: a json.Decoder on each
// stream and one mutex over one map, stamped with time.Now per beat.
type legacy2018 struct {
	mu    sync.Mutex
	nodes map[peer.ID]*legacyNode
}

type legacyNode struct {
	hb       wire.Heartbeat
	lastSeen time.Time
	beats    uint64
}

func (l *legacy2018) serve(id peer.ID, r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var hb wire.Heartbeat
		if err := dec.Decode(&hb); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("decode heartbeat from %s: %w", id, err)
		}
		l.mu.Lock()
		n := l.nodes[id]
		if n == nil {
			n = &legacyNode{}
			l.nodes[id] = n
		}
		n.hb = hb
		n.lastSeen = time.Now()
		n.beats++
		l.mu.Unlock()
	}
}

// BenchmarkIngest2018 is the 2018 design on the same input, for the ratio.
func BenchmarkIngest2018(b *testing.B) {
	l := &legacy2018{nodes: make(map[peer.ID]*legacyNode)}
	benchIngest(b, l.serve)
	var total uint64
	for _, n := range l.nodes {
		total += n.beats
	}
	if total != uint64(b.N) {
		b.Fatalf("counted %d beats, want %d", total, b.N)
	}
}

// v2Stream is one node's v2 stream for the benchmark: its frames (Hello,
// then n Beats with the heads of beatBlock) pre-encoded, so that only the
// aggregator's work is measured; the Acks go to a counting writer.
type v2Stream struct {
	io.Reader
	acks int
}

func (s *v2Stream) Write(p []byte) (int, error) { s.acks++; return len(p), nil }

func v2Frames(tb testing.TB, node, n int) []byte {
	tb.Helper()
	var enc wire2.Encoder
	out, err := enc.Append(nil, &wire2.Hello{BootID: wire2.BootID{byte(node), byte(node >> 8), 1},
		BeatPeriod: 3 * time.Second, Nickname: "node-" + strconv.Itoa(node), MinerAddress: "f0" + strconv.Itoa(1000+node)})
	if err != nil {
		tb.Fatal(err)
	}
	for i := range n {
		epoch := 3_000_000 + (i%linesPerBlock)/10
		out, err = enc.Append(out, &wire2.Beat{Seq: uint64(i + 1), Time: 1_700_000_000_000_000_000 + int64(i)*3e9,
			Head:   "{ bafy2bzaceb" + strconv.Itoa(epoch) + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa }",
			Height: uint64(epoch), RTT: time.Millisecond})
		if err != nil {
			tb.Fatal(err)
		}
	}
	return out
}

// BenchmarkIngestV2 is BenchmarkIngest for protocol v2: per beat one frame
// read and decoded, the tracker updated and one Ack encoded and written.
// Run both in one command for the ratio (docs/benchmarks.md).
func BenchmarkIngestV2(b *testing.B) {
	a, err := New(newHost(b), Config{MaxNodes: benchStreams})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	ids := make([]peer.ID, benchStreams)
	streams := make([]*v2Stream, benchStreams)
	for i := range ids {
		ids[i] = randomPeer(b)
		streams[i] = &v2Stream{Reader: bytes.NewReader(v2Frames(b, i, streamShare(b.N, i)))}
	}
	runStreams(b, func(i int) error { return a.ServeFrames(ids[i], streams[i]) })
	acks := 0
	for _, s := range streams {
		acks += s.acks
	}
	if got := a.Tracker().Summary().Beats; got != uint64(b.N) || acks != b.N+benchStreams {
		b.Fatalf("tracker counted %d beats, %d frames written; want %d and %d (Acks and Welcomes)", got, acks, b.N, b.N+benchStreams)
	}
}
