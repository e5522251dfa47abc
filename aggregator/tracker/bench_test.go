package tracker

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/wire"
)

const benchNodes = 10000

func benchPeers() []peer.ID {
	ids := make([]peer.ID, benchNodes)
	for i := range ids {
		ids[i] = pid(i)
	}
	return ids
}

// benchBeats returns one heartbeat per peer, shaped like the legacy example
// line, each with a nickname and miner address of its own. The nodes are on
// one of 3 heads; the 3 head strings are shared, which models what the
// aggregator sees: the head it compares was just decoded, so it is in cache.
func benchBeats(n int) []wire.Heartbeat {
	var heads [3]string
	for i := range heads {
		heads[i] = fmt.Sprintf("{ bafy2bzacea%052d bafy2bzaced%052d }", i, i)
	}
	hbs := make([]wire.Heartbeat, n)
	for i := range hbs {
		hbs[i] = wire.Heartbeat{
			Head:         heads[i%3],
			Height:       444,
			Nickname:     fmt.Sprintf("node-%05d", i),
			MinerAddress: fmt.Sprintf("t0%d", 1000+i),
		}
	}
	return hbs
}

// BenchmarkTrackerBeat: many streams beating in parallel for 10,000 known
// peers with unchanged strings (the steady state): expect 0 allocs/op.
func BenchmarkTrackerBeat(b *testing.B) {
	tr := newTracker(b, Config{StartupGrace: -1})
	ids, hbs := benchPeers(), benchBeats(benchNodes)
	for i, id := range ids {
		beat(b, tr, id, &hbs[i], t0)
	}
	var worker atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		// Each goroutine walks the peers from its own offset, like streams
		// of different nodes arriving interleaved.
		i := int(worker.Add(1)*7919) % benchNodes
		now := t0
		for pb.Next() {
			now = now.Add(time.Microsecond)
			if _, _, err := tr.Beat(ids[i], &hbs[i], now); err != nil {
				b.Fatal(err)
			}
			if i++; i == benchNodes {
				i = 0
			}
		}
	})
}

// tracker2018 is the 2018 aggregator's design, for a side-by-side figure:
// one mutex over one map, the last heartbeat stored by value.
type tracker2018 struct {
	mu    sync.Mutex
	nodes map[peer.ID]*record2018
}

type record2018 struct {
	hb       wire.Heartbeat
	lastSeen time.Time
	beats    uint64
}

func (t *tracker2018) beat(id peer.ID, hb *wire.Heartbeat, now time.Time) {
	t.mu.Lock()
	r := t.nodes[id]
	if r == nil {
		r = &record2018{}
		t.nodes[id] = r
	}
	r.hb, r.lastSeen = *hb, now
	r.beats++
	t.mu.Unlock()
}

// BenchmarkTracker2018Beat is BenchmarkTrackerBeat against the 2018 design.
func BenchmarkTracker2018Beat(b *testing.B) {
	tr := &tracker2018{nodes: make(map[peer.ID]*record2018)}
	ids, hbs := benchPeers(), benchBeats(benchNodes)
	for i, id := range ids {
		tr.beat(id, &hbs[i], t0)
	}
	var worker atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(worker.Add(1)*7919) % benchNodes
		now := t0
		for pb.Next() {
			now = now.Add(time.Microsecond)
			tr.beat(ids[i], &hbs[i], now)
			if i++; i == benchNodes {
				i = 0
			}
		}
	})
}

// BenchmarkTrackerMemory reports the heap retained per node at 10,000
// nodes ("B/node"), everything a node costs included: its peer id, strings,
// record and map slot. Inputs are made inside the measured window and
// dropped, so only what the tracker keeps counts. "shared-heads": nodes on
// one of 3 heads (a healthy network); "distinct-heads": every node on its
// own 130-byte head (the worst case for head storage).
func BenchmarkTrackerMemory(b *testing.B) {
	for _, distinct := range []bool{false, true} {
		name := "shared-heads"
		if distinct {
			name = "distinct-heads"
		}
		b.Run(name, func(b *testing.B) {
			var perNode float64
			for b.Loop() {
				perNode = trackerBytesPerNode(b, distinct)
			}
			b.ReportMetric(perNode, "B/node")
		})
	}
}

func trackerBytesPerNode(b *testing.B, distinctHeads bool) float64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tr := newTracker(b, Config{StartupGrace: -1})
	for i := range benchNodes {
		h := i % 3
		if distinctHeads {
			h = i
		}
		hb := wire.Heartbeat{
			Head:         fmt.Sprintf("{ bafy2bzacea%052d bafy2bzaced%052d }", h, h),
			Height:       444,
			Nickname:     fmt.Sprintf("node-%05d", i),
			MinerAddress: fmt.Sprintf("t0%d", 1000+i),
		}
		id := pid(i)
		if err := tr.StreamOpened(id, t0); err != nil {
			b.Fatal(err)
		}
		beat(b, tr, id, &hb, t0)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(tr)
	return float64(after.HeapAlloc-before.HeapAlloc) / benchNodes
}

// BenchmarkTrackerSummary: one scrape's worth of work at 10,000 nodes.
func BenchmarkTrackerSummary(b *testing.B) {
	tr := newTracker(b, Config{StartupGrace: -1})
	ids, hbs := benchPeers(), benchBeats(benchNodes)
	for i, id := range ids {
		beat(b, tr, id, &hbs[i], t0)
	}
	b.ReportAllocs()
	for b.Loop() {
		if s := tr.Summary(); s.Nodes != benchNodes {
			b.Fatal(s.Nodes)
		}
	}
}

// BenchmarkTrackerSweep: a once-a-second sweep at 10,000 nodes beating
// every 3 s (the steady state: nothing changes).
func BenchmarkTrackerSweep(b *testing.B) {
	tr := newTracker(b, Config{StartupGrace: -1})
	ids, hbs := benchPeers(), benchBeats(benchNodes)
	now := t0
	var changes []Change
	b.ReportAllocs()
	for b.Loop() {
		// Advance a second and let a third of the nodes beat, outside the
		// measured part as far as possible.
		b.StopTimer()
		now = now.Add(time.Second)
		for i := int(now.Sub(t0)/time.Second) % 3; i < benchNodes; i += 3 {
			beat(b, tr, ids[i], &hbs[i], now)
		}
		b.StartTimer()
		changes = tr.Sweep(now, changes[:0])
		if len(changes) > 0 && now.Sub(t0) > 3*time.Second {
			b.Fatal("steady state changed")
		}
	}
}
