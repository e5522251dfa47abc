//go:build unix

package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pbeat/heartbeat/aggregator/tracker"
	"github.com/p2pbeat/heartbeat/clockwork"
	"github.com/p2pbeat/heartbeat/fsm"
	"github.com/p2pbeat/heartbeat/wire"
)

// The benchmarks whose figures docs/benchmarks.md and docs/simulation.md
// record. Each op is a whole run, so use -benchtime=1x (or a small Nx):
//
//	go test -run '^$' -bench 'Sim10k' -benchtime 1x -cpu 1 ./sim
//	go test -run '^$' -bench VersusMock -benchtime 1x ./sim
//	go test -run '^$' -bench ReconnectPeak -benchtime 1x ./sim
//	go test -run '^$' -bench Prefetch10k -benchtime 10x -cpu 1 ./sim

func benchRun(b *testing.B, p Params) *Report {
	b.Helper()
	var rep *Report
	before := processCPU(b)
	for b.Loop() {
		var err error
		rep, err = Run(p)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(rep.Events)/(b.Elapsed().Seconds()/float64(b.N)), "events/s")
	b.ReportMetric(float64(rep.Events), "events/op")
	b.ReportMetric(rep.Wall.Seconds(), "wall-s/op")
	// The process's CPU time, setup included: on a shared machine the
	// steadier figure (wall time includes the time other work held the CPU).
	b.ReportMetric((processCPU(b)-before).Seconds()/float64(b.N), "cpu-s/op")
	return rep
}

// BenchmarkSim10kNodes1h is the headline: 10,000 nodes beating every 3s
// for one virtual hour (36M events), steady.
func BenchmarkSim10kNodes1h(b *testing.B) {
	benchRun(b, Params{Nodes: 10_000, Duration: time.Hour, Seed: 1})
}

// BenchmarkSim10kNodes10m is the same for 10 virtual minutes: the events/s
// figure at 10,000 nodes, in a quarter of the time.
func BenchmarkSim10kNodes10m(b *testing.B) {
	benchRun(b, Params{Nodes: 10_000, Duration: 10 * time.Minute, Seed: 1})
}

// BenchmarkSim10kNodes10mV2 is BenchmarkSim10kNodes10m with every sender
// on protocol v2: per beat one more event (the Ack's arrival) and a
// tracker.BeatV2 instead of a Beat; the start (10,000 streams in 10s) is
// paced at the default 200/s.
func BenchmarkSim10kNodes10mV2(b *testing.B) {
	benchRun(b, Params{Nodes: 10_000, Duration: 10 * time.Minute, Seed: 1, Protocol: ProtocolV2})
}

// BenchmarkReconnectPeak10k restarts the aggregator under 10,000 nodes and
// reports the peak and the 99th percentile of the reconnect attempts per
// second after the restart, with the default ±20% jitter and without.
func BenchmarkReconnectPeak10k(b *testing.B) {
	for _, jitter := range []float64{0.2, 0} {
		b.Run(fmt.Sprintf("jitter=%g", jitter), func(b *testing.B) {
			p := Params{Nodes: 10_000, Duration: 5 * time.Minute, Seed: 1, Scenario: "aggregator-restart"}
			p.Sender = fsm.DefaultConfig()
			p.Sender.Backoff.Jitter = jitter
			rep := benchRun(b, p)
			for _, r := range rep.Recoveries {
				if r.Restart {
					b.ReportMetric(float64(r.DialPeak), "peak-dials/s")
					b.ReportMetric(float64(r.DialP99), "p99-dials/s")
					b.ReportMetric(r.Beating99.Seconds(), "s-to-99%-beating")
				}
			}
		})
	}
}

