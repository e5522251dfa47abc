package aggregator

import (
	"io"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/wire"
)

// BenchmarkOpenStreamMemory measures the heap an open, idle heartbeat
// stream holds in the aggregator (line buffer, reader, tracker entry),
// with the old fixed MaxLineBytes+1 buffer and with the small initial one
// that grows on demand. One op opens benchStreams streams that each send
// one line and then wait; the figure is heap in use per stream, after GC
// (goroutine stacks, the same in both, are not heap).
func BenchmarkOpenStreamMemory(b *testing.B) {
	for _, initial := range []int{DefaultMaxLineBytes + 1, initialLineBuffer} {
		b.Run("initial="+strconv.Itoa(initial), func(b *testing.B) {
			var beats atomic.Int64
			allIn := make(chan struct{}, 1)
			a, err := New(newHost(b), Config{MaxNodes: benchStreams}, withHooks(&hooks{beat: func(peer.ID, *wire.Heartbeat) {
				if beats.Add(1)%benchStreams == 0 {
					allIn <- struct{}{}
				}
			}}))
			if err != nil {
				b.Fatal(err)
			}
			defer a.Close()
			a.lineBuf = initial
			newBuf := func() any { buf := make([]byte, initial); return &buf }
			ids := make([]peer.ID, benchStreams)
			lines := make([][]byte, benchStreams)
			for i := range ids {
				ids[i] = randomPeer(b)
				lines[i], err = wire.AppendLine(nil, wire.Heartbeat{Head: "{ bafy2bzacebench }", Height: 1, Nickname: "node-" + strconv.Itoa(i)})
				if err != nil {
					b.Fatal(err)
				}
			}
			var perStream float64
			for b.Loop() {
				var before, after runtime.MemStats
				// An empty pool, and two GCs to drop its victim cache: the
				// buffers of this round are counted, not reused.
				a.bufs = sync.Pool{New: newBuf}
				runtime.GC()
				runtime.GC()
				runtime.ReadMemStats(&before)
				var wg sync.WaitGroup
				writers := make([]*io.PipeWriter, benchStreams)
				for i := range writers {
					pr, pw := io.Pipe()
					writers[i] = pw
					wg.Add(1)
					go func() { defer wg.Done(); _ = a.ServeLines(ids[i], pr) }()
					go func() { _, _ = pw.Write(lines[i]) }()
				}
				<-allIn
				runtime.GC()
				runtime.ReadMemStats(&after)
				perStream = float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / benchStreams
				for _, pw := range writers {
					pw.Close()
				}
				wg.Wait()
			}
			b.ReportMetric(perStream, "heap-B/stream")
		})
	}
}