// BenchmarkRestartPacing10k restarts the aggregator under 10,000 v2 nodes
// with the default pacing (200 in any second, window 1 min) and reports
// issue 10's goal: the most v2 streams admitted in one second after the
// restart, the share Up one window after it, and the time to 99% Up.
func BenchmarkRestartPacing10k(b *testing.B) {
	rep := benchRun(b, Params{Nodes: 10_000, Duration: 10 * time.Minute, Seed: 1, Scenario: "aggregator-restart", Protocol: ProtocolV2})
	for _, r := range rep.Recoveries {
		if r.Restart {
			b.ReportMetric(float64(max(r.AcceptFirst, r.AcceptPeak)), "max-accepts/s")
			b.ReportMetric(100*r.UpInWindow, "%-up-in-window")
			b.ReportMetric(r.Up99.Seconds(), "s-to-99%-up")
		}
	}
}

// BenchmarkVersusMock runs one small scenario, 100 nodes beating for 10
// virtual minutes with the same network model, two ways: the simulator, and
// benbjohnson/clock's Mock (through clockwork) driving one goroutine per
// node, each owning its machine and one clockwork.Timer, with the tracker
// shared behind its locks. Mock.Set sleeps 1ms of real time per distinct
// deadline, and this scenario has about 40,000 of them: the mock side takes
// most of a minute. Compare the two ns/op.
func BenchmarkVersusMock(b *testing.B) {
	const (
		nodes = 100
		dur   = 10 * time.Minute
	)
	b.Run("simulator", func(b *testing.B) {
		rep := benchRun(b, Params{Nodes: nodes, Duration: dur, Seed: 1})
		b.ReportMetric(float64(rep.BeatsReceived), "beats/op")
	})
	b.Run("mock-goroutines", func(b *testing.B) {
		var beats uint64
		for b.Loop() {
			beats = runOnMock(b, nodes, dur, 1)
		}
		b.ReportMetric(float64(beats), "beats/op")
	})
}

// runOnMock is the scenario of BenchmarkVersusMock on the mock clock. It
// returns the heartbeats the tracker received.
func runOnMock(b *testing.B, nodes int, dur time.Duration, seed uint64) uint64 {
	start := DefaultStart
	mock := clockwork.NewMock(start)
	end := start.Add(dur)
	tr, err := tracker.New(tracker.Config{ExpectedPeriod: 3 * time.Second}, start)
	if err != nil {
		b.Fatal(err)
	}
	net := Network{}
	c, err := Params{Nodes: nodes, Duration: dur, Network: net}.resolve()
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, seed))
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i := range nodes {
		cfg := fsm.DefaultConfig()
		cfg.Seed = nodeSeed(seed, int32(i), 0)
		m, err := fsm.New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		mn := &mockNode{
			m: m, id: peer.ID(fmt.Sprintf("n%05d", i)), tr: tr, clk: mock,
			rng:     rand.New(rand.NewPCG(seed, uint64(i))),
			lat:     int64(c.net.MinLatency) + rng.Int64N(int64(c.net.MaxLatency-c.net.MinLatency)),
			jitter:  int64(c.net.Jitter),
			startAt: start.Add(time.Duration(rng.Int64N(int64(c.StartWithin)))),
			timer:   clockwork.NewTimer(mock),
		}
		mn.hb.Nickname = string(mn.id)
		mn.hb.Head = "bafy2bzacea-head"
		mn.timer.ResetAt(mn.startAt)
		wg.Add(1)
		go mn.run(done, &wg)
	}
	// The aggregator's sweeper, on its own goroutine and timer.
	sweep := clockwork.NewTimer(mock)
	sweep.ResetAt(start.Add(time.Second))
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer sweep.Close()
		var changes []tracker.Change
		for {
			select {
			case <-done:
				return
			case now := <-sweep.C():
				changes = tr.Sweep(now, changes[:0])
				sweep.ResetAt(now.Add(time.Second))
				sweep.Ack()
			}
		}
	}()
	if err := clockwork.WaitArmed(context.Background(), mock, nodes+1); err != nil {
		b.Fatal(err)
	}
	for {
		now, ok := clockwork.AdvanceToNext(mock)
		if !ok || !now.Before(end) {
			break
		}
	}
	close(done)
	wg.Wait()
	return tr.Summary().Beats
}

// mockNode is one sender on the mock clock: a goroutine owning its machine
// and one timer armed at its earliest deadline (a machine timer, the end of
// a dial, or the arrival of a heartbeat at the aggregator).
type mockNode struct {
	m      *fsm.Machine
	id     peer.ID
	hb     wire.Heartbeat
	tr     *tracker.Tracker
	clk    *clockwork.Mock
	rng    *rand.Rand
	lat    int64
	jitter int64
	timer  *clockwork.Timer

	startAt  time.Time // zero once started
	dl       [fsm.NumTimers]time.Time
	dialAt   time.Time // zero when no dial is in flight
	dialFor  uint64
	arrivals []time.Time // heartbeats on their way, in order
}

func (n *mockNode) run(done <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	defer n.timer.Close()
	for {
		select {
		case <-done:
			return
		case <-n.timer.C():
			now := n.clk.Now()
			for {
				at, what := n.earliest()
				if at.IsZero() || at.After(now) {
					break
				}
				n.handle(now, what)
			}
			if at, _ := n.earliest(); at.IsZero() {
				n.timer.Stop()
			} else {
				n.timer.ResetAt(at)
			}
			n.timer.Ack()
		}
	}
}

const (
	mockStart = iota
	mockDial
	mockArrival
	mockTimer // + fsm.Timer
)

func (n *mockNode) earliest() (time.Time, int) {
	var (
		at   time.Time
		what int
	)
	consider := func(t time.Time, w int) {
		if !t.IsZero() && (at.IsZero() || t.Before(at)) {
			at, what = t, w
		}
	}
	consider(n.startAt, mockStart)
	consider(n.dialAt, mockDial)
	if len(n.arrivals) > 0 {
		consider(n.arrivals[0], mockArrival)
	}
	for t, d := range n.dl {
		consider(d, mockTimer+t)
	}
	return at, what
}

func (n *mockNode) handle(now time.Time, what int) {
	switch {
	case what == mockStart:
		n.startAt = time.Time{}
		n.step(now, fsm.Event{Kind: fsm.Start})
	case what == mockDial:
		n.dialAt = time.Time{}
		n.step(now, fsm.Event{Kind: fsm.DialSucceeded, Attempt: n.dialFor})
	case what == mockArrival:
		n.arrivals = n.arrivals[1:]
		_, _, _ = n.tr.Beat(n.id, &n.hb, now)
	default:
		t := fsm.Timer(what - mockTimer)
		n.dl[t] = time.Time{}
		n.step(now, fsm.Event{Kind: t.Event()})
	}
}

func (n *mockNode) draw() time.Duration {
	return time.Duration(n.lat + n.rng.Int64N(n.jitter))
}

func (n *mockNode) step(now time.Time, ev fsm.Event) {
	effs, err := n.m.Step(now, ev)
	if err != nil {
		panic(err)
	}
	wrote := uint64(0)
	for _, e := range effs {
		switch e.Kind {
		case fsm.ArmTimer:
			n.dl[e.Timer] = e.At
		case fsm.CancelTimer:
			n.dl[e.Timer] = time.Time{}
		case fsm.Dial:
			n.dialAt, n.dialFor = now.Add(n.draw()+n.draw()+n.draw()+n.draw()), e.Attempt
		case fsm.Send:
			at := now.Add(n.draw())
			if k := len(n.arrivals); k > 0 && at.Before(n.arrivals[k-1]) {
				at = n.arrivals[k-1]
			}
			n.arrivals = append(n.arrivals, at)
			wrote = e.Attempt
		}
	}
	if wrote != 0 {
		n.step(now, fsm.Event{Kind: fsm.WriteSucceeded, Attempt: wrote})
	}
}
